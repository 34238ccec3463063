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
from benchmarks._generator import add_generator_args, fixed_seed_images, load_generator, to_pil  # noqa: E402


def fidelity(pipe, params, prompt: str, negative: str, label: str, n: int, guidance: float) -> dict:
    """Share of ``n`` fixed-seed images for ``prompt`` that the reference labeler measures as ``label``."""
    import numpy as np

    from tasks.review.reference import measure_angles, reference_label

    pil = to_pil(fixed_seed_images(pipe, prompt, negative, n, params.generate.num_inference_steps, guidance,
                                   10_000))
    labels = [reference_label(im, params) for im in pil]
    angles = [float(np.mean(a)) for a in (measure_angles(im, params) for im in pil) if a is not None]
    return {"as_prompted": round(float(np.mean([lab == label for lab in labels])), 3),
            "rejected": round(float(np.mean([lab == "reject" for lab in labels])), 3),
            "mean_angle": round(float(np.mean(angles)), 1) if angles else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generator_args(ap)
    ap.add_argument("--guidance", type=float, nargs="+", default=None, help="default: generate.guidance_scale")
    args = ap.parse_args(argv or [])

    from tasks.caption import build_prompts
    from tasks.diffusion.pipeline import set_scheduler

    loaded = load_generator(args, "bench_fidelity")
    if isinstance(loaded, str):
        return {"skipped": loaded}
    params, pipe, prompts = loaded
    negatives = build_prompts(tuple(prompts["classes"]), params.caption.instance_token, params.caption.thing,
                              class_negatives=True)["negative_prompts"]
    pipe = set_scheduler(pipe, params.generate.scheduler)
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
