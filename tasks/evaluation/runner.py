"""Running evaluate's jobs: each distinct training once (``Job.key``), scored on its val split and on test.

With ``evaluate.workers`` > 1 the trainings run in that many spawned processes, each with an equal share of the
CPU threads: these small models scale far better over processes than over intra-op threads (two 1-thread
trainings on two cores finish in about the time of one 2-thread training). Decoded images are handed to every
worker once. Trainings in a worker log no per-epoch metrics to MLflow (the run belongs to the parent).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from tasks.classify.arms import train_arm
from tasks.classify.train import TrainResult
from tasks.evaluation.plan import Job
from tasks.evaluation.sets import eval_set, score
from tasks.evaluation.stats import METRICS, ORDINAL_METRICS, arm_slug
from tasks.params import Params

log = logging.getLogger(__name__)

#: Decoded images of a worker process, set once by ``_init_worker`` (the parent passes its own cache instead).
_worker_cache: dict = {}


def _init_worker(cache: dict, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _worker_cache.update(cache)


def metric_names(params: Params) -> tuple[str, ...]:
    """The metrics evaluate reports: ordinal ones too when the classes are ordered."""
    return METRICS + (ORDINAL_METRICS if params.ordered else ())


def run_job(params: Params, job: Job, test: pd.DataFrame, cache: dict | None = None,
            stage_model: TrainResult | None = None) -> list[dict[str, Any]]:
    """Train ``job`` (or take ``stage_model``) and score it on its val split and on ``test``: one row each."""
    cache = _worker_cache if cache is None else cache
    result = stage_model or train_arm(params, job.train, job.val, job.synthetic, pretrain=job.pretrain,
                                      strong_augment=job.strong_augment, backbone=job.backbone, seed=job.seed,
                                      metric_prefix=f"{job.backbone}.{arm_slug(job.name)}.r{job.repeat}.",
                                      image_cache=cache)
    rows = []
    for split, table in (("val", job.val), ("test", test)):
        metrics, _ = score(result.model, eval_set(table, params, cache), params.classes, params.ordered)
        rows.append({"key": job.key, "split": split, "best_epoch": result.best_epoch,
                     "epochs_run": len(result.history), "reused_stage_model": stage_model is not None,
                     **{m: metrics[m] for m in metric_names(params)}})
    return rows


def training_size(job: Job) -> int:
    """Images a job trains on per epoch (real + synthetic): what its training time grows with."""
    return len(job.train) + (0 if job.synthetic is None else len(job.synthetic))


def run_jobs(params: Params, jobs: Sequence[Job], test: pd.DataFrame, cache: dict,
             stage_models: dict[str, TrainResult]) -> pd.DataFrame:
    """Every job's val/test scores (one row per job × split), each distinct job trained once.

    ``stage_models`` maps a job key to a stage model that already is that training (repeat 0's real and
    reviewed arms)."""
    from tasks.progress import progress

    unique = list({j.key: j for j in jobs}.values())
    done: dict[str, list[dict[str, Any]]] = {}
    workers = min(params.evaluate.workers, max(1, len([j for j in unique if j.key not in stage_models])))
    log.info("evaluate: %d jobs, %d distinct trainings (%d reused stage models), %d worker(s)", len(jobs),
             len(unique), len([j for j in unique if j.key in stage_models]), workers)
    for j in unique:
        if j.key in stage_models:
            done[j.key] = run_job(params, j, test, cache, stage_models[j.key])
    # Longest first: the last trainings then are short ones, so neither worker idles long at the end.
    todo = sorted((j for j in unique if j.key not in done), key=training_size, reverse=True)
    bar = progress(total=len(todo), desc="evaluate trainings", unit="model")
    if workers <= 1:
        for j in todo:
            done[j.key] = run_job(params, j, test, cache)
            bar.update(1)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(cache, threads)) as pool:
            futures = {pool.submit(run_job, params, j, test): j.key for j in todo}
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                bar.update(1)
    bar.close()
    rows = []
    for j in jobs:
        info = {"group": j.group, "arm": j.name, "backbone": j.backbone, "repeat": j.repeat, "seed": j.seed,
                "x": j.x, "n_train_real": len(j.train), "n_val": len(j.val),
                "n_synthetic": 0 if j.synthetic is None else len(j.synthetic)}
        rows += [{**info, **r} for r in done[j.key]]
    return pd.DataFrame(rows)
