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
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.io import atomic_write_csv, clean_stale_temp, save_png_atomic, sha256_bytes, sha256_file
from tasks.params import Generate, Params
from tasks.stage import StageError, cli_main

log = logging.getLogger(__name__)

#: The hand-off table (docs/ARCHITECTURE.md) plus bookkeeping columns used for resume.
MANIFEST_COLUMNS = ("file_name", "intended_label", "prompt", "negative_prompt", "seed", "scheduler", "steps",
                    "guidance", "model_hash", "status", "sha256", "shard", "index", "recipe")
STATUSES = ("ok", "black", "constant", "nan", "duplicate")
#: A uint8 image whose brightest pixel is below this is "black"; one whose range is at most CONSTANT_RANGE is flat.
BLACK_LEVEL = 8
CONSTANT_RANGE = 2
_SHARDS = "shards"
_IMAGES = "images"


@dataclass(frozen=True)
class GenerateOutputs:
    images: Path
    manifest: Path
    metadata: Path
    grids: Path
    metrics: dict[str, float] = field(default_factory=dict)


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


# --------------------------------------------------------------------------------------------- plan


def derive_seed(run_seed: int, index: int) -> int:
    """Seed of image ``index``: a 63-bit slice of sha256(run_seed:index), stable across Python versions."""
    digest = hashlib.sha256(f"synthloop-generate:{run_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def class_counts(classes: Sequence[str], num_images: int, ratios: dict[str, float] | None = None) -> dict[str, int]:
    """Images per class: balanced, or proportional to ``ratios`` (largest remainder, ties in class order)."""
    if not classes:
        raise ValueError("class_counts: no classes")
    ratios = ratios or {c: 1.0 for c in classes}
    unknown, absent = set(ratios) - set(classes), set(classes) - set(ratios)
    if unknown or absent:
        raise ValueError(f"generate.class_ratios keys must be exactly the classes {list(classes)}; "
                         f"unknown: {sorted(unknown)}, missing: {sorted(absent)}")
    total = sum(ratios.values())
    exact = {c: num_images * ratios[c] / total for c in classes}
    counts = {c: math.floor(exact[c]) for c in classes}
    by_remainder = sorted(classes, key=lambda c: (-(exact[c] - counts[c]), list(classes).index(c)))
    for c in by_remainder[: num_images - sum(counts.values())]:
        counts[c] += 1
    return counts


def _interleave(counts: dict[str, int]) -> list[str]:
    """Labels spread proportionally through the plan, so every shard (and a partial run) is balanced too."""
    order = list(counts)
    keyed = [((j + 0.5) / n, order.index(c), c) for c, n in counts.items() for j in range(n)]
    return [c for _, _, c in sorted(keyed)]


def _recipe(row: dict[str, Any], g: Generate) -> str:
    """Hash of everything that decides an image's bytes; a manifest row is reused only if its recipe matches."""
    keys = ("prompt", "negative_prompt", "seed", "scheduler", "steps", "guidance", "height", "width",
            "model_hash", "batch", "slot")
    payload = {k: row[k] for k in keys} | {"batch_size": g.batch_size, "precision": g.precision,
                                           "cpu_threads": g.cpu_threads}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def negative_prompt(template: str, class_negative: str, user_negative: str) -> str:
    """An image's negative prompt: the other classes' prompts (same template as its own prompt) and/or the user's.

    Parts are joined by ``PROMPT_SEPARATOR``; their embeddings are averaged at render time (``prompt_embedding``).
    """
    from tasks.sd import PROMPT_SEPARATOR

    parts = [template.format(prompt=p) for p in class_negative.split(PROMPT_SEPARATOR) if p]
    parts += [user_negative] if user_negative else []
    return PROMPT_SEPARATOR.join(parts)


def _prompt_source(prompts: dict[str, Any], classes: list[str], source: str) -> dict[str, list[str]]:
    """Per class, the prompts images cycle through: its instance prompt, or its real train captions."""
    if source == "instance":
        return {c: [prompts["instance_prompts"][c]] for c in classes}
    captions = prompts.get("caption_prompts") or {}
    missing = [c for c in classes if not captions.get(c)]
    if missing:
        raise StageError(f"generate.prompt_source is captions but prompts.json has no caption_prompts for {missing}; "
                         "re-run the caption stage (dvc repro caption)")
    return {c: list(captions[c]) for c in classes}


def _cycle(items: Sequence[str], k: int) -> str:
    return items[k % len(items)]


def _class_negative(prompts: dict[str, Any], source: dict[str, list[str]], label: str, k: int,
                    by_captions: bool) -> str:
    """With class negatives on: prompts.json's negative for ``label`` when prompting by instance prompt; when
    prompting by captions, the other classes' captions at the same position ``k`` (guide away from a real caption
    of each other class)."""
    from tasks.sd import PROMPT_SEPARATOR

    negatives = prompts.get("negative_prompts") or {}
    if not negatives:  # caption.class_negatives off
        return ""
    if not by_captions:
        return negatives.get(label, "")
    return PROMPT_SEPARATOR.join(_cycle(source[o], k) for o in source if o != label)


def plan_generation(params: Params, prompts: dict[str, Any], *, model_hash: str = "",
                    image_size: int | None = None) -> pd.DataFrame:
    """One row per image to generate: label, prompt, seed, sampler settings, shard, batch and slot.

    ``image_size`` is the model's native size, used when ``generate.image_size`` is null. Shards are contiguous
    blocks of ``shard_size`` rows; batches are ``batch_size`` blocks inside a shard (the last one padded at run
    time), so the layout depends on the plan alone, never on the engine.
    """
    g = params.generate
    classes = list(prompts.get("classes") or [])
    instance = prompts.get("instance_prompts") or {}
    missing = [c for c in classes if c not in instance]
    if not classes or missing:
        raise StageError(f"prompts.json needs 'classes' and an instance prompt per class; missing: {missing}")
    size = g.image_size or image_size
    if not size or size % 8:
        raise StageError(f"image size must be a positive multiple of 8, got {size!r} (set generate.image_size)")
    labels = _interleave(class_counts(classes, g.num_images, g.class_ratios))
    templates = g.prompt_templates or ("{prompt}",)
    source = _prompt_source(prompts, classes, g.prompt_source)
    per_class = dict.fromkeys(classes, 0)
    rows = []
    for index, label in enumerate(labels):
        k, per_class[label] = per_class[label], per_class[label] + 1
        shard, in_shard = divmod(index, g.shard_size)
        template = templates[k % len(templates)]
        row = {"index": index, "file_name": f"{_IMAGES}/{label}/{index:06d}.png", "intended_label": label,
               "prompt": template.format(prompt=_cycle(source[label], k)),
               "negative_prompt": negative_prompt(
                   template, _class_negative(prompts, source, label, k, g.prompt_source == "captions"),
                   g.negative_prompt),
               "seed": derive_seed(params.seed, index),
               "scheduler": g.scheduler, "steps": g.num_inference_steps, "guidance": g.guidance_scale,
               "height": size, "width": size, "model_hash": model_hash, "shard": shard,
               "batch": in_shard // g.batch_size, "slot": in_shard % g.batch_size}
        row["recipe"] = _recipe(row, g)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- filters


def quantise(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] → uint8 (round half to even, NaN → 0): the deterministic bytes that get written."""
    return np.clip(np.rint(np.nan_to_num(images, nan=0.0) * 255.0), 0, 255).astype(np.uint8)


def image_status(image: np.ndarray) -> str:
    """``nan`` (any non-finite value), ``black``, ``constant`` or ``ok`` for one float image in [0, 1]."""
    if image.size == 0:
        raise ValueError("image_status: empty image")
    if not np.isfinite(image).all():
        return "nan"
    q = quantise(image)
    if int(q.max()) < BLACK_LEVEL:
        return "black"
    if int(q.max()) - int(q.min()) <= CONSTANT_RANGE:
        return "constant"
    return "ok"


def mark_duplicates(manifest: pd.DataFrame) -> pd.DataFrame:
    """Flag exact duplicates (same sha256) of an earlier image, in plan order, as ``duplicate``."""
    if "sha256" not in manifest.columns or "index" not in manifest.columns:
        raise ValueError("mark_duplicates needs 'sha256' and 'index' columns")
    out = manifest.sort_values("index").reset_index(drop=True)
    dup = out["sha256"].duplicated(keep="first") & (out["status"] == "ok")
    out.loc[dup, "status"] = "duplicate"
    return out


# --------------------------------------------------------------------------------------------- sampling


def initial_latents(seeds: Sequence[int], shape: tuple[int, int, int]) -> Any:
    """Per-image starting noise from each image's own CPU generator: independent of batching and device."""
    import torch

    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s)))
                        for s in seeds])


