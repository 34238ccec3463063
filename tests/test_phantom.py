"""Phantom geometry → label, determinism, params validation, and the reference labeler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_params
from tasks import phantom, reference
from tasks.io import tree_hash
from tasks.params import ParamsError


def test_label_for_angle_uses_ordered_thresholds() -> None:
    assert phantom.label_for_angle(104.99, (105.0,), ("small", "big")) == "small"
    assert phantom.label_for_angle(105.0, (105.0,), ("small", "big")) == "big"
    four = ("1", "2", "3", "4")
    got = [phantom.label_for_angle(a, (95.0, 105.0, 115.0), four) for a in (90, 95, 100, 110, 121)]
    assert got == ["1", "2", "2", "3", "4"]


@pytest.mark.parametrize("thresholds, classes, match", [
    ((105.0,), ("a", "b", "c"), "len\\(classes\\)"),
    ((110.0, 100.0), ("a", "b", "c"), "increasing"),
])
def test_label_for_angle_rejects_inconsistent_thresholds(thresholds, classes, match) -> None:
    with pytest.raises(ValueError, match=match):
        phantom.label_for_angle(100.0, thresholds, classes)


def test_label_for_angle_rejects_nan() -> None:
    with pytest.raises(ValueError, match="finite"):
        phantom.label_for_angle(float("nan"), (105.0,), ("small", "big"))


def test_sample_angles_mean_stays_in_class_interval() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        left, right = phantom.sample_angles(rng, 105.0, 122.0)
        assert 105.0 <= (left + right) / 2 < 122.0
        assert round(left, 1) == left and abs(left - right) <= 2 * phantom.ASYMMETRY_DEG + 0.1
    with pytest.raises(ValueError, match="too narrow"):
        phantom.sample_angles(rng, 105.0, 105.1)


def test_render_cup_grows_with_angle_and_nothing_else_changes() -> None:
    """Same nuisance draws, bigger angle → more bone exactly at the lateral end of the cup, above the head."""
    size = 128
    small = np.asarray(phantom.render_hip((92.0, 92.0), phantom.image_rng(5, 0, 0), size), dtype=float)
    big = np.asarray(phantom.render_hip((120.0, 120.0), phantom.image_rng(5, 0, 0), size), dtype=float)
    diff = big - small
    ys, xs = np.nonzero(np.abs(diff) > 20)
    assert len(xs) > 20, "the angle must visibly change the image"
    # Changed pixels sit above the femoral heads (cranial) and lateral of their centres, on both sides.
    head_px = (phantom.HEAD_X + 1) * size / 2, (1 - phantom.HEAD_X) * size / 2
    assert ys.max() < (phantom.HEAD_Y + 1) * size / 2 + 6
    assert (xs < min(head_px) + 4).any() and (xs > max(head_px) - 4).any()
    assert np.abs(diff[: size // 4]).max() < 20 and np.abs(diff[-size // 4:]).max() < 20


def test_render_hip_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="finite"):
        phantom.render_hip((float("nan"), 100.0), np.random.default_rng(0), 64)
    with pytest.raises(ValueError, match="at least 16"):
        phantom.render_hip((100.0, 100.0), np.random.default_rng(0), 8)


def test_run_writes_balanced_labeled_set_and_pool(params) -> None:
    out = phantom.run(params, out_dir=params.paths.phantom)
    meta = pd.read_csv(out.labeled / "metadata.csv")
    assert list(meta.columns) == ["file_name", "label", "caption", "left_angle", "right_angle", "angle"]
    assert meta.label.value_counts().to_dict() == {"small": 40, "big": 40}
    expected = [phantom.label_for_angle(a, (105.0,), ("small", "big")) for a in (meta.left_angle + meta.right_angle) / 2]
    assert meta.label.tolist() == expected
    assert all(f.startswith(f"{lab}/") for f, lab in zip(meta.file_name, meta.label))
    assert (meta.caption == [phantom.caption_for(l, r) for l, r in zip(meta.left_angle, meta.right_angle)]).all()
    with Image.open(out.labeled / meta.file_name[0]) as img:
        assert img.mode == "L" and img.size == (32, 32)
    pool = pd.read_csv(out.unlabeled / "metadata.csv")
    assert len(pool) == 64 and "label" not in pool and (out.unlabeled / pool.file_name[0]).is_file()
    assert out.metrics["n_labeled"] == 80


def test_run_is_deterministic_by_seed(tmp_path: Path) -> None:
    a, b = make_params(tmp_path / "a"), make_params(tmp_path / "b")
    c = make_params(tmp_path / "c", {"seed": 7})
    hashes = [tree_hash(phantom.run(p, out_dir=p.paths.phantom).labeled.parent) for p in (a, b, c)]
    assert hashes[0] == hashes[1] and hashes[0] != hashes[2]


def test_run_supports_four_ordered_classes(tmp_path: Path) -> None:
    p = make_params(tmp_path, {"phantom": {"classes": ["1", "2", "3", "4"], "thresholds": [96, 104, 112],
                                           "per_class": 5, "unlabeled": 0}})
    meta = pd.read_csv(phantom.run(p, out_dir=p.paths.phantom).labeled / "metadata.csv", dtype={"label": str})
    assert meta.label.value_counts().to_dict() == {"1": 5, "2": 5, "3": 5, "4": 5}
    assert meta.groupby("label").angle.max().is_monotonic_increasing


@pytest.mark.parametrize("phantom_over, match", [
    ({"thresholds": [110.0, 100.0], "classes": ["a", "b", "c"]}, "increasing"),
    ({"thresholds": [100.0, 110.0]}, "cut points"),
    ({"thresholds": [130.0]}, "inside angle_range"),
    ({"classes": ["a", "a"]}, "duplicates"),
    ({"image_size": 8}, "phantom.image_size"),
])
def test_phantom_params_validation_names_the_problem(tmp_path: Path, phantom_over, match) -> None:
    with pytest.raises(ParamsError, match=match):
        make_params(tmp_path, {"phantom": phantom_over})


def _fresh_phantoms(params, n: int) -> tuple[list[Image.Image], list[str]]:
    """Phantoms from a seed the calibration never saw (different seed *and* stream)."""
    records = [phantom.make_record(params.seed + 12345, phantom.STREAM_UNLABELED, i, params.phantom.angle_range,
                                   params) for i in range(n)]
    return [im for im, _ in records], [meta["label"] for _, meta in records]


def test_reference_labeler_agrees_with_ground_truth(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"phantom": {"image_size": 64}, "ingest": {"image_size": 64}})
    images, labels = _fresh_phantoms(params, 400)
    assert reference.agreement(images, labels, params) >= 0.95


def test_reference_labeler_measures_angles(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"phantom": {"image_size": 64}})
    img = phantom.render_hip((95.0, 117.0), phantom.image_rng(99, 9, 0), 64)
    left, right = reference.measure_angles(img, params)
    assert abs(left - 95.0) < 6 and abs(right - 117.0) < 6


def test_reference_labeler_rejects_unusable_images(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"phantom": {"image_size": 64}})
    rng = np.random.default_rng(0)
    unusable = [Image.new("L", (64, 64), 0), Image.new("L", (64, 64), 180),
                Image.fromarray(np.full((64, 64), np.nan, dtype=np.float32), mode="F"),
                Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)),
                Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)))]
    assert reference.reference_labels(unusable, params) == ["reject"] * len(unusable)
    images, _ = _fresh_phantoms(params, 3)
    assert "reject" not in reference.reference_labels([im.convert("RGB").resize((128, 128)) for im in images], params)


def test_reference_agreement_error_path(params) -> None:
    with pytest.raises(ValueError, match="as many labels"):
        reference.agreement([Image.new("L", (8, 8))], [], params)
