"""The review queue: which generated images a person sees, in which order, and what a chosen label means."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.stage import StageError
from tasks.tables import (CLASS_QUALITY_FILE, MANIFEST_FILE, QUEUE_COLUMNS, REJECT, read_class_quality,
                          read_generate_manifest, read_predictions)

log = logging.getLogger(__name__)


def build_queue(predictions: pd.DataFrame, manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """Items to review in uncertainty order (predict's ``review_rank``: disagreement first, then low margin).

    Images that generate flagged (``status`` other than ``ok`` in its manifest) or predict found to be copies of
    real train images (``memorised``) never reach a person. Each item
    carries the image's ``sha256`` from the manifest; "" (unknown) without a manifest or for a file it lacks —
    ``load_queue`` refuses such a queue, ``ReviewStore`` cannot tie decisions to unknown content.
    """
    missing = {"file_name", "intended_label", "pred_label", "confidence", "margin", "agrees"} - set(predictions)
    if missing:
        raise StageError(f"predictions.csv lacks columns {sorted(missing)}")
    df = predictions.copy()
    if manifest is not None and "status" in manifest:
        bad = set(manifest.loc[manifest["status"] != "ok", "file_name"])
        if bad & set(df["file_name"]):
            log.warning("%d flagged images left out of the review queue", len(bad & set(df["file_name"])))
        df = df[~df["file_name"].isin(bad)]
    if "memorised" in df:  # predict's memorisation check: a copy of a real train image is never labelled
        copies = df["memorised"].map(_as_bool)
        if copies.any():
            log.warning("%d images flagged as copies of real train images (predictions.csv memorised) left out "
                        "of the review queue", int(copies.sum()))
        df = df[~copies]
    hashes = {} if manifest is None or "sha256" not in manifest else dict(
        zip(manifest["file_name"].astype(str), manifest["sha256"].fillna("").astype(str)))
    df["sha256"] = [hashes.get(f, "") for f in df["file_name"]]
    if "review_rank" not in df:
        # Fallback order when an older predictions.csv has no rank: the same rule predict uses.
        df = df.sort_values(["agrees", "margin", "file_name"], kind="stable")
        df["review_rank"] = range(len(df))
    df = df.sort_values(["review_rank", "file_name"], kind="stable").reset_index(drop=True)
    df["agrees"] = df["agrees"].map(_as_bool)
    df.insert(0, "position", range(len(df)))
    return df[QUEUE_COLUMNS + [c for c in df.columns if c.startswith("p_")]]


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


def classify_decision(pred_label: str, label: str) -> tuple[str, str]:
    """(decision, final_label) for a chosen ``label``: same as predicted → accept, other class → correct."""
    if label == REJECT:
        return "reject", ""
    return ("accept" if label == pred_label else "correct"), label


def confident_items(queue: pd.DataFrame, threshold: float) -> list[str]:
    """File names that accept-confident mode accepts: *calibrated* confidence ≥ threshold and agreeing with the
    intended class — never an audit-sample item (a person always decides those; tasks.review.budget)."""
    mask = (queue["confidence_calibrated"].astype(float) >= threshold) & queue["agrees"].map(_as_bool)
    if "audit" in queue:
        mask &= ~queue["audit"].map(_as_bool)
    return queue.loc[mask, "file_name"].tolist()


def load_queue(predictions: Path, generated: Path, classes: Sequence[str]) -> pd.DataFrame:
    """Read and validate predictions.csv, drop flagged images, return the ordered queue with each image's sha256.

    generate's manifest is required: its sha256 ties every decision to the exact image a person saw.
    """
    preds = read_predictions(predictions, classes)
    manifest = read_generate_manifest(generated, classes)
    queue = build_queue(preds, manifest)
    unknown = queue.loc[queue["sha256"] == "", "file_name"].tolist()
    if unknown:
        raise StageError(f"{Path(generated) / MANIFEST_FILE} gives no sha256 for {len(unknown)} queued images (e.g. {unknown[:3]}); "
                         "re-run the generate stage (dvc repro generate)")
    return queue


def flagged_classes(predict: Path, classes: Sequence[str]) -> list[dict[str, Any]]:
    """The classes predict's quality gate flagged out of the real manifold (``class_quality.csv``), for the review
    page's per-class banner; [] when predict wrote no such table (an older predict output)."""
    if not (Path(predict) / CLASS_QUALITY_FILE).is_file():
        return []
    quality = read_class_quality(predict, classes)
    return quality.loc[quality["out_of_manifold"], ["class", "precision", "n_generated", "note"]].to_dict("records")