def slerp(a: Any, b: Any, t: float) -> Any:
    """Spherical interpolation between two noise tensors (keeps the Gaussian norm, unlike a straight line)."""
    import torch

    af, bf = a.flatten().double(), b.flatten().double()
    omega = torch.arccos(torch.clamp(torch.dot(af, bf) / (af.norm() * bf.norm()), -1.0, 1.0))
    if float(omega) < 1e-6:
        return (1 - t) * a + t * b
    so = torch.sin(omega)
    return ((torch.sin((1 - t) * omega) / so) * a.double() + (torch.sin(t * omega) / so) * b.double()).to(a.dtype)


def _device_dtype(precision: str) -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", {"auto": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16,
                        "fp16": torch.float16}[precision]
    if precision == "fp16":
        raise StageError("generate.precision fp16 needs CUDA; on CPU use bf16 (autocast) or fp32")
    return "cpu", torch.float32  # CPU bf16 runs as autocast: weights stay fp32, matmuls run in bf16


def prepare_pipeline(model_dir: Path | str, scheduler: str, precision: str, device: Any = None) -> Any:
    """Load the pipeline for generation: right device/dtype, scheduler, channels_last, no progress bar.

    ``device`` overrides the default (``cuda`` when available, else ``cpu``): under accelerate, this process's GPU.
    """
    import torch

    from tasks.sd import load_pipeline, set_scheduler

    kind, dtype = _device_dtype(precision)
    pipe = load_pipeline(Path(model_dir), dtype=dtype, device=kind if device is None else device)
    set_scheduler(pipe, scheduler)
    if kind == "cuda":  # tensor-core convolutions want NHWC; on CPU it measured no faster (RESULTS.md)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@functools.lru_cache(maxsize=1)
