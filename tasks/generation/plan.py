"""The generation plan: one row per image (label, prompt, derived seed, sampler settings, shard/batch/slot layout).

Shards are contiguous blocks of rows and batches are blocks inside a shard, so the layout depends on the plan
alone, never on the engine. Each row's ``recipe`` hashes everything that decides its bytes (layout, precision and
cpu_threads included): change them and the affected images are redone.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from tasks.diffusion.prompts import PROMPT_SEPARATOR
from tasks.params import Params
from tasks.sections_diffusion import Generate
from tasks.stage import StageError

_IMAGES = "images"


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
    keys = ("prompt", "negative_prompt", "seed", "scheduler", "steps", "guidance", "height", "width", "channels",
            "model_hash", "batch", "slot")
    payload = {k: row[k] for k in keys} | {"batch_size": g.batch_size, "precision": g.precision,
                                           "cpu_threads": g.cpu_threads}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def negative_prompt(template: str, class_negative: str, user_negative: str) -> str:
    """An image's negative prompt: the other classes' prompts (same template as its own prompt) and/or the user's.

    Parts are joined by ``PROMPT_SEPARATOR``; their embeddings are averaged at render time (``prompt_embedding``).
    """
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
               "height": size, "width": size, "channels": params.ingest.channels, "model_hash": model_hash,
               "shard": shard,
               "batch": in_shard // g.batch_size, "slot": in_shard % g.batch_size}
        row["recipe"] = _recipe(row, g)
        rows.append(row)
    return pd.DataFrame(rows)
