"""generate stage: a balanced, recorded, resumable set of synthetic images from the DreamBooth model.

The work is a *plan* (one row per image: label, prompt, derived seed, batch/slot layout) cut into shards. A shard
is the unit of resume and of scale-out: it runs in-process (``engine: local``) or as a Prefect task on Dask
(``engine: dask``); both call the same ``generate_shard``. Each image is written atomically and recorded in its
shard's manifest after every batch, so a kill loses at most the images in flight.

Determinism: CPU float results depend on the batch shape and the thread count, not on the values of the other
rows of a batch. So each image always runs at its planned slot of a fixed-size batch (padded), with a fixed
number of torch threads; regenerating one image alone means running its own batch, and the bytes come out the
same whatever the engine, worker count, kills or resumes. The layout (batch_size, shard_size), precision and
cpu_threads are therefore part of each row's ``recipe`` hash: change them and the affected images are redone.

The output folder persists across runs (dvc.yaml ``persist: true``), so ``run()`` reconciles first: temp files
of a killed run are removed, images not in the current plan or not matching their manifest hash are deleted, and
only what is missing is generated.

One multi-GPU host: ``accelerate launch --num_processes N -m tasks.generate`` runs one process per GPU (without
CUDA, ``accelerate launch --multi_gpu --num_processes N`` runs N CPU processes over gloo; tested). The main process
reconciles the folder; the shards still missing are dealt out round-robin, each process generating its own on its
own device; after a barrier the main process alone writes manifest, metadata, grids and metrics. Same bytes.

Top-up (``generate.top_up_rounds``): images the filters drop are replaced in up to that many extra rounds, so
each class reaches its planned count of ok images; a round is derived from the statuses on disk, so a resumed run
re-derives the rounds already under way (``tasks.generation.topup``).

The pieces live in the generation wing (tasks/generation/: plan, filters, sampling, shards, engines, pictures);
this module keeps ``run()`` and the steps it calls.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.diffusion.pipeline import model_hash as hash_model
from tasks.generation.engines import _is_main, _map_own_shards, _process_group, _reconcile_on_main
from tasks.generation.filters import STATUSES, mark_duplicates
from tasks.generation.pictures import _log_grids, _write_class_grids, _write_interpolation
from tasks.generation.plan import _IMAGES, plan_generation
from tasks.generation.sampling import prepare_pipeline
from tasks.generation.shards import MANIFEST_COLUMNS, _read_shard_manifests, shard_jobs
from tasks.generation.topup import TOP_UP, extend_known_plan, shortfall, top_up_rows, verified_rows
from tasks.io import atomic_write_csv
from tasks.params import Params
from tasks.sections_diffusion import Generate
from tasks.stage import StageError, cli_main

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateOutputs:
    images: Path
    manifest: Path
    metadata: Path
    grids: Path
    metrics: dict[str, float] = field(default_factory=dict)


def _finalise(out_dir: Path, plan: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Merge shard manifests into manifest.csv (duplicates flagged, GX-validated) and write metadata.csv."""
    from tasks.validation import validate

    rows = _read_shard_manifests(out_dir)
    rows = rows[rows["file_name"].isin(set(plan["file_name"]))]
    if len(rows) != len(plan):
        raise StageError(f"generate: {len(plan) - len(rows)} planned images are missing after the run")
    manifest = mark_duplicates(rows)[list(MANIFEST_COLUMNS)]
    validate(manifest, "generate_manifest", classes=classes,
             extra=[("ExpectColumnValuesToBeBetween", {"column": TOP_UP, "min_value": 0, "max_value": None})])
    atomic_write_csv(out_dir / "manifest.csv", manifest)
    ok = manifest[manifest["status"] == "ok"]
    metadata = pd.DataFrame({"file_name": ok["file_name"], "text": ok["prompt"], "label": ok["intended_label"]})
    atomic_write_csv(out_dir / "metadata.csv", metadata)
    return manifest