def _worker_pipeline(model_dir: str, model_hash: str, scheduler: str, precision: str) -> Any:
    # A Dask worker runs many shards of one plan: load the model once per worker process, not once per shard.
    # model_hash is part of the key so a long-lived worker never serves a model that has since been retrained.
    return prepare_pipeline(model_dir, scheduler, precision)


def _job_pipeline(job: ShardJob) -> Any:
    first = job.plan[0]
    return _worker_pipeline(job.model_dir, first["model_hash"], first["scheduler"], job.precision)


def _embed(pipe: Any, text: str, cache: dict[str, Any]) -> Any:
    """Text embedding of one prompt, computed once (always alone, so its bits never depend on other prompts)."""
    if text not in cache:
        from tasks.sd import prompt_embedding

        cache[text] = prompt_embedding(pipe, text).to(pipe.unet.dtype)
    return cache[text]


def _autocast(pipe: Any, precision: str) -> Any:
    import torch

    enabled = precision == "bf16" and pipe.device.type == "cpu"
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def render_batch(pipe: Any, rows: Sequence[dict[str, Any]], precision: str = "fp32",
                 cache: dict[str, Any] | None = None, latents: Any = None) -> np.ndarray:
    """Run one batch through the pipeline; float images (B, H, W, C) in [0, 1], NaN kept for the filters.

    All rows share steps, guidance, size and scheduler (one plan). ``latents`` overrides the seeds' noise
    (the interpolation grid).
    """
    import torch

    cache = {} if cache is None else cache
    first = rows[0]
    scale = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, int(first["height"]) // scale, int(first["width"]) // scale)
    if latents is None:
        latents = initial_latents([r["seed"] for r in rows], shape)
    pos = torch.cat([_embed(pipe, r["prompt"], cache) for r in rows])
    neg = torch.cat([_embed(pipe, r["negative_prompt"], cache) for r in rows])
    with torch.inference_mode(), _autocast(pipe, precision):
        out = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=latents.to(pipe.device, pipe.unet.dtype),
                   num_inference_steps=int(first["steps"]), guidance_scale=float(first["guidance"]),
                   height=int(first["height"]), width=int(first["width"]), output_type="np")
    return np.asarray(out.images, dtype=np.float32)


def _to_pil(image_u8: np.ndarray) -> Any:
    from PIL import Image

    if image_u8.ndim == 3 and image_u8.shape[2] == 1:
        image_u8 = image_u8[:, :, 0]
    return Image.fromarray(image_u8)


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
    keep = existing.merge(plan[["file_name", "recipe"]], on=["file_name", "recipe"], how="inner")
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


# --------------------------------------------------------------------------------------------- engines


def _map_local(jobs: list[ShardJob], pipe: Any) -> int:
    from tqdm.auto import tqdm

    total = sum(len(j.missing) for j in jobs)
    with tqdm(total=total, desc="generate", unit="img", disable=total == 0) as bar:
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


# --------------------------------------------------------------------------------------------- pictures


