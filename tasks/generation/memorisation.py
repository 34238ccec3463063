"""The memorisation check: is a generated image a copy (or near-copy) of a real train image?

Medical images are private: a generator that reproduces a patient's image must not feed it back into training or
show it as "synthetic". For every generated image, the nearest real train image is found twice:

- by the 256-bit pHash of ingest (``tasks.intake.decode.phash_hex``, the near-duplicate hash; the generated image
  is first normalised exactly as ingest normalises a real one), as a Hamming distance in bits;
- by the cosine distance (1 − cos) of the frozen baseline classifier's penultimate features.

Rule: an image is **memorised** when its pHash distance is at most ``predict.memorisation_phash_distance`` *or*
its feature distance is at most ``predict.memorisation_feature_ratio`` × the median nearest-neighbour feature
distance among the real train images (``real_spacing``). The feature threshold is relative because cosine
distances have a different scale in every backbone's feature space (and in an under-trained classifier's);
"ten times closer to a real image than real images are to each other" means the same in all of them.

Measured on the embedded phantom (64², custom_cnn baseline, 64 train images): distinct real images are ≥ 22 bits
and ≥ 0.006 apart (median nearest neighbour 38 bits, 0.024), while a copy with Gaussian noise of σ = 2 grey levels
stays ≤ 12 bits and ≤ 0.0008 (σ = 5: median 7 bits, 0.0012). The defaults (12 bits, ratio 0.1 → 0.0024) flag such
copies and no distinct real image. A one-pixel shift defeats both (median 32 bits, 0.013): this check finds copies
and noisy copies, not every transformed copy. predict warns when a threshold reaches distinct real train images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from tasks.intake.decode import normalise, phash_hex

log = logging.getLogger(__name__)

#: Columns this check adds to predictions.csv (the ``predictions`` suite requires them).
MEMORISATION_COLUMNS = ("nearest_real", "phash_distance", "nearest_real_feature", "feature_distance", "memorised")


def image_phash(img: Image.Image, size: int, channels: int) -> str:
    """pHash of ``img`` after ingest's normalisation (mode, size): comparable with a real image's manifest pHash."""
    return phash_hex(normalise(img, size, channels))


def _words(hashes: Sequence[str]) -> np.ndarray:
    lengths = {len(h) for h in hashes}
    if len(lengths) > 1 or any(n % 16 for n in lengths) or not all(_is_hex(h) for h in hashes):
        raise ValueError("pHashes must be hex strings of one length, a multiple of 16 digits (64 bits)")
    return np.array([[int(h[k:k + 16], 16) for k in range(0, len(h), 16)] for h in hashes], dtype=np.uint64)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def hamming_matrix(a: Sequence[str], b: Sequence[str], block: int = 512) -> np.ndarray:
    """Bit distances (len(a)×len(b), int) between two lists of equal-length hex hashes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), dtype=np.int64)
    wa, wb = _words(a), _words(b)
    if wa.shape[1] != wb.shape[1]:
        raise ValueError(f"pHashes of different lengths: {len(a[0]) * 4} vs {len(b[0]) * 4} bits")
    rows = [np.bitwise_count(wa[i:i + block, None, :] ^ wb[None, :, :]).sum(axis=-1) for i in range(0, len(wa), block)]
    return np.concatenate(rows).astype(np.int64)


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 − cosine similarity (len(a)×len(b)) of two feature matrices; a zero vector is at distance 1 from all."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"cosine_distances needs two N×D matrices of one D, got {a.shape} and {b.shape}")
    na = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    nb = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.clip(1.0 - na @ nb.T, 0.0, 2.0)


def nearest_real(gen_phash: Sequence[str], gen_features: np.ndarray, real_names: Sequence[str],
                 real_phash: Sequence[str], real_features: np.ndarray, *, phash_distance: int,
                 feature_distance: float) -> pd.DataFrame:
    """Per generated image (in order): ``MEMORISATION_COLUMNS``: nearest real train image by pHash and by
    feature, both distances, and the memorised flag (either distance within its threshold)."""
    if not len(real_names):
        raise ValueError("memorisation check: no real train images to compare with")
    if len(gen_phash) != len(gen_features) or len(real_names) != len(real_phash) or len(real_names) != len(real_features):
        raise ValueError("memorisation check: hashes, features and names differ in length")
    names = np.asarray(real_names, dtype=object)
    bits = hamming_matrix(gen_phash, real_phash)
    cos = cosine_distances(gen_features, real_features)
    by_hash, by_feature = bits.argmin(axis=1), cos.argmin(axis=1)
    table = pd.DataFrame({"nearest_real": names[by_hash], "phash_distance": bits.min(axis=1),
                          "nearest_real_feature": names[by_feature], "feature_distance": cos.min(axis=1)})
    table["memorised"] = (table["phash_distance"] <= phash_distance) | (table["feature_distance"] <= feature_distance)
    return table


SPACING_KEYS = ("real_nn_phash_median", "real_nn_phash_p5", "real_nn_phash_min", "real_nn_feature_median",
                "real_nn_feature_p5", "real_nn_feature_min")


def real_spacing(real_phash: Sequence[str], real_features: np.ndarray) -> dict[str, float]:
    """How far apart distinct real train images are: median, 5th percentile and minimum of each image's nearest
    *other* real image, in pHash bits and feature distance (NaN with fewer than two images)."""
    if len(real_phash) < 2:
        return dict.fromkeys(SPACING_KEYS, float("nan"))
    bits = hamming_matrix(real_phash, real_phash).astype(np.float64)
    cos = cosine_distances(real_features, real_features)
    np.fill_diagonal(bits, np.inf)
    np.fill_diagonal(cos, np.inf)
    nb, nc = bits.min(axis=1), cos.min(axis=1)
    return {"real_nn_phash_median": float(np.median(nb)), "real_nn_phash_p5": float(np.percentile(nb, 5)),
            "real_nn_phash_min": float(nb.min()), "real_nn_feature_median": float(np.median(nc)),
            "real_nn_feature_p5": float(np.percentile(nc, 5)), "real_nn_feature_min": float(nc.min())}


def feature_threshold(spacing: dict[str, float], ratio: float) -> float:
    """The absolute feature-distance threshold: ``ratio`` × the real images' median nearest-neighbour distance
    (0 — exact feature copies only — when there are too few real images to measure it)."""
    median = spacing["real_nn_feature_median"]
    return 0.0 if np.isnan(median) else float(ratio * median)


def warn_if_thresholds_reach_real(spacing: dict[str, float], phash_distance: int, feature_distance: float) -> None:
    """Log a warning when a threshold would call distinct real images copies of each other."""
    if not np.isnan(spacing["real_nn_phash_min"]) and spacing["real_nn_phash_min"] <= phash_distance:
        log.warning("predict.memorisation_phash_distance %d reaches distinct real train images (nearest pair %.0f "
                    "bits apart): lower it, or near-duplicates in the train split will look like copies",
                    phash_distance, spacing["real_nn_phash_min"])
    if not np.isnan(spacing["real_nn_feature_min"]) and spacing["real_nn_feature_min"] <= feature_distance:
        log.warning("memorisation feature threshold %.4g (predict.memorisation_feature_ratio × the median spacing) "
                    "reaches distinct real train images (nearest pair %.4g apart): lower the ratio",
                    feature_distance, spacing["real_nn_feature_min"])
