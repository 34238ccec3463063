"""DreamBooth's training data: the caption stage's inputs, the base reference, cached latents and derived batches.

Instance (and prior-preservation class) images are encoded once by the frozen VAE; every batch is then derived
from ``(seed, micro-step, process)`` so a resumed run draws exactly what the interrupted one would have.
``DreamboothError`` lives here because the inputs are where most of its messages come from; the other diffusion
modules and the dreambooth stage raise it too.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.diffusion.colour import to_data_mode
from tasks.diffusion.pipeline import model_hash
from tasks.diffusion.training import load_images
from tasks.io import atomic_write_json, save_png_atomic, sha256_file, tree_hash
from tasks.sections_diffusion import Dreambooth
from tasks.stage import StageError

log = logging.getLogger(__name__)


class DreamboothError(StageError):
    """Training cannot start or continue; the message says why and what to do."""


@dataclass
class TrainData:
    """Everything a step needs, precomputed once: latent distributions and prompt indices per example."""

    means: Any  # (N, 4, h, w) posterior means of the instance images
    stds: Any
    prompt_ids: Any  # (N, 77) token ids of each example's prompt
    class_means: Any | None = None  # prior-preservation images, same layout
    class_stds: Any | None = None
    class_prompt_ids: Any | None = None


# --------------------------------------------------------------------------------------------- inputs


def read_caption(caption: Path, mode: str) -> tuple[list[str], list[str], list[str], dict[str, Any]]:
    """File names, labels and prompts of the training images, plus prompts.json, from the caption stage."""
    import pandas as pd

    meta, prompts_file = caption / "train" / "metadata.csv", caption / "prompts.json"
    for f in (meta, prompts_file):
        if not f.is_file():
            raise DreamboothError(f"caption output {f} is missing; run `dvc repro caption` first")
    prompts = json.loads(prompts_file.read_text(encoding="utf-8"))
    df = pd.read_csv(meta, dtype=str, keep_default_na=False)
    missing = {"file_name", "text", "label"} - set(df.columns)
    if missing or df.empty:
        raise DreamboothError(f"{meta} needs rows with file_name,text,label (missing: {sorted(missing)})")
    unknown = sorted(set(df["label"]) - set(prompts.get("instance_prompts", {})))
    if unknown:
        raise DreamboothError(f"{meta} has labels {unknown} without an instance prompt in {prompts_file}")
    texts = (df["label"].map(prompts["instance_prompts"]) if mode == "class" else df["text"]).tolist()
    return df["file_name"].tolist(), df["label"].tolist(), texts, prompts


def resolve_base(base: Path) -> tuple[str, str, str]:
    """(reference, variant, hash) of the pretrain stage's output: its tiny pipeline or its base.json record."""
    if (base / "pipeline" / "model_index.json").is_file():
        return str(base / "pipeline"), "", model_hash(base / "pipeline")
    if (base / "base.json").is_file():
        record = json.loads((base / "base.json").read_text(encoding="utf-8"))
        return record["base_model"], record.get("variant", ""), record.get("hash", "")
    raise DreamboothError(f"no base model in {base} (neither pipeline/ nor base.json); run `dvc repro pretrain`")