def tile(images: Sequence[Any], columns: int | None = None) -> Any:
    """Paste equally sized PIL images into one grid image (row-major)."""
    from PIL import Image

    if not images:
        raise ValueError("tile: no images")
    columns = columns or math.ceil(math.sqrt(len(images)))
    w, h = images[0].size
    grid = Image.new(images[0].mode, (w * columns, h * math.ceil(len(images) / columns)))
    for i, img in enumerate(images):
        grid.paste(img, ((i % columns) * w, (i // columns) * h))
    return grid


def _write_class_grids(out_dir: Path, manifest: pd.DataFrame, per_class: int) -> list[Path]:
    from PIL import Image

    grids = out_dir / "grids"
    paths = []
    for label, rows in manifest[manifest["status"] == "ok"].groupby("intended_label", sort=True):
        images = [Image.open(out_dir / f).copy() for f in rows["file_name"].head(per_class)]
        path = grids / f"{label}.png"
        save_png_atomic(tile(images), path)
        paths.append(path)
    return paths


def _write_interpolation(out_dir: Path, plan: pd.DataFrame, pipe: Any, g: Generate) -> Path:
    """Latent slerp between the first two seeds of the first class, rendered with that class's prompt."""
    import torch

    rows = plan[plan["intended_label"] == plan["intended_label"].iloc[0]].head(2).to_dict("records")
    if len(rows) < 2:
        raise StageError("interpolation grid needs at least two images of the first class")
    scale = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, int(rows[0]["height"]) // scale, int(rows[0]["width"]) // scale)
    a, b = initial_latents([rows[0]["seed"], rows[1]["seed"]], shape)
    ts = np.linspace(0.0, 1.0, g.interpolation_frames)
    frames = []
    for start in range(0, len(ts), g.batch_size):
        chunk = list(ts[start:start + g.batch_size])
        chunk += [chunk[0]] * (g.batch_size - len(chunk))  # fixed batch shape, as everywhere
        lat = torch.stack([slerp(a, b, float(t)) for t in chunk])
        frames.extend(render_batch(pipe, [rows[0]] * g.batch_size, g.precision, latents=lat))
    images = [_to_pil(quantise(f)) for f in frames[: len(ts)]]
    path = out_dir / "grids" / "interpolation.png"
    save_png_atomic(tile(images, columns=len(images)), path)
    return path


def _log_grids(paths: list[Path]) -> None:
    import mlflow

    if mlflow.active_run() is None:  # run() called outside a stage run (tests, notebooks): nothing to log to
        return
    for path in paths:
        mlflow.log_artifact(str(path), "grids")


# --------------------------------------------------------------------------------------------- run


def _finalise(out_dir: Path, plan: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Merge shard manifests into manifest.csv (duplicates flagged, GX-validated) and write metadata.csv."""
    from tasks.validation import validate

    rows = _read_shard_manifests(out_dir)
    rows = rows[rows["file_name"].isin(set(plan["file_name"]))]
    if len(rows) != len(plan):
        raise StageError(f"generate: {len(plan) - len(rows)} planned images are missing after the run")
    manifest = mark_duplicates(rows)[list(MANIFEST_COLUMNS)]
    validate(manifest, "generate_manifest", classes=classes)
    atomic_write_csv(out_dir / "manifest.csv", manifest)
    ok = manifest[manifest["status"] == "ok"]
    metadata = pd.DataFrame({"file_name": ok["file_name"], "text": ok["prompt"], "label": ok["intended_label"]})
    atomic_write_csv(out_dir / "metadata.csv", metadata)
    return manifest


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
    from tasks.sd import model_hash as hash_model

    g = params.generate
    spec = _read_prompts(prompts)
    state = _process_group()
    if state is not None and g.engine != "local":
        raise StageError(f"generate.engine is {g.engine!r}, but under `accelerate launch` the processes are the "
                         f"engine: set generate.engine: local, or run without accelerate")
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe = prepare_pipeline(model, g.scheduler, g.precision, device=None if state is None else state.device)
    native = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    plan = plan_generation(params, spec, model_hash=hash_model(model), image_size=native)
    valid = _reconcile_on_main(state, out_dir, plan)
    jobs = shard_jobs(plan, valid, model_dir=model, out_dir=out_dir, g=g)
    start = time.perf_counter()
    written = _map_own_shards(state, jobs, g, pipe)
    seconds = time.perf_counter() - start
    metrics = _summarise(out_dir, plan, spec, pipe, g, written, len(valid), seconds) if _is_main(state) else None
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
    metrics = {"images": float(len(manifest)), "generated": float(written), "reused": float(reused),
               "images_per_second": round(written / seconds, 3) if written else 0.0,
               **{f"status_{s}": float(counts.get(s, 0)) for s in STATUSES}}
    log.info("generate: %d images (%d new), statuses %s", len(manifest), written, counts.to_dict())
    return metrics


if __name__ == "__main__":
    cli_main("generate")