def _on_main(state: Any, compute: Any) -> Any:
    """``compute()`` on the main process only (it reads the shared folder); the others receive its result."""
    value = compute() if _is_main(state) else None
    if state is None:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _read_prompts(prompts: Path) -> dict[str, Any]:
    if not prompts.is_file():
        raise FileNotFoundError(f"prompts file not found: {prompts} (run `dvc repro caption`)")
    try:
        return json.loads(prompts.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise StageError(f"{prompts} is not valid JSON ({err}); re-create it with `dvc repro caption`") from err


def run(params: Params, *, model: Path, prompts: Path, out_dir: Path) -> GenerateOutputs:
    """Plan, reconcile the persisted output, generate what is missing, then manifest, metadata and grids.

    Under ``accelerate launch`` every process calls this; each returns once the main process has written the
    shared files, with the main process's metrics.
    """
    g = params.generate
    spec = _read_prompts(prompts)
    state = _process_group()
    if state is not None and g.engine != "local":
        raise StageError(f"generate.engine is {g.engine!r}, but under `accelerate launch` the processes are the "
                         f"engine: set generate.engine: local, or run without accelerate")
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = prepare_pipeline(model, g.scheduler, g.precision, device=None if state is None else state.device)
    native = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    plan = plan_generation(params, spec, model_hash=hash_model(model), image_size=native).assign(**{TOP_UP: 0})
    # Top-up rounds a killed run had started are re-derived from its images, so reconcile keeps them.
    plan = _on_main(state, lambda: extend_known_plan(out_dir, plan, g, params.seed))
    valid = _reconcile_on_main(state, out_dir, plan)
    start = time.perf_counter()
    written, reused = 0, len(valid)
    while True:
        written += _map_own_shards(state, shard_jobs(plan, valid, model_dir=model, out_dir=out_dir, g=g), g, pipe)
        valid = _on_main(state, lambda: verified_rows(out_dir, plan))
        extra = top_up_rows(plan, valid, g, params.seed)
        if extra.empty:
            break
        log.info("generate: top-up round %d: %d images for %s", int(extra[TOP_UP].max()), len(extra),
                 extra["intended_label"].value_counts().to_dict())
        plan = pd.concat([plan, extra], ignore_index=True)
    seconds = time.perf_counter() - start
    metrics = _summarise(out_dir, plan, spec, pipe, g, written, reused, seconds) if _is_main(state) else None
    if state is not None:  # the other processes return only once the shared files exist
        from accelerate.utils import broadcast_object_list

        metrics = broadcast_object_list([metrics])[0]
    return GenerateOutputs(images=out_dir / _IMAGES, manifest=out_dir / "manifest.csv",
                           metadata=out_dir / "metadata.csv", grids=out_dir / "grids", metrics=metrics)


def _summarise(out_dir: Path, plan: pd.DataFrame, spec: dict[str, Any], pipe: Any, g: Generate, written: int,
               reused: int, seconds: float) -> dict[str, float]:
    """Main process only: manifest, metadata, grids (to MLflow too); return the stage metrics."""
    manifest = _finalise(out_dir, plan, spec["classes"])
    grids = _write_class_grids(out_dir, manifest, g.grid_per_class)
    if g.interpolation_frames:
        grids.append(_write_interpolation(out_dir, plan, pipe, g))
    for stale in set((out_dir / "grids").glob("*.png")) - set(grids):  # e.g. a class or the slerp grid dropped
        stale.unlink()
    _log_grids(grids)
    counts = manifest["status"].value_counts()
    short = shortfall(plan, manifest)
    if any(short.values()):
        log.warning("generate: after %d top-up rounds, classes still short of their planned ok images: %s "
                    "(raise generate.top_up_rounds, or look at grids/ for why the filters drop them)",
                    g.top_up_rounds, {c: n for c, n in short.items() if n})
    metrics = {"images": float(len(manifest)), "generated": float(written), "reused": float(reused),
               "images_per_second": round(written / seconds, 3) if written else 0.0,
               **{f"status_{s}": float(counts.get(s, 0)) for s in STATUSES},
               "top_up_images": float((manifest[TOP_UP] > 0).sum()), "top_up_rounds_run": float(plan[TOP_UP].max()),
               "shortfall": float(sum(short.values()))}
    log.info("generate: %d images (%d new), statuses %s", len(manifest), written, counts.to_dict())
    return metrics


if __name__ == "__main__":
    cli_main("generate")