def data_hash(caption: Path) -> str:
    """Content hash of the training data (train imagefolder + prompts.json), recorded in the model card."""
    import hashlib

    return hashlib.sha256((tree_hash(caption / "train") + sha256_file(caption / "prompts.json")).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- data


def tokenize(pipe: Any, prompts: list[str]) -> Any:
    return pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids


def encode_latents(pipe: Any, images: Any, device: Any, batch: int = 32) -> tuple[Any, Any]:
    """Posterior mean/std of each image under the frozen VAE (cached once: the VAE is never trained here)."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            dist = pipe.vae.encode(images[i:i + batch].to(device, pipe.vae.dtype)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def class_images(pipe: Any, prompt: str, count: int, seed: int, folder: Path, base_hash: str,
                 cfg: Dreambooth, channels: int = 3) -> list[Path]:
    """Prior-preservation images of ``prompt`` from the base model, generated once and cached in ``folder``, in
    the data set's colour mode (``channels``, ingest.channels) like the instance images they are trained beside.

    The cache is keyed by base hash, prompt, seed, sampler settings, channels and image index; a mismatch
    regenerates.
    """
    import torch

    key = {"base_hash": base_hash, "prompt": prompt, "seed": seed, "steps": cfg.inference_steps,
           "guidance": cfg.guidance_scale, "channels": channels}
    record = folder / "class_images.json"
    cached = json.loads(record.read_text()) if record.is_file() else {}
    paths = [folder / f"{i:05d}.png" for i in range(count)]
    if cached.get("key") != key:
        shutil.rmtree(folder, ignore_errors=True)
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        log.info("generating %d prior-preservation class images with %r", len(todo), prompt)
    for start in range(0, len(todo), 16):
        chunk = todo[start:start + 16]
        gens = [torch.Generator().manual_seed(seed + i) for i in chunk]
        out = pipe([prompt] * len(chunk), num_inference_steps=cfg.inference_steps,
                   guidance_scale=cfg.guidance_scale, generator=gens).images
        for i, img in zip(chunk, out):
            save_png_atomic(to_data_mode(img, channels), paths[i])
    atomic_write_json(record, {"key": key, "count": count})
    return paths


def batch_indices(n: int, batch: int, seed: int, micro_step: int) -> Any:
    """Example indices of one micro-step: epochs are seeded permutations, so any step can be recomputed on resume."""
    import torch

    per_epoch = max(n // batch, 1) if n >= batch else 1
    epoch, pos = divmod(micro_step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    if n < batch:
        perm = perm.repeat(math.ceil(batch / n))
    return perm[pos * batch:(pos + 1) * batch]


def make_batch(data: TrainData, cfg: Dreambooth, seed: int, micro_step: int, rank: int, world: int) -> dict:
    """This process's slice of the micro-step's batch: sampled latents and token ids (instance then class)."""
    import torch

    gen = torch.Generator().manual_seed(step_seed(seed, micro_step, rank, world, "latents"))
    idx = batch_indices(len(data.means), cfg.batch_size * world, seed, micro_step)
    idx = idx[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
    means, stds, ids = data.means[idx], data.stds[idx], data.prompt_ids[idx]
    if data.class_means is not None:
        cidx = batch_indices(len(data.class_means), cfg.batch_size * world, seed + 1, micro_step)
        cidx = cidx[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
        means = torch.cat([means, data.class_means[cidx]])
        stds = torch.cat([stds, data.class_stds[cidx]])
        ids = torch.cat([ids, data.class_prompt_ids[cidx]])
    latents = means + stds * torch.randn(means.shape, generator=gen)
    return {"latents": latents, "input_ids": ids}


def step_seed(seed: int, micro_step: int, rank: int, world: int, what: str) -> int:
    """A derived seed per (micro-step, process, purpose): no global RNG, so resume needs only the step number."""
    salt = {"latents": 1, "noise": 2}[what]
    return (seed * 1_000_003 + micro_step * world + rank) * 4 + salt


def make_dataloader(pipe: Any, caption: Path, cfg: Dreambooth, class_paths: list[Path], prompts: dict,
                    device: Any) -> TrainData:
    """Load and encode the instance (and class) images once; the batches are then derived per step."""
    names, _labels, texts, _ = read_caption(caption, cfg.caption_mode)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    means, stds = encode_latents(pipe, load_images(caption / "train", names, size), device)
    data = TrainData(means, stds, tokenize(pipe, texts))
    if class_paths:
        folder = class_paths[0].parent
        cmeans, cstds = encode_latents(pipe, load_images(folder, [p.name for p in class_paths], size), device)
        data.class_means, data.class_stds = cmeans, cstds
        data.class_prompt_ids = tokenize(pipe, [prompts["class_prompt"]] * len(class_paths))
    return data
