"""Calibrated confidence: temperature scaling fitted on the real validation split, and how to measure it.

A classifier trained on a few dozen images is usually over-confident: its top-1 softmax says 0.99 where it is
right far less often. Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T`` fitted by
negative log-likelihood on held-out real images; it never changes which class is predicted, only how sure the
prediction claims to be. ``review.confidence_threshold`` is then compared with a probability that means something.

The functions take probability matrices (what ``tasks.classify.train.predict_proba`` returns): ``log p`` are the
logits up to a per-row constant, which softmax ignores, so ``softmax(log p / T)`` is exact temperature scaling.
Pure numpy; no disk.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: The search range of T. Below 0.05 or above 20 the fit is chasing a handful of validation images (a perfectly
#: separated val split drives the NLL optimum towards T → 0), not calibrating: we stop at the bound and say so.
T_MIN, T_MAX = 0.05, 20.0
_EPS = 1e-12


def _check(proba: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] < 2 or proba.shape[0] == 0:
        raise ValueError(f"expected a non-empty N×K probability matrix with K >= 2, got shape {proba.shape}")
    if not np.all(np.isfinite(proba)) or proba.min() < 0:
        raise ValueError("probabilities must be finite and non-negative")
    if labels is None:
        return proba, None
    labels = np.asarray(labels)
    if labels.shape != (proba.shape[0],):
        raise ValueError(f"{proba.shape[0]} probability rows but {labels.size} labels")
    if labels.min() < 0 or labels.max() >= proba.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {proba.shape[1] - 1}]")
    return proba, labels.astype(int)


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row: temperature scaling of an N×K probability matrix."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    proba, _ = _check(proba)
    z = np.log(np.clip(proba, _EPS, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(proba: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    proba, labels = _check(proba, labels)
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(labels)), labels], _EPS, None))))


def fit_temperature(proba: np.ndarray, labels: np.ndarray, *, tol: float = 1e-4) -> float:
    """The T in [T_MIN, T_MAX] minimising the NLL of ``labels`` under ``apply_temperature(proba, T)``.

    A golden-section search over log T: the NLL is convex in 1/T (log-sum-exp of a linear function minus a
    linear function), hence unimodal in log T, so a 1-D bracket search finds the optimum without gradients.
    """
    proba, labels = _check(proba, labels)
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    loss = lambda log_t: nll(apply_temperature(proba, math.exp(log_t)), labels)  # noqa: E731
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    temperature = math.exp((lo + hi) / 2)
    if temperature <= T_MIN * 1.01 or temperature >= T_MAX * 0.99:
        log.warning("temperature fit hit its bound (T=%.3g, range [%g, %g]) on %d validation images: the "
                    "calibration is unreliable with so few or so well-separated images", temperature, T_MIN,
                    T_MAX, len(labels))
    return temperature


def reliability_table(proba: np.ndarray, labels: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per equal-width confidence bin: ``bin,lower,upper,count,confidence`` (mean top-1) and ``accuracy``.

    Empty bins are kept (count 0, NaN means) so that two tables with the same ``bins`` line up row by row.
    """
    proba, labels = _check(proba, labels)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for i in range(bins):
        mask = which == i
        rows.append({"bin": i, "lower": edges[i], "upper": edges[i + 1], "count": int(mask.sum()),
                     "confidence": float(conf[mask].mean()) if mask.any() else float("nan"),
                     "accuracy": float(correct[mask].mean()) if mask.any() else float("nan")})
    return pd.DataFrame(rows)


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean |accuracy − confidence| over equal-width confidence bins."""
    table = reliability_table(proba, labels, bins)
    used = table[table["count"] > 0]
    return float((used["count"] * (used["accuracy"] - used["confidence"]).abs()).sum() / used["count"].sum())


def calibration_report(proba: np.ndarray, labels: Sequence[int], temperature: float,
                       bins: int = 10) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics (temperature, ECE and NLL before/after) and the reliability-diagram table of both (``stage``
    ``raw`` / ``calibrated``) for a validation set."""
    labels = np.asarray(labels)
    scaled = apply_temperature(proba, temperature)
    metrics = {"temperature": round(float(temperature), 4), "n_calibration": int(len(labels)),
               "ece_raw": round(expected_calibration_error(proba, labels, bins), 4),
               "ece_calibrated": round(expected_calibration_error(scaled, labels, bins), 4),
               "nll_raw": round(nll(proba, labels), 4), "nll_calibrated": round(nll(scaled, labels), 4)}
    table = pd.concat([reliability_table(proba, labels, bins).assign(stage="raw"),
                       reliability_table(scaled, labels, bins).assign(stage="calibrated")], ignore_index=True)
    return metrics, table
