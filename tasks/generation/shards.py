"""Shards: the unit of resume and of scale-out; writing a shard's images and manifest, and reconciling on resume.

Each image is written atomically and recorded in its shard's manifest after every batch, so a kill loses at most
the images in flight. The output folder persists across runs, so ``reconcile`` first removes temp files of a
killed run and images not in the current plan or not matching their manifest hash; ``shard_jobs`` then lists
only what is missing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.generation.filters import image_status, quantise
from tasks.generation.pictures import _to_pil
from tasks.generation.plan import _IMAGES
from tasks.generation.sampling import prepare_pipeline, render_batch
from tasks.io import atomic_write_csv, clean_stale_temp, save_png_atomic, sha256_bytes, sha256_file
from tasks.sections_diffusion import Generate
from tasks.stage import StageError

log = logging.getLogger(__name__)

#: The hand-off table (docs/ARCHITECTURE.md) plus bookkeeping columns used for resume.
MANIFEST_COLUMNS = ("file_name", "intended_label", "prompt", "negative_prompt", "seed", "scheduler", "steps",
                    "guidance", "model_hash", "status", "sha256", "shard", "index", "recipe", "top_up_round")
_SHARDS = "shards"


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs for one shard; plain data so it pickles to a Dask worker."""

    shard: int
    plan: tuple[dict[str, Any], ...]  # every planned row of the shard: the batch layout needs all of them
    missing: frozenset[str]  # file_names to (re)generate
    done: tuple[dict[str, Any], ...]  # manifest rows already on disk and verified
    model_dir: str
    out_dir: str
    batch_size: int
    precision: str
    cpu_threads: int
    writer_threads: int


@functools.lru_cache(maxsize=1)
def _worker_pipeline(model_dir: str, model_hash: str, scheduler: str, precision: str) -> Any:
    # A Dask worker runs many shards of one plan: load the model once per worker process, not once per shard.
    # model_hash is part of the key so a long-lived worker never serves a model that has since been retrained.
    return prepare_pipeline(model_dir, scheduler, precision)


def _job_pipeline(job: ShardJob) -> Any:
    first = job.plan[0]
    return _worker_pipeline(job.model_dir, first["model_hash"], first["scheduler"], job.precision)


def _write_image(image_u8: np.ndarray, path: Path) -> str:
    """Encode and write one PNG atomically; return its sha256 (runs on the writer pool).

    No fsync per image (thousands of them dominate a CPU run): the rename is still atomic against a kill, and
    after a power loss ``reconcile`` re-hashes every listed file and regenerates any that did not reach the disk.
    """
    return sha256_bytes(save_png_atomic(_to_pil(image_u8), path, durable=False))


# --------------------------------------------------------------------------------------------- shards


def _shard_manifest_path(out_dir: Path, shard: int) -> Path:
    return out_dir / _SHARDS / f"shard-{shard:05d}.csv"


def _write_shard_manifest(out_dir: Path, shard: int, rows: list[dict[str, Any]]) -> None:
    df = pd.DataFrame(sorted(rows, key=lambda r: r["index"]), columns=list(MANIFEST_COLUMNS))
    atomic_write_csv(_shard_manifest_path(out_dir, shard), df)


def _batches(job: ShardJob) -> Iterator[list[dict[str, Any]]]:
    """The shard's batches (rows in slot order) that hold a missing image."""
    by_batch: dict[int, list[dict[str, Any]]] = {}
    for row in job.plan:
        by_batch.setdefault(int(row["batch"]), []).append(row)
    for _, rows in sorted(by_batch.items()):
        if any(r["file_name"] in job.missing for r in rows):
            yield sorted(rows, key=lambda r: r["slot"])


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _record(out_dir: Path, pending: list[tuple[dict[str, Any], str, Future]], rows: list[dict[str, Any]]) -> None:
    """Wait for a batch's writes; add their manifest rows. A write error stops the shard with a clear message."""
    for row, status, future in pending:
        try:
            digest = future.result()
        except OSError as err:
            what = "the disk is full" if err.errno == errno.ENOSPC else f"write failed ({err})"
            raise StageError(f"could not write {out_dir / row['file_name']}: {what}. Images recorded so far are "
                             f"kept; free space and re-run (`dvc repro generate`) to generate the rest.") from err
        rows.append({k: row.get(k) for k in MANIFEST_COLUMNS} | {"status": status, "sha256": digest})


