"""Statistics of the comparison: classification metrics, t-intervals over repeats, paired differences, verdicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tasks.tables import intended_agreement

ARMS = ("real_only", "real_synthetic")  # arm ids (also MLflow-safe metric-key parts)
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t-distribution confidence interval ``(mean, low, high)`` of ``values``."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < 2 or not np.isfinite(x).all():
        raise ValueError(f"a confidence interval needs at least two finite values, got {x.tolist()}")
    mean = float(x.mean())
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half



def verdict(low: float, high: float) -> str:
    """Plain words for a paired-difference interval (retrained − baseline)."""
    if high < 0:
        return "synthetic data hurt"
    if low > 0:
        return "synthetic data helped"
    return "no significant difference"



def summarise(results: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Mean ± CI of each metric per backbone × arm × split over seeds."""
    rows = []
    for (backbone, arm, split), g in results.groupby(["backbone", "arm", "split"], sort=False):
        row: dict[str, Any] = {"backbone": backbone, "arm": arm, "split": split, "n_seeds": len(g)}
        for m in METRICS:
            vals = g[m].dropna()
            mean, lo, hi = t_interval(vals, confidence) if len(vals) >= 2 else (float(vals.mean()), np.nan, np.nan)
            row.update({f"{m}_mean": mean, f"{m}_low": lo, f"{m}_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)



def paired_differences(results: pd.DataFrame, confidence: float, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Per backbone × split: mean of (real_synthetic − real_only) over seeds, its CI, and the verdict."""
    wide = results.pivot_table(index=["backbone", "split", "seed"], columns="arm", values=metric).dropna()
    rows = []
    for (backbone, split), g in wide.groupby(level=["backbone", "split"], sort=False):
        diff = (g[ARMS[1]] - g[ARMS[0]]).to_numpy()
        mean, lo, hi = t_interval(diff, confidence)
        rows.append({"backbone": backbone, "split": split, "metric": metric, "n_seeds": len(diff), "diff_mean": mean,
                     "diff_low": lo, "diff_high": hi, "verdict": verdict(lo, hi)})
    return pd.DataFrame(rows)



def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """accuracy, balanced accuracy, macro-F1, ROC AUC (OvR; binary: of the second class) and per-class P/R."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support, \
        roc_auc_score

    k = len(classes)
    y_pred = proba.argmax(1)
    out = {"accuracy": accuracy_score(y_true, y_pred), "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
           "macro_f1": f1_score(y_true, y_pred, labels=range(k), average="macro", zero_division=0)}
    if len(np.unique(y_true)) < 2:
        out["roc_auc"] = float("nan")  # undefined with one class present
    elif k == 2:
        out["roc_auc"] = roc_auc_score(y_true, proba[:, 1])
    else:
        out["roc_auc"] = roc_auc_score(y_true, proba, multi_class="ovr", labels=list(range(k)))
    p, r, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=range(k), zero_division=0)
    out.update({f"precision_{c}": p[i] for i, c in enumerate(classes)})
    out.update({f"recall_{c}": r[i] for i, c in enumerate(classes)})
    return {key: float(v) for key, v in out.items()}



def review_cost(generated: pd.DataFrame, corrections: pd.DataFrame) -> dict[str, float]:
    """Corrections and rejections per 100 kept generated images (the human work synthetic data costs), and the
    share of kept images whose final label is the class they were generated for (the generator's fidelity)."""
    n = len(generated)
    if n == 0:
        raise ValueError("no generated images: review cost is undefined")
    counts = corrections["decision"].value_counts()
    agreement = intended_agreement(corrections)
    return {"n_generated_ok": n, "n_reviewed": len(corrections),
            **{f"n_{d}": int(counts.get(d, 0)) for d in ("accept", "correct", "reject")},
            "corrections_per_100": 100 * counts.get("correct", 0) / n,
            "rejections_per_100": 100 * counts.get("reject", 0) / n,
            "intended_agreement": float("nan") if agreement is None else agreement}
