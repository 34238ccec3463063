"""Stage ``phantom``: procedural dog-pelvis X-rays whose class is known by construction.

Each image shows two femoral heads seated in acetabula, the ilium wings, the obturator foramina and the femoral
necks/shafts over a soft-tissue silhouette, with bone texture, blur, noise, exposure changes and a small random
pose (rotation, shift, scale). The diagnostic quantity is a Norberg-like angle per hip: the angle at the
femoral-head centre between the line to the other head's centre and the line to the cranial acetabular rim. It is
drawn *visibly*: the acetabular cup is a bony crescent concentric with the head that runs from the medial side
over the top of the head and ends at the rim, so a larger angle means a cup that covers more of the head. The class
is a deterministic function of the mean of the two angles (``label_for_angle``), classes ordered low → high.

Determinism: each image has its own generator seeded from ``SeedSequence(params.seed, spawn_key=(stream,
index))``; streams keep the labeled set, the unlabeled pool and the reference labeler's calibration pool apart.
Nothing draws from a global RNG. The drawing itself lives in ``tasks.phantom_geometry``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tasks.progress import progress

from tasks.io import atomic_write_csv, atomic_write_json, clean_stale_temp, save_png_atomic
from tasks.params import Params
from tasks.phantom_geometry import (STREAM_LABELED, STREAM_UNLABELED, class_interval, image_rng,
                                     label_for_angle, render_hip, sample_angles)
from tasks.stage import cli_main

log = logging.getLogger(__name__)

#: With ``dataset.source: folder`` the stage makes no phantoms; this file (its only output) says why. dvc.yaml stays
#: one static DAG, and no other stage reads paths.phantom then (pretrain's pool is the user's, or none).
SKIPPED_FILE = "skipped.json"

CAPTION = "X-ray of a dog hip, left angle {left:.1f} degrees, right angle {right:.1f} degrees"


@dataclass(frozen=True)
class PhantomOutputs:
    labeled: Path | None  # None when skipped (dataset.source: folder)
    unlabeled: Path | None
    metrics: dict[str, float]


def caption_for(left: float, right: float) -> str:
    """Caption in the style of the dog-hip report."""
    return CAPTION.format(left=left, right=right)


def make_record(seed: int, stream: int, index: int, interval: tuple[float, float], params: Params,
                ) -> tuple[Image.Image, dict[str, Any]]:
    """Image ``index`` of ``stream`` with a mean angle in ``interval``, and its metadata row (no file_name)."""
    rng = image_rng(seed, stream, index)
    left, right = sample_angles(rng, *interval)
    angle = round((left + right) / 2.0, 2)
    image = render_hip((left, right), rng, params.phantom.image_size)
    label = label_for_angle(angle, params.phantom.thresholds, params.classes)
    return image, {"label": label, "caption": caption_for(left, right), "left_angle": left,
                   "right_angle": right, "angle": angle}


def _record(seed: int, stream: int, params: Params, job: tuple[int, tuple[float, float]]):
    return make_record(seed, stream, job[0], job[1], params)


def render_records(params: Params, stream: int, jobs: list[tuple[int, tuple[float, float]]],
                   desc: str) -> list[tuple[Image.Image, dict[str, Any]]]:
    """``make_record`` of each ``(index, interval)`` in order, shared out over the machine's cores (~3 ms an image:
    3,640 of them were a third of the demo's first stage on one core). Each image draws from its own seeded
    generator, so the images do not depend on which process drew them. Forked workers: this stage never loads
    torch, and where fork does not exist the images are drawn here, one by one."""
    import multiprocessing
    import os
    from functools import partial

    draw = partial(_record, params.seed, stream, params)
    workers = min(os.cpu_count() or 1, len(jobs) // 64)
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [draw(job) for job in progress(jobs, desc=desc, unit="img")]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(progress(pool.imap(draw, jobs, chunksize=32), desc=desc, total=len(jobs), unit="img"))


def labeled_plan(params: Params) -> list[tuple[int, int]]:
    """(image index, class index) of the balanced labeled set: ``per_class`` images of each class."""
    n_classes = len(params.classes)
    return [(i, i % n_classes) for i in range(params.phantom.per_class * n_classes)]


def _write_set(records: list[tuple[Image.Image, dict[str, Any]]], folder: Path, names: list[str]) -> pd.DataFrame:
    rows = []
    for (image, meta), name in zip(records, names):
        save_png_atomic(image, folder / name, durable=False)  # regenerated on re-run; metadata is durable
        rows.append({"file_name": name, **meta})
    return pd.DataFrame(rows)


def _remove_stale(folder: Path, keep: set[str]) -> int:
    """Delete PNGs a previous run with other params left behind, so the folder equals its metadata."""
    stale = [p for p in folder.rglob("*.png") if p.relative_to(folder).as_posix() not in keep]
    for p in stale:
        p.unlink()
    return len(stale)


def _skip(out_dir: Path) -> PhantomOutputs:
    reason = "skipped: dataset.source is folder (the loop uses your images at paths.raw)"
    atomic_write_json(out_dir / SKIPPED_FILE, {"skipped": reason})
    log.info("phantom: %s", reason)
    return PhantomOutputs(labeled=None, unlabeled=None, metrics={"skipped": 1.0, "n_labeled": 0.0,
                                                                  "n_unlabeled": 0.0})


def run(params: Params, *, out_dir: Path) -> PhantomOutputs:
    """Render the balanced labeled set and the unlabeled pool under ``out_dir`` (only a skip marker for user data)."""
    out_dir = Path(out_dir)
    if params.dataset.source == "folder":
        return _skip(out_dir)
    clean_stale_temp(out_dir)
    (out_dir / SKIPPED_FILE).unlink(missing_ok=True)
    cfg = params.phantom
    labeled, unlabeled = out_dir / "labeled", out_dir / "unlabeled"
    plan = labeled_plan(params)
    records = render_records(params, STREAM_LABELED, [
        (i, class_interval(k, cfg.thresholds, cfg.angle_range)) for i, k in plan], "phantom labeled")
    names = [f"{meta['label']}/hip-{i:05d}.png" for (i, _), (_, meta) in zip(plan, records)]
    lab_df = _write_set(records, labeled, names)
    pool = render_records(params, STREAM_UNLABELED, [(i, cfg.angle_range) for i in range(cfg.unlabeled)],
                          "phantom unlabeled")
    pool_df = _write_set(pool, unlabeled, [f"pool-{i:05d}.png" for i in range(cfg.unlabeled)])
    # The pool is unlabeled for the loop; angles stay in its metadata for audits only.
    pool_df = pool_df.drop(columns="label") if len(pool_df) else pd.DataFrame(
        columns=["file_name", "caption", "left_angle", "right_angle", "angle"])
    atomic_write_csv(labeled / "metadata.csv", lab_df)
    atomic_write_csv(unlabeled / "metadata.csv", pool_df)
    n_stale = _remove_stale(labeled, set(lab_df.file_name)) + _remove_stale(unlabeled, set(pool_df.file_name))
    counts = lab_df.label.value_counts()
    metrics = {"n_labeled": float(len(lab_df)), "n_unlabeled": float(len(pool_df)), "n_stale_removed": n_stale,
               **{f"n_{c}": float(counts.get(c, 0)) for c in params.classes}}
    log.info("phantom: %d labeled (%s), %d unlabeled in %s", len(lab_df), dict(counts), len(pool_df), out_dir)
    return PhantomOutputs(labeled=labeled, unlabeled=unlabeled, metrics=metrics)


if __name__ == "__main__":
    cli_main("phantom")
