"""Engines: where shards run: in-process (``engine: local``), as Prefect tasks on Dask (``engine: dask``), or
dealt out to the processes of ``accelerate launch`` (one per GPU). All of them call the same ``generate_shard``.

Under accelerate the main process reconciles the folder; the shards still missing are dealt out round-robin, each
process generating its own on its own device, and a gather is the barrier before the main process writes the rest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.generation.shards import ShardJob, _job_pipeline, generate_shard, reconcile
from tasks.sections_diffusion import Generate

log = logging.getLogger(__name__)


def _map_local(jobs: list[ShardJob], pipe: Any) -> int:
    from tasks.progress import progress

    total = sum(len(j.missing) for j in jobs)
    with progress(total=total, desc="generate", unit="img", disable=total == 0) as bar:
        return sum(generate_shard(job, pipe, progress=bar.update) for job in jobs)


def _dask_runner(g: Generate) -> Any:
    from prefect_dask import DaskTaskRunner

    if g.dask_address:
        return DaskTaskRunner(address=g.dask_address)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if g.dask_workers * g.cpu_threads > cores:
        log.warning("generate: %d Dask workers x %d torch threads on %d cores oversubscribe the CPU (OpenMP threads "
                    "then spin against each other); set generate.cpu_threads so that workers x threads <= cores",
                    g.dask_workers, g.cpu_threads, cores)
    # One single-threaded process per worker: torch sets its own threads (cpu_threads) inside the shard.
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": g.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def _map_dask(jobs: list[ShardJob], g: Generate) -> int:
    """Shards as Prefect tasks on Dask (prefect-dask's DaskTaskRunner); each worker loads the model itself."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    shard_task = task(generate_shard, name="generate-shard", cache_policy=NO_CACHE,
                      task_run_name="shard-{job.shard}")

    @flow(name="generate-shards", task_runner=_dask_runner(g))
    def generate_shards() -> int:
        futures = [shard_task.submit(job) for job in jobs]
        return sum(f.result() for f in futures)

    return generate_shards()


def map_shards(jobs: list[ShardJob], g: Generate, pipe: Any = None) -> int:
    """Run ``jobs`` on the configured engine; return the number of images written."""
    if not jobs:
        return 0
    if g.engine == "dask":
        return _map_dask(jobs, g)
    return _map_local(jobs, pipe if pipe is not None else _job_pipeline(jobs[0]))


# --------------------------------------------------------------------------------------------- processes


def _process_group() -> Any:
    """accelerate's ``PartialState`` when launched as one of several processes, else None.

    The launcher (torchrun, under ``accelerate launch``) sets ``WORLD_SIZE`` in every process it starts; without it
    no process group is created, so a plain run behaves exactly as before (no barrier, no collective).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # Without cpu=True accelerate sees no GPU and falls back to one independent process per rank (no gloo group).
    return PartialState(cpu=not torch.cuda.is_available())


def _is_main(state: Any) -> bool:
    return state is None or state.is_main_process


def _reconcile_on_main(state: Any, out_dir: Path, plan: pd.DataFrame) -> pd.DataFrame:
    """Only the main process deletes and rewrites files in the shared folder; the others wait for its result."""
    valid = reconcile(out_dir, plan) if _is_main(state) else None
    if state is None:
        return valid
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([valid])[0]


def _map_own_shards(state: Any, jobs: list[ShardJob], g: Generate, pipe: Any) -> int:
    """Run this process's shards; return the images written by all processes, once all of them are done.

    Under accelerate, process r takes jobs r, r+N, r+2N… of the (sorted) list of shards still missing images:
    deterministic and balanced on resume too. A shard's images and manifest are written by one process only.
    """
    if state is None:
        return map_shards(jobs, g, pipe)
    from accelerate.utils import gather_object

    written = map_shards(jobs[state.process_index::state.num_processes], g, pipe)
    return sum(gather_object([written]))  # a barrier too: after it every shard manifest is final
