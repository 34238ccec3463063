"""Hip-phantom geometry: angle → label, angle sampling, and what the drawing shows."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import phantom_geometry as geometry


def test_label_for_angle_uses_ordered_thresholds() -> None:
    assert geometry.label_for_angle(104.99, (105.0,), ("small", "big")) == "small"
    assert geometry.label_for_angle(105.0, (105.0,), ("small", "big")) == "big"
    four = ("1", "2", "3", "4")
    got = [geometry.label_for_angle(a, (95.0, 105.0, 115.0), four) for a in (90, 95, 100, 110, 121)]
    assert got == ["1", "2", "2", "3", "4"]


@pytest.mark.parametrize("thresholds, classes, match", [
    ((105.0,), ("a", "b", "c"), "len\\(classes\\)"),
    ((110.0, 100.0), ("a", "b", "c"), "increasing"),
])
def test_label_for_angle_rejects_inconsistent_thresholds(thresholds, classes, match) -> None:
    with pytest.raises(ValueError, match=match):
        geometry.label_for_angle(100.0, thresholds, classes)


def test_label_for_angle_rejects_nan() -> None:
    with pytest.raises(ValueError, match="finite"):
        geometry.label_for_angle(float("nan"), (105.0,), ("small", "big"))


def test_sample_angles_mean_stays_in_class_interval() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        left, right = geometry.sample_angles(rng, 105.0, 122.0)
        assert 105.0 <= (left + right) / 2 < 122.0
        assert round(left, 1) == left and abs(left - right) <= 2 * geometry.ASYMMETRY_DEG + 0.1
    with pytest.raises(ValueError, match="too narrow"):
        geometry.sample_angles(rng, 105.0, 105.1)


def test_render_cup_grows_with_angle_and_nothing_else_changes() -> None:
    """Same nuisance draws, bigger angle → more bone exactly at the lateral end of the cup, above the head."""
    size = 128
    small = np.asarray(geometry.render_hip((92.0, 92.0), geometry.image_rng(5, 0, 0), size), dtype=float)
    big = np.asarray(geometry.render_hip((120.0, 120.0), geometry.image_rng(5, 0, 0), size), dtype=float)
    diff = big - small
    ys, xs = np.nonzero(np.abs(diff) > 20)
    assert len(xs) > 20, "the angle must visibly change the image"
    # Changed pixels sit above the femoral heads (cranial) and lateral of their centres, on both sides.
    head_px = (geometry.HEAD_X + 1) * size / 2, (1 - geometry.HEAD_X) * size / 2
    assert ys.max() < (geometry.HEAD_Y + 1) * size / 2 + 6
    assert (xs < min(head_px) + 4).any() and (xs > max(head_px) - 4).any()
    assert np.abs(diff[: size // 4]).max() < 20 and np.abs(diff[-size // 4:]).max() < 20


def test_render_hip_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        geometry.render_hip((float("nan"), 100.0), np.random.default_rng(0), 64)
    with pytest.raises(ValueError, match="at least 16"):
        geometry.render_hip((100.0, 100.0), np.random.default_rng(0), 8)
