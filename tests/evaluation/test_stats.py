"""Statistics of the comparison: t-intervals, verdicts, paired differences, metrics, review cost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.evaluation import stats


def test_t_interval_matches_scipy():
    from scipy import stats as scipy_stats

    x = [0.61, 0.64, 0.58, 0.70, 0.66]
    mean, lo, hi = stats.t_interval(x, 0.95)
    ref = scipy_stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=scipy_stats.sem(x))
    assert mean == pytest.approx(np.mean(x)) and (lo, hi) == pytest.approx(ref)
    with pytest.raises(ValueError, match="at least two"):
        stats.t_interval([0.5])


def test_verdict_and_paired_differences():
    assert stats.verdict(-0.2, -0.01) == "synthetic data hurt"
    assert stats.verdict(-0.1, 0.1) == "no significant difference"
    assert stats.verdict(0.01, 0.2) == "synthetic data helped"
    rows = [{"backbone": "b", "arm": arm, "seed": s, "split": "test", "balanced_accuracy": base + d}
            for s, base in enumerate([0.6, 0.7, 0.5]) for arm, d in (("real_only", 0.0), ("real_synthetic", 0.1))]
    diffs = stats.paired_differences(pd.DataFrame(rows), 0.95)
    # per-seed differences are all exactly +0.1: the paired CI collapses on it although the arms vary a lot
    assert diffs.loc[0, "diff_mean"] == pytest.approx(0.1) and diffs.loc[0, "diff_low"] == pytest.approx(0.1)
    assert diffs.loc[0, "verdict"] == "synthetic data helped"


def test_classification_metrics_binary_and_multiclass():
    y = np.array([0, 0, 1, 1])
    m = stats.classification_metrics(y, np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]]), ("a", "b"))
    assert m["accuracy"] == 0.75 and m["roc_auc"] == 1.0 and m["recall_a"] == 0.5 and m["precision_b"] == 2 / 3
    p3 = np.eye(3)[[0, 1, 2, 2]] * 0.7 + 0.1
    m3 = stats.classification_metrics(np.array([0, 1, 2, 1]), p3, ("a", "b", "c"))
    assert m3["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3) and 0 <= m3["roc_auc"] <= 1


def test_review_cost_per_100():
    gen = pd.DataFrame({"file_name": [str(i) for i in range(50)]})
    corr = pd.DataFrame({"decision": ["accept"] * 40 + ["correct"] * 6 + ["reject"] * 4,
                         "intended_label": ["a"] * 50, "final_label": ["a"] * 36 + ["b"] * 10 + [""] * 4})
    cost = stats.review_cost(gen, corr)
    assert cost["corrections_per_100"] == 12 and cost["rejections_per_100"] == 8
    assert cost["intended_agreement"] == pytest.approx(36 / 46)
    with pytest.raises(ValueError):
        stats.review_cost(gen.iloc[:0], corr)