def generate_shard(job: ShardJob, pipe: Any = None, progress: Callable[[int], None] | None = None) -> int:
    """Generate the missing images of one shard; return how many were written.

    After each batch the shard manifest is rewritten atomically with every image known to be on disk, so a kill
    loses only the batches in flight. Writing runs on a thread pool, overlapping the next batch's compute.
    """
    out_dir = Path(job.out_dir)
    pipe = pipe or _job_pipeline(job)
    rows = [dict(r) for r in job.done]
    written = 0
    cache: dict[str, Any] = {}
    pending: list[tuple[dict[str, Any], str, Future]] = []
    threads = _torch_threads(job.cpu_threads) if pipe.device.type == "cpu" else contextlib.nullcontext()
    with threads, ThreadPoolExecutor(job.writer_threads, thread_name_prefix="png-writer") as pool:
        for batch in _batches(job):
            # Pad to the fixed batch shape: an image's bits depend on the shape, never on the padding values.
            padded = batch + [batch[0]] * (job.batch_size - len(batch))
            images = render_batch(pipe, padded, job.precision, cache)
            submitted = [(row, image_status(image), pool.submit(_write_image, quantise(image),
                                                                out_dir / row["file_name"]))
                         for row, image in zip(batch, images) if row["file_name"] in job.missing]
            written += _flush(out_dir, job.shard, pending, rows, progress)
            pending = submitted
        written += _flush(out_dir, job.shard, pending, rows, progress)
    return written


def _flush(out_dir: Path, shard: int, pending: list[tuple[dict[str, Any], str, Future]],
           rows: list[dict[str, Any]], progress: Callable[[int], None] | None) -> int:
    """Record a finished batch in the shard manifest (atomically); return how many images it added."""
    if not pending:
        return 0
    _record(out_dir, pending, rows)
    _write_shard_manifest(out_dir, shard, rows)
    if progress:
        progress(len(pending))
    return len(pending)


# --------------------------------------------------------------------------------------------- resume


def _read_shard_manifests(out_dir: Path) -> pd.DataFrame:
    frames = []
    for path in sorted((out_dir / _SHARDS).glob("shard-*.csv")):
        try:
            frames.append(pd.read_csv(path, dtype={"sha256": str, "recipe": str}, keep_default_na=False))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            log.warning("ignoring unreadable shard manifest %s (%s); its images will be regenerated", path, err)
    if not frames:
        return pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def reconcile(out_dir: Path, plan: pd.DataFrame) -> pd.DataFrame:
    """Bring a persisted output folder in line with ``plan``; return the manifest rows that can be reused.

    A row is reused only if its file is in the plan with the same recipe and the file on disk has the recorded
    sha256. Everything else — temp files of a kill, images of an old plan, images written but never recorded —
    is deleted, and shard manifests are rewritten to list only reusable rows.
    """
    removed_tmp = clean_stale_temp(out_dir)
    existing = _read_shard_manifests(out_dir)
    # top_up_round comes from the plan (a shard manifest of an older version has no such column).
    plan_cols = [c for c in ("file_name", "recipe", "top_up_round") if c in plan]
    keep = existing.drop(columns=["top_up_round"], errors="ignore").merge(plan[plan_cols], on=["file_name", "recipe"],
                                                                          how="inner")
    keep = keep.drop_duplicates("file_name")
    ok = [(out_dir / f).is_file() and sha256_file(out_dir / f) == h for f, h in zip(keep["file_name"], keep["sha256"])]
    valid = keep[np.array(ok, dtype=bool)] if len(keep) else keep
    wanted = set(valid["file_name"])
    stale = [p for p in (out_dir / _IMAGES).rglob("*") if p.is_file()
             and p.relative_to(out_dir).as_posix() not in wanted] if (out_dir / _IMAGES).exists() else []
    for p in stale:
        p.unlink()
    shards = set(plan["shard"])
    for path in (out_dir / _SHARDS).glob("shard-*.csv") if (out_dir / _SHARDS).exists() else []:
        if int(path.stem.split("-")[1]) not in shards:
            path.unlink()
    if len(valid) != len(existing):
        for shard in sorted(shards):
            if _shard_manifest_path(out_dir, shard).exists():
                _write_shard_manifest(out_dir, shard, valid[valid["shard"] == shard].to_dict("records"))
    log.info("generate: reusing %d of %d planned images (removed %d stale files, %d temp files)",
             len(valid), len(plan), len(stale), removed_tmp)
    return valid


def shard_jobs(plan: pd.DataFrame, valid: pd.DataFrame, *, model_dir: Path, out_dir: Path,
               g: Generate) -> list[ShardJob]:
    """One job per shard that still has missing images."""
    done_by_shard = {s: tuple(d.to_dict("records")) for s, d in valid.groupby("shard")} if len(valid) else {}
    have = set(valid["file_name"])
    jobs = []
    for shard, rows in plan.groupby("shard", sort=True):
        missing = frozenset(set(rows["file_name"]) - have)
        if missing:
            jobs.append(ShardJob(shard=int(shard), plan=tuple(rows.to_dict("records")), missing=missing,
                                 done=done_by_shard.get(shard, ()), model_dir=str(model_dir),
                                 out_dir=str(out_dir), batch_size=g.batch_size, precision=g.precision,
                                 cpu_threads=g.cpu_threads, writer_threads=g.writer_threads))
    return jobs
