"""The memorisation check: nearest real image by pHash and by feature distance, and the copy rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from tasks.generation.memorisation import (cosine_distances, feature_threshold, hamming_matrix, image_phash,
                                           nearest_real, real_spacing)


def _texture(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random image: distinct seeds give distinct low-frequency structure (distinct pHashes)."""
    small = np.random.default_rng(seed).integers(0, 255, (8, 8)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _hash(arr: np.ndarray) -> str:
    return image_phash(Image.fromarray(arr), 64, 1)


def test_hamming_matrix_counts_differing_bits():
    a, b = "0" * 63 + "f", "0" * 64
    assert hamming_matrix([a, b], [b]).tolist() == [[4], [0]]
    assert hamming_matrix(["f" * 64], ["0" * 64]).tolist() == [[256]]
    assert hamming_matrix([], [b]).shape == (0, 1)


def test_bad_hashes_are_a_clear_error():
    with pytest.raises(ValueError, match="hex"):
        hamming_matrix(["xyz" + "0" * 13], ["0" * 16])
    with pytest.raises(ValueError, match="different lengths"):
        hamming_matrix(["0" * 16], ["0" * 64])
    with pytest.raises(ValueError, match="no real train images"):
        nearest_real(["0" * 64], np.zeros((1, 2)), [], [], np.zeros((0, 2)), phash_distance=1, feature_distance=0.1)


def test_exact_and_noised_copies_are_memorised_unrelated_images_are_not():
    real = [_texture(s) for s in range(6)]
    noised = np.clip(real[1] + np.random.default_rng(0).normal(0, 2, real[1].shape), 0, 255).astype(np.uint8)
    gen = [real[0].copy(), noised, _texture(100), _texture(101)]
    rng = np.random.default_rng(1)
    real_feat = rng.normal(size=(6, 16))
    gen_feat = np.stack([real_feat[0], real_feat[1] + 1e-3, rng.normal(size=16), rng.normal(size=16)])
    spacing = real_spacing([_hash(r) for r in real], real_feat)
    table = nearest_real([_hash(g) for g in gen], gen_feat, [f"r{i}.png" for i in range(6)],
                         [_hash(r) for r in real], real_feat, phash_distance=12,
                         feature_distance=feature_threshold(spacing, 0.1))
    assert table["memorised"].tolist() == [True, True, False, False]
    assert table.loc[0, "nearest_real"] == "r0.png" and table.loc[0, "phash_distance"] == 0
    assert table.loc[1, "nearest_real"] == "r1.png" and table.loc[1, "nearest_real_feature"] == "r1.png"
    assert table.loc[2:, "phash_distance"].min() > 12


def test_feature_distance_alone_flags_a_copy_that_the_phash_misses():
    real_feat = np.eye(4)
    table = nearest_real(["f" * 64], np.array([[0.0, 2.0, 0.0, 0.0]]), list("abcd"), ["0" * 64] * 4, real_feat,
                         phash_distance=12, feature_distance=0.01)
    assert table.loc[0, "memorised"] and table.loc[0, "nearest_real_feature"] == "b"
    assert table.loc[0, "phash_distance"] == 256 and table.loc[0, "feature_distance"] == pytest.approx(0)


def test_spacing_and_threshold_need_two_real_images():
    assert math.isnan(real_spacing(["0" * 64], np.zeros((1, 3)))["real_nn_feature_median"])
    assert feature_threshold(real_spacing(["0" * 64], np.zeros((1, 3))), 0.1) == 0.0
    spacing = real_spacing(["0" * 64, "f" * 64], np.eye(2))
    assert spacing["real_nn_phash_min"] == 256 and feature_threshold(spacing, 0.1) == pytest.approx(0.1)


def test_cosine_distances_shapes_must_agree():
    assert cosine_distances(np.eye(2), np.eye(2)).tolist() == [[0.0, 1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="N×D"):
        cosine_distances(np.eye(2), np.eye(3))
