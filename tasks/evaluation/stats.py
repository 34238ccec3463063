"""Statistics of the comparison: classification (and ordinal) metrics, t-intervals over repeats, paired differences
against the ``real`` arm with paired t-tests and Holm's correction, verdicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
import pandas as pd

from tasks.sections_evaluate import EvaluateArm
from tasks.tables import intended_agreement

#: The arms of the comparison, in report order; ``real`` is the reference every other arm is paired with.
ARMS: tuple[str, ...] = get_args(EvaluateArm)
REFERENCE = ARMS[0]
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
ORDINAL_METRICS = ("quadratic_kappa", "mae_steps")  # reported when the classes are ordered (dataset.ordered)
VERDICTS = ("helped", "no significant difference", "hurt")


def arm_slug(arm: str) -> str:
    """An arm name as an MLflow/DVC-safe key part: ``real+synthetic_pseudo`` → ``real_synthetic_pseudo``."""
    return arm.replace("->", "_to_").replace("+", "_")


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t-distribution confidence interval ``(mean, low, high)`` of ``values``."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < 2 or not np.isfinite(x).all():
        raise ValueError(f"a confidence interval needs at least two finite values, got {x.tolist()}")
    mean = float(x.mean())
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def paired_p_value(diff: Sequence[float]) -> float:
    """Two-sided paired t-test p-value of mean(diff) = 0. Identical differences: 0 if non-zero, else 1."""
    from scipy import stats

    d = np.asarray(diff, dtype=float)
    if d.size < 2:
        raise ValueError(f"a paired test needs at least two differences, got {d.tolist()}")
    if np.allclose(d, d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def verdict(mean: float, p_adjusted: float, alpha: float) -> str:
    """Plain words for a paired difference (arm − real): its sign, if the Holm-adjusted test rejects 0."""
    if p_adjusted >= alpha or mean == 0:
        return VERDICTS[1]
    return VERDICTS[0] if mean > 0 else VERDICTS[2]


def summarise(results: pd.DataFrame, confidence: float, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean and CI of each metric per backbone × arm × split over the repeats."""
    rows = []
    for (backbone, arm, split), g in results.groupby(["backbone", "arm", "split"], sort=False):
        row: dict[str, Any] = {"backbone": backbone, "arm": arm, "split": split, "n_repeats": len(g)}
        for m in metrics:
            vals = g[m].dropna()
            mean, lo, hi = t_interval(vals, confidence) if len(vals) >= 2 else (float(vals.mean()), np.nan, np.nan)
            row.update({f"{m}_mean": mean, f"{m}_low": lo, f"{m}_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(results: pd.DataFrame, confidence: float, metric: str = "balanced_accuracy",
                       reference: str = REFERENCE) -> pd.DataFrame:
    """Per backbone × split × arm: mean of (arm − ``reference``) over the repeats (same repeat = same seed, split
    and synthetic draw), its CI, the paired t-test p-value, the Holm-adjusted p over the arms of that backbone ×
    split, and the verdict from the adjusted test at ``1 − confidence``."""
    wide = results.pivot_table(index=["backbone", "split", "repeat"], columns="arm", values=metric)
    if reference not in wide:
        raise ValueError(f"paired differences need the {reference!r} arm; results hold {sorted(wide.columns)}")
    rows = []
    for (backbone, split), g in wide.groupby(level=["backbone", "split"], sort=False):
        block = []
        for arm in [a for a in g.columns if a != reference]:
            pair = g[[reference, arm]].dropna()
            if len(pair) < 2:
                continue
            diff = (pair[arm] - pair[reference]).to_numpy()
            mean, lo, hi = t_interval(diff, confidence)
            block.append({"backbone": backbone, "split": split, "arm": arm, "reference": reference,
                          "metric": metric, "n_repeats": len(diff), "diff_mean": mean, "diff_low": lo,
                          "diff_high": hi, "p_value": paired_p_value(diff)})
        for row, adj in zip(block, holm([r["p_value"] for r in block])):
            row.update(p_holm=adj, verdict=verdict(row["diff_mean"], adj, 1 - confidence))
        rows += block
    return pd.DataFrame(rows)


def ordinal_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """For ordered classes: quadratic-weighted Cohen's kappa and the mean absolute error in class steps."""
    from sklearn.metrics import cohen_kappa_score

    if len(np.unique(np.concatenate([y_true, y_pred]))) < 2:
        kappa = float("nan")  # undefined when one class is all there is
    else:
        kappa = cohen_kappa_score(y_true, y_pred, labels=list(range(n_classes)), weights="quadratic")
    return {"quadratic_kappa": float(kappa), "mae_steps": float(np.mean(np.abs(y_true - y_pred)))}


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                           ordered: bool = False) -> dict[str, float]:
    """accuracy, balanced accuracy, macro-F1, ROC AUC (OvR; binary: of the second class), per-class P/R and, for
    ``ordered`` classes, ``ordinal_metrics``."""
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
    if ordered:
        out.update(ordinal_metrics(np.asarray(y_true), y_pred, k))
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


def versus(results: pd.DataFrame, confidence: float, arm: str, others: Sequence[str],
           backbone: str) -> dict[str, dict[str, Any]]:
    """``arm`` − each of ``others`` on test (paired per repeat, one test each, uncorrected): e.g. whether the
    reviewed labels beat the intended and pseudo labels. Arms not run are left out."""
    out = {}
    for other in others:
        pair = results[results["arm"].isin([arm, other]) & (results["backbone"] == backbone)]
        if pair["arm"].nunique() < 2:
            continue
        d = paired_differences(pair, confidence, reference=other)
        row = d[d["split"] == "test"]
        if len(row):
            out[other] = row.iloc[0].to_dict()
    return out
