"""Pictures: PIL images from uint8 arrays, tiled grids per class, the latent-interpolation grid, MLflow logging."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.generation.filters import quantise
from tasks.generation.sampling import initial_latents, render_batch, slerp
from tasks.io import save_png_atomic
from tasks.sections_diffusion import Generate
from tasks.stage import StageError


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


def _to_pil(image_u8: np.ndarray) -> Any:
    from PIL import Image

    if image_u8.ndim == 3 and image_u8.shape[2] == 1:
        image_u8 = image_u8[:, :, 0]
    return Image.fromarray(image_u8)


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
