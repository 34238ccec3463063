"""Tiny review inputs shared by the review tests: a few PNGs and their manifest (sha256 per image) under generate/,
and a predictions.csv under predict/."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from PIL import Image

from tasks.io import sha256_file
from tasks.params import Params
from tasks.review.audit import read_audit
from tasks.review.store import open_store
from tasks.review.store import ReviewStore
from tasks.tables import AUDIT_FILE, read_corrections

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
    for col in ("confidence", "margin", "entropy"):  # calibrated at T = 1: the same numbers
        df[f"{col}_calibrated"] = df[col]
    # predict's memorisation check: no item is a copy of a real train image
    df = df.assign(nearest_real="small/real-000.png", phash_distance=100, nearest_real_feature="small/real-000.png",
                   feature_distance=0.5, memorised=False)
    df = df.sort_values(["agrees", "margin"], kind="stable").reset_index(drop=True)
    df["review_rank"] = range(len(df))
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)  # file order must not matter


def write_generated(generated: Path, predictions: pd.DataFrame) -> pd.DataFrame:
    """One distinct PNG per prediction plus generate's manifest (every contract column; sha256 per image)."""
    for i, name in enumerate(predictions["file_name"]):
        path = generated / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (32, 32), color=40 + 40 * i).save(path)
    manifest = pd.DataFrame({"file_name": predictions["file_name"], "intended_label": predictions["intended_label"],
                             "prompt": "photo of zwx " + predictions["intended_label"], "negative_prompt": "",
                             "seed": range(len(predictions)), "scheduler": "ddim", "steps": 2, "guidance": 8.0,
                             "model_hash": "0" * 64, "status": "ok",
                             "sha256": [sha256_file(generated / f) for f in predictions["file_name"]]})
    manifest.to_csv(generated / "manifest.csv", index=False)
    return manifest


def regenerate(generated: Path, file_name: str, color: int = 7) -> str:
    """What generate does on a re-run with a new model: new pixels at the same file name; returns the new sha256."""
    Image.new("L", (32, 32), color=color).save(generated / file_name)
    digest = sha256_file(generated / file_name)
    manifest = pd.read_csv(generated / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.loc[manifest["file_name"] == file_name, "sha256"] = digest
    manifest.to_csv(generated / "manifest.csv", index=False)
    return digest


def write_review_inputs(params: Params, items=ITEMS) -> pd.DataFrame:
    """Write images + manifest + predictions.csv where params.paths says; return the predictions frame."""
    df = predictions_frame(items, params.classes)
    write_generated(params.paths.generate, df)
    params.paths.predict.mkdir(parents=True, exist_ok=True)
    df.to_csv(params.paths.predict / "predictions.csv", index=False)
    return df


def stage_kwargs(params: Params) -> dict[str, Path]:
    return {"predictions": params.paths.predict, "generated": params.paths.generate, "out_dir": params.paths.review}


def open_review_store(params: Params) -> ReviewStore:
    return open_store(params, **stage_kwargs(params))


def audit_of(params: Params) -> list[dict]:
    return read_audit(params.paths.review / AUDIT_FILE)


def decisions(path: Path, classes=("small", "big")) -> pd.DataFrame:
    """corrections.csv through the one reader of the hand-off contract (empty before any decision)."""
    return read_corrections(path, classes, missing_ok=True)


def decide_all(store: ReviewStore, labels=("small", "big", "reject")) -> None:
    """A person decides every waiting item, cycling through ``labels``."""
    for i, f in enumerate(store.waiting()):
        store.decide(f, labels[i % len(labels)], version=0, reviewer="ann")
