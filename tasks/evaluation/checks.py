"""The report's section on predict's checks of the generated set: the per-class quality gate and memorisation.

``generation_checks`` collects them (from predict's tables) into evaluate's summary.json; ``checks_blocks``
renders that entry as report blocks (``tasks.evaluation.report`` calls it once).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.params import Params
from tasks.tables import read_class_quality, read_predictions


def generation_checks(params: Params, predict: Path) -> dict[str, Any]:
    """Summary entry: the class-quality rows, the flagged classes, and the memorisation counts with thresholds."""
    classes = params.classes
    quality = read_class_quality(predict, classes)
    preds = read_predictions(predict, classes)
    memorised = preds[preds["memorised"].map(lambda v: str(v).strip().lower() in {"true", "1"})]
    return {"class_quality": quality.to_dict("records"),
            "out_of_manifold": quality.loc[quality["out_of_manifold"], "class"].tolist(),
            "min_class_precision": params.predict.min_class_precision,
            "n_predicted": len(preds), "n_memorised": len(memorised),
            "memorised_per_class": {c: int((memorised["intended_label"] == c).sum()) for c in classes},
            "memorised_examples": memorised[["file_name", "nearest_real", "phash_distance",
                                             "feature_distance"]].head(10).to_dict("records"),
            "phash_threshold": params.predict.memorisation_phash_distance,
            "feature_ratio": params.predict.memorisation_feature_ratio}


def _quality_sentence(checks: dict[str, Any]) -> str:
    flagged = checks["out_of_manifold"]
    rule = (f"a class is out of the real manifold when fewer than {checks['min_class_precision']:.0%} of its "
            "generated images fall inside the k-NN balls of its real train images (k-NN precision, baseline "
            "classifier features)")
    if not flagged:
        return f"Quality gate: no class is out of the real manifold ({rule})."
    return (f"Quality gate: {len(flagged)} class(es) OUT OF THE REAL MANIFOLD: {', '.join(flagged)} — their "
            f"synthetic images do not look like the real ones; review them with care or regenerate ({rule}).")


def checks_blocks(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    """Report blocks for summary['generation_checks'] (nothing when evaluate ran without predict's tables)."""
    checks = summary.get("generation_checks")
    if not checks:
        return []
    quality = pd.DataFrame(checks["class_quality"]).drop(columns=["note"], errors="ignore")
    n, k = checks["n_predicted"], checks["n_memorised"]
    share = 100 * k / n if n else math.nan
    memo = (f"Memorisation check: {k} of {n} generated images ({share:.1f}%) are copies or near-copies of a real "
            f"train image (pHash within {checks['phash_threshold']} bits, or a baseline-feature cosine distance "
            f"within {checks['feature_ratio']} × the real train images' median nearest-neighbour distance); they were "
            "kept out of review and retrain. Per class: "
            + ", ".join(f"{c} {v}" for c, v in checks["memorised_per_class"].items()) + ".")
    blocks: list[tuple[str, Any]] = [
        ("h2", "Generated images vs real train images (predict's checks, before review)"),
        ("p", _quality_sentence(checks)), ("table", quality), ("p", memo)]
    if checks["memorised_examples"]:
        blocks.append(("table", pd.DataFrame(checks["memorised_examples"])))
    return blocks
