"""The reference labeler (a simulated reviewer for the hip phantoms): agreement, angles, rejects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_params
from tasks import phantom
from tasks.phantom_geometry import STREAM_UNLABELED, image_rng, render_hip
from tasks.review import reference


def _fresh_phantoms(params, n: int) -> tuple[list[Image.Image], list[str]]:
    """Phantoms from a seed the calibration never saw (different seed *and* stream)."""
    records = [phantom.make_record(params.seed + 12345, STREAM_UNLABELED, i, params.phantom.angle_range,
                                   params) for i in range(n)]
    return [im for im, _ in records], [meta["label"] for _, meta in records]


def test_reference_labeler_agrees_with_ground_truth(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"phantom": {"image_size": 64}, "ingest": {"image_size": 64}})
    images, labels = _fresh_phantoms(params, 400)
    assert reference.agreement(images, labels, params) >= 0.95


def test_reference_labeler_measures_angles(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"phantom": {"image_size": 64}})
    img = render_hip((95.0, 117.0), image_rng(99, 9, 0), 64)
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
