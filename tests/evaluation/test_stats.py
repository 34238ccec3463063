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


def test_holm_on_a_hand_example():
    # sorted p: 0.01 → 3 × 0.01 = 0.03; 0.03 → 2 × 0.03 = 0.06; 0.04 → 1 × 0.04, but monotone: 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([]) == []


def test_verdict_words_follow_the_adjusted_test():
    assert stats.verdict(0.1, 0.01, 0.05) == "helped"
    assert stats.verdict(-0.1, 0.01, 0.05) == "hurt"
    assert stats.verdict(0.1, 0.2, 0.05) == "no significant difference"


def test_paired_differences_against_real_with_p_values_and_holm():
    rows = [{"backbone": "b", "arm": arm, "repeat": r, "split": "test", "balanced_accuracy": base + d + noise}
            for r, (base, noise) in enumerate([(0.6, 0.0), (0.7, 0.01), (0.5, -0.01), (0.65, 0.005)])
            for arm, d in (("real", 0.0), ("real+augment", 0.1), ("real+synthetic_intended", -0.2),
                           ("synthetic->real", 0.0))]
    for r in rows:  # 'real' itself carries no noise: the other arms' differences vary a little
        if r["arm"] == "real":
            r["balanced_accuracy"] -= [0.0, 0.01, -0.01, 0.005][r["repeat"]]
    diffs = stats.paired_differences(pd.DataFrame(rows), 0.95).set_index("arm")
    assert list(diffs.index) == ["real+augment", "real+synthetic_intended", "synthetic->real"]
    assert diffs.loc["real+augment", "diff_mean"] == pytest.approx(0.1 + 0.00125)  # + the mean noise
    assert diffs.loc["real+augment", "verdict"] == "helped"
    assert diffs.loc["real+synthetic_intended", "verdict"] == "hurt"
    assert diffs.loc["synthetic->real", "verdict"] == "no significant difference"
    assert (diffs["p_holm"] >= diffs["p_value"]).all()
    assert diffs["p_holm"].tolist() == pytest.approx(stats.holm(diffs["p_value"].tolist()))
    with pytest.raises(ValueError, match="'real' arm"):
        stats.paired_differences(pd.DataFrame(rows).query("arm != 'real'"), 0.95)


def test_paired_p_value_matches_scipy_and_handles_constant_differences():
    from scipy import stats as scipy_stats

    d = [0.1, 0.05, 0.12, 0.02]
    assert stats.paired_p_value(d) == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
    assert stats.paired_p_value([0.1, 0.1]) == 0.0 and stats.paired_p_value([0.0, 0.0]) == 1.0


def test_ordinal_metrics_kappa_and_mae_in_steps():
    y, pred = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 0])
    m = stats.ordinal_metrics(y, pred, 3)
    assert m["mae_steps"] == pytest.approx((0 + 1 + 0 + 2) / 4)
    from sklearn.metrics import cohen_kappa_score

    assert m["quadratic_kappa"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    p = np.eye(3)[pred] * 0.7 + 0.1  # rows sum to 1
    assert "quadratic_kappa" in stats.classification_metrics(y, p, ("a", "b", "c"), ordered=True)
    assert "quadratic_kappa" not in stats.classification_metrics(y, p, ("a", "b", "c"))


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
