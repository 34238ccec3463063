"""Temperature scaling: it lowers the ECE of over-confident logits, keeps the argmax, and refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.classify import calibration as cal


def _overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities from calibrated logits; the model reports them sharpened 4× (logits × 4)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, (n, 3))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in true_p])
    sharp = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)
    return sharp, labels


def test_temperature_scaling_lowers_ece_on_overconfident_logits():
    proba, labels = _overconfident()
    t = cal.fit_temperature(proba, labels)
    assert 3.0 < t < 5.5  # the sharpening was 4×
    scaled = cal.apply_temperature(proba, t)
    before, after = cal.expected_calibration_error(proba, labels), cal.expected_calibration_error(scaled, labels)
    assert before > 0.15 and after < 0.05 and after < before / 3
    assert cal.nll(scaled, labels) < cal.nll(proba, labels)
    assert (scaled.argmax(1) == proba.argmax(1)).all()


def test_calibration_report_has_both_diagrams():
    proba, labels = _overconfident(300)
    metrics, table = cal.calibration_report(proba, labels, cal.fit_temperature(proba, labels), bins=5)
    assert metrics["ece_calibrated"] < metrics["ece_raw"] and metrics["n_calibration"] == 300
    assert len(table) == 10 and set(table["stage"]) == {"raw", "calibrated"}
    assert table.groupby("stage")["count"].sum().tolist() == [300, 300]


def test_ece_by_hand():
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])
    # two bins: all four top-1 confidences (.9, .8, .7, .55) fall in (0.5, 1]; mean .7375, 3 of 4 right → .0125
    assert cal.expected_calibration_error(proba, labels, bins=2) == pytest.approx(abs(0.75 - 0.7375))
    assert cal.expected_calibration_error(proba, labels, bins=10) == pytest.approx(
        (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.55)) / 4)


def test_perfectly_separated_val_hits_the_bound_with_a_warning(caplog):
    proba = np.array([[0.8, 0.2], [0.3, 0.7]])
    t = cal.fit_temperature(proba, np.array([0, 1]))
    assert t == pytest.approx(cal.T_MIN, rel=0.02)
    assert "hit its bound" in caplog.text


@pytest.mark.parametrize(("proba", "labels", "match"), [
    (np.array([0.5, 0.5]), np.array([0]), "N×K"),
    (np.array([[0.5, 0.5]]), np.array([0, 1]), "1 probability rows but 2 labels"),
    (np.array([[0.5, 0.5]]), np.array([2]), "class indices"),
    (np.array([[np.nan, 0.5]]), np.array([0]), "finite"),
])
def test_bad_input_is_refused(proba, labels, match):
    with pytest.raises(ValueError, match=match):
        cal.fit_temperature(proba, labels)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        cal.apply_temperature(np.array([[0.5, 0.5]]), 0.0)
