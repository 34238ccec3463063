"""Fewer sampler steps, same images? The loop's own generator, the same seeds and prompts, side by side in one run:
DDIM at 20 steps (the reference) against the step counts and samplers given, at generate's guidance with class
negatives (what generate does).

Printed per setting: seconds per image, the mean absolute pixel difference to the reference images of the same
seeds (0-1 scale; 0.01 is 2.6 grey levels) and, on the phantom demo only, the share of images the reference
labeler measures as the prompted class (it reads the hip angle from pixels; other data sets have no such judge).

Usage:  python benchmarks/bench_sampler_steps.py [--per-class 64] [--settings ddim:12 dpm++:10]
(after ``make run``; also ``python -m benchmarks.run sampler_steps``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tasks  # noqa: E402,F401  (torchvision guard before diffusers)
from benchmarks._generator import add_generator_args, fixed_seed_images, load_generator, to_pil  # noqa: E402

REFERENCE = ("ddim", 20)


def sample(pipe, prompts: dict, label: str, n: int, steps: int, guidance: float):
    """``n`` fixed-seed images (N, H, W, C in [0, 1]) of ``label``, as generate makes them."""
    negative = prompts.get("negative_prompts", {}).get(label, "")
    return fixed_seed_images(pipe, prompts["instance_prompts"][label], negative, n, steps, guidance, 30_000)


def as_prompted(images, label: str, params) -> float | None:
    """Share of ``images`` the phantom reference labeler measures as ``label`` (None off the phantom demo)."""
    import numpy as np

    if params.dataset.source != "phantom":
        return None
    from tasks.review.reference import reference_label

    pil = to_pil(images)
    return round(float(np.mean([reference_label(im, params) == label for im in pil])), 3)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generator_args(ap)
    ap.add_argument("--settings", nargs="+", default=["ddim:12", "dpm++:12"], help="sampler:steps to compare")
    args = ap.parse_args(argv or [])
    import numpy as np

    from tasks.diffusion.pipeline import set_scheduler

    loaded = load_generator(args, "bench_sampler_steps")
    if isinstance(loaded, str):
        return {"skipped": loaded}
    params, pipe, prompts = loaded
    guidance = params.generate.guidance_scale
    settings = [REFERENCE, *((s.split(":")[0], int(s.split(":")[1])) for s in args.settings)]
    sample(set_scheduler(pipe, "ddim"), prompts, prompts["classes"][0], 2, 2, guidance)  # warm-up
    reference, rows = {}, []
    for sampler, steps in settings:
        set_scheduler(pipe, sampler)
        for label in prompts["classes"]:
            start = time.perf_counter()
            images = sample(pipe, prompts, label, args.per_class, steps, guidance)
            seconds = (time.perf_counter() - start) / args.per_class
            reference.setdefault(label, images)
            rows.append({"sampler": sampler, "steps": steps, "class": label, "s_per_image": round(seconds, 4),
                         "mean_abs_diff_vs_ddim20": round(float(np.abs(images - reference[label]).mean()), 4),
                         "as_prompted": as_prompted(images, label, params)})
            print(json.dumps(rows[-1]), flush=True)
    base = {r["class"]: r["s_per_image"] for r in rows if (r["sampler"], r["steps"]) == REFERENCE}
    for r in rows:
        r["speedup_vs_ddim20"] = round(base[r["class"]] / r["s_per_image"], 2)
    print(json.dumps({f"{r['sampler']}:{r['steps']} {r['class']}": r["speedup_vs_ddim20"] for r in rows}))
    return {"model": str(args.model), "per_class": args.per_class, "guidance": guidance, "results": rows}


if __name__ == "__main__":
    main(sys.argv[1:])
