"""What the benchmarks that judge the loop's own trained generator share: its command-line arguments, loading it
(or saying why not), and fixed-seed images made the way generate makes them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def add_generator_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", type=Path, default=REPO / "data" / "dreambooth" / "model")
    ap.add_argument("--prompts", type=Path, default=REPO / "data" / "caption" / "prompts.json")
    ap.add_argument("--per-class", type=int, default=64)


def load_generator(args: argparse.Namespace, bench: str) -> tuple[Any, Any, dict] | str:
    """The project's params.yaml, the trained pipeline (progress bars off) and caption's prompts.json, or why they
    are not there (printed)."""
    if not (args.model / "model_index.json").is_file() or not args.prompts.is_file():
        why = f"no trained generator at {args.model} (or no {args.prompts}): run `make run` first"
        print(f"{bench}: skipped, {why}", file=sys.stderr)
        return why
    from tasks.diffusion.pipeline import load_pipeline
    from tasks.params import load_params

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    return load_params(REPO / "params.yaml"), pipe, json.loads(args.prompts.read_text())


def fixed_seed_images(pipe: Any, prompt: str, negative: str, n: int, steps: int, guidance: float,
                      first_seed: int) -> Any:
    """``n`` images (N, H, W, C in [0, 1]) from the seeds ``first_seed`` … ``first_seed + n - 1``, as generate
    makes them (its initial latents, prompt embeddings and classifier-free guidance)."""
    import torch

    from tasks.diffusion.prompts import prompt_embedding
    from tasks.generation.sampling import initial_latents

    size = pipe.unet.config.sample_size
    latents = initial_latents([first_seed + i for i in range(n)], (pipe.unet.config.in_channels, size, size))
    pos, neg = (prompt_embedding(pipe, text).expand(n, -1, -1) for text in (prompt, negative))
    with torch.inference_mode():
        return pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=latents, guidance_scale=guidance,
                    num_inference_steps=steps, output_type="np").images


def to_pil(images: Any) -> list:
    """8-bit PIL images of float images in [0, 1] (NaN as 0), as generate saves them."""
    import numpy as np
    from PIL import Image

    return [Image.fromarray((np.nan_to_num(im) * 255).round().clip(0, 255).astype("uint8")) for im in images]
