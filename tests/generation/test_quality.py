"""The per-class quality gate: FID-like distance and k-NN precision/recall on feature sets, and the flag rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.generation.quality import class_quality, feature_fidelity, image_features, quality_metrics


def _cloud(n: int, centre: float, seed: int, d: int = 8) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(centre, 1.0, (n, d)))


def test_same_distribution_is_close_and_a_distant_one_is_outside():
    real = _cloud(60, 0.0, 0)
    near = feature_fidelity(_cloud(60, 0.0, 1), real, neighborhood=3)
    far = feature_fidelity(_cloud(60, 12.0, 2), real, neighborhood=3)
    assert near["precision"] > 0.6 and near["recall"] > 0.6  # 8-D clouds of 60: k-NN balls cover most
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    assert far["fid"] > 100 * near["fid"] > 0


def test_identical_sets_have_zero_distance_and_full_precision():
    real = _cloud(30, 0.0, 3)
    out = feature_fidelity(real.clone(), real, neighborhood=3)
    assert out["fid"] == pytest.approx(0.0, abs=1e-6) and out["precision"] == out["recall"] == 1.0


def test_class_quality_flags_only_the_class_outside_the_real_manifold():
    real = torch.cat([_cloud(20, 0.0, 4), _cloud(20, 5.0, 5)])
    gen = torch.cat([_cloud(20, 0.0, 6), _cloud(20, 40.0, 7)])  # 'big' images land far from real 'big'
    labels = ["small"] * 20 + ["big"] * 20
    table = class_quality(gen, labels, real, labels, ("small", "big"), neighborhood=3, min_precision=0.1)
    row = table.set_index("class")
    assert row.loc["big", "out_of_manifold"] and not row.loc["small", "out_of_manifold"]
    assert "min_class_precision" in row.loc["big", "note"] and row.loc["small", "note"] == ""
    metrics = quality_metrics(table)
    assert metrics["n_classes_out_of_manifold"] == 1 and metrics["class_precision_big"] == 0.0


def test_a_class_with_too_few_images_is_not_judged():
    real, gen = _cloud(3, 0.0, 8), _cloud(10, 30.0, 9)
    table = class_quality(gen, ["a"] * 10, real, ["a"] * 3, ("a", "b"), neighborhood=3, min_precision=0.1)
    a, b = table.set_index("class").loc["a"], table.set_index("class").loc["b"]
    assert math.isnan(a["precision"]) and not a["out_of_manifold"] and "too few" in a["note"]
    assert b["n_generated"] == 0 and math.isnan(b["fid"]) and not b["out_of_manifold"]


def test_mismatched_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="N×D"):
        feature_fidelity(_cloud(5, 0, 0, d=4), _cloud(5, 0, 1, d=8), neighborhood=3)
    with pytest.raises(ValueError, match="differ in length"):
        class_quality(_cloud(5, 0, 0), ["a"] * 4, _cloud(5, 0, 1), ["a"] * 5, ("a",), neighborhood=3,
                      min_precision=0.1)
    with pytest.raises(ValueError, match="uint8"):
        image_features(torch.nn.Linear(2, 2), torch.zeros((1, 1, 4, 4)))
