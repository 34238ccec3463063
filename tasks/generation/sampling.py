"""Sampling: per-image noise, the pipeline on its device/dtype, and one fixed-shape batch through it.

Determinism: CPU float results depend on the batch shape and the thread count, not on the values of the other
rows of a batch. So each image's noise comes from its own seed, each prompt is embedded alone, and a batch always
has the same shape (padded by the caller).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.diffusion.colour import to_data_channels
from tasks.diffusion.pipeline import load_pipeline, set_scheduler
from tasks.diffusion.prompts import prompt_embedding
from tasks.stage import StageError


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

    kind, dtype = _device_dtype(precision)
    pipe = load_pipeline(Path(model_dir), dtype=dtype, device=kind if device is None else device)
    set_scheduler(pipe, scheduler)
    if kind == "cuda":  # tensor-core convolutions want NHWC; on CPU it measured no faster (RESULTS.md)
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _embed(pipe: Any, text: str, cache: dict[str, Any]) -> Any:
    """Text embedding of one prompt, computed once (always alone, so its bits never depend on other prompts)."""
    if text not in cache:
        cache[text] = prompt_embedding(pipe, text).to(pipe.unet.dtype)
    return cache[text]


def _autocast(pipe: Any, precision: str) -> Any:
    import torch

    enabled = precision == "bf16" and pipe.device.type == "cpu"
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def render_batch(pipe: Any, rows: Sequence[dict[str, Any]], precision: str = "fp32",
                 cache: dict[str, Any] | None = None, latents: Any = None) -> np.ndarray:
    """Run one batch through the pipeline; float images (B, H, W, C) in [0, 1], NaN kept for the filters.

    All rows share steps, guidance, size, scheduler and ``channels`` (one plan): the images come back in the data
    set's colour mode (``tasks.diffusion.colour``). ``latents`` overrides the seeds' noise (the interpolation grid).
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
    return to_data_channels(np.asarray(out.images, dtype=np.float32), int(first["channels"]))
