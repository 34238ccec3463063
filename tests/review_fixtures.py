"""Tiny review inputs shared by the review tests: a few PNGs under generate/ and a predictions.csv under predict/."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from PIL import Image

from tasks.params import Params

#: (intended, predicted, confidence) per item; file names are images/<intended>/<index>.png.
ITEMS = [
    ("small", "small", 0.99),  # confident, agrees
    ("small", "big", 0.97),    # confident, disagrees -> a person even in accept-confident mode
    ("big", "big", 0.60),      # unsure, agrees
    ("big", "big", 0.98),      # confident, agrees
    ("small", "small", 0.55),  # unsure, agrees
]


def predictions_frame(items=ITEMS, classes=("small", "big")) -> pd.DataFrame:
    """predictions.csv as predict writes it, review_rank = disagreement first, then low margin."""
    rows = []
    for i, (intended, pred, conf) in enumerate(items):
        probs = {c: (conf if c == pred else (1 - conf) / (len(classes) - 1)) for c in classes}
        ordered = sorted(probs.values(), reverse=True)
        rows.append({"file_name": f"images/{intended}/{i:06d}.png", "intended_label": intended,
                     "pred_label": pred, "confidence": conf, "margin": ordered[0] - ordered[1],
                     "entropy": -sum(p * math.log(p) for p in probs.values() if p > 0),
                     "agrees": intended == pred, **{f"p_{c}": p for c, p in probs.items()}})
    df = pd.DataFrame(rows)
    df = df.sort_values(["agrees", "margin"], kind="stable").reset_index(drop=True)
    df["review_rank"] = range(len(df))
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)  # file order must not matter


def write_review_inputs(params: Params, items=ITEMS) -> pd.DataFrame:
    """Write images + predictions.csv where params.paths says; return the predictions frame."""
    df = predictions_frame(items, params.classes)
    for i, name in enumerate(df["file_name"]):
        path = params.paths.generate / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (32, 32), color=40 + 40 * i).save(path)
    params.paths.predict.mkdir(parents=True, exist_ok=True)
    df.to_csv(params.paths.predict / "predictions.csv", index=False)
    return df


def stage_kwargs(params: Params) -> dict[str, Path]:
    return {"predictions": params.paths.predict, "generated": params.paths.generate, "out_dir": params.paths.review}
