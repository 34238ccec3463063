"""Class fidelity of the generator: do images prompted for a class measure as that class?

Uses the loop's own trained generator (``data/dreambooth/model`` after ``make run``) and the hip-phantom
reference labeler (which measures the hip angle from pixels, ≥ 95% agreement on real phantoms) as the judge.
Side by side in one run, same seeds, same model, same sampler settings as ``params.yaml``'s generate section:

* ``empty negative``:  classic classifier-free guidance (away from the empty prompt);
* ``class negatives``: each class guided away from the other classes' prompts (``caption.class_negatives``).

Printed per class: the share of images measured as the prompted class, rejects, and the mean measured angle.

Usage:  python benchmarks/bench_fidelity.py [--model data/dreambooth/model] [--per-class 64] [--guidance 5 8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tasks  # noqa: E402,F401  (torchvision guard before diffusers)

REPO = Path(__file__).resolve().parent.parent


def fidelity(pipe, params, prompt: str, negative: str, label: str, n: int, guidance: float) -> dict:
    """Share of ``n`` fixed-seed images for ``prompt`` that the reference labeler measures as ``label``."""
    import numpy as np
    import torch
    from PIL import Image

    from tasks.generation.sampling import initial_latents
    from tasks.review.reference import measure_angles, reference_label
    from tasks.diffusion.prompts import prompt_embedding

    g = params.generate
    size = pipe.unet.config.sample_size
    latents = initial_latents([10_000 + i for i in range(n)], (pipe.unet.config.in_channels, size, size))
    pos, neg = (prompt_embedding(pipe, text).expand(n, -1, -1) for text in (prompt, negative))
    with torch.inference_mode():
        images = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, latents=latents, guidance_scale=guidance,
                      num_inference_steps=g.num_inference_steps, output_type="np").images
    pil = [Image.fromarray((np.nan_to_num(im) * 255).round().clip(0, 255).astype("uint8")) for im in images]
    labels = [reference_label(im, params) for im in pil]
    angles = [float(np.mean(a)) for a in (measure_angles(im, params) for im in pil) if a is not None]
    return {"as_prompted": round(float(np.mean([lab == label for lab in labels])), 3),
            "rejected": round(float(np.mean([lab == "reject" for lab in labels])), 3),
            "mean_angle": round(float(np.mean(angles)), 1) if angles else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "data" / "dreambooth" / "model")
    ap.add_argument("--prompts", type=Path, default=REPO / "data" / "caption" / "prompts.json")
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--guidance", type=float, nargs="+", default=None, help="default: generate.guidance_scale")
    args = ap.parse_args(argv or [])

    from tasks.caption import build_prompts
    from tasks.params import load_params
    from tasks.diffusion.pipeline import load_pipeline, set_scheduler

    params = load_params(REPO / "params.yaml")
    if not (args.model / "model_index.json").is_file() or not args.prompts.is_file():
        why = f"no trained generator at {args.model} (or no {args.prompts}): run `make run` first"
        print(f"bench_fidelity: skipped, {why}", file=sys.stderr)
        return {"skipped": why}
    prompts = json.loads(args.prompts.read_text())
    negatives = build_prompts(tuple(prompts["classes"]), params.caption.instance_token, params.caption.thing,
                              class_negatives=True)["negative_prompts"]
    pipe = set_scheduler(load_pipeline(args.model), params.generate.scheduler)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for guidance in args.guidance or [params.generate.guidance_scale]:
        for arm, negative_of in (("empty negative", lambda c: ""), ("class negatives", negatives.get)):
            for label in prompts["classes"]:
                r = fidelity(pipe, params, prompts["instance_prompts"][label], negative_of(label), label,
                             args.per_class, guidance)
                rows.append({"guidance": guidance, "arm": arm, "class": label, **r})
                print(json.dumps(rows[-1]), flush=True)
    return {"model": str(args.model), "per_class": args.per_class, "results": rows}


if __name__ == "__main__":
    main(sys.argv[1:])
