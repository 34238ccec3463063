"""Reference labeler: stands in for the human reviewer in the embedded default and in tests.

It must not share anything with the classifiers the loop trains, so it is a *measurement* of the hip angle from
pixels, calibrated on its own phantom pool:

1. find both hips by normalised cross-correlation with a mirrored hip template (head + cup + neck);
2. take the pose (rotation, scale) from the line joining the two femoral-head centres — the Norberg baseline;
3. sample each acetabular cup along its arc in that pose, normalise the profile by the cup's own contrast;
4. a ridge regression, fitted on a calibration pool drawn from seed stream ``STREAM_REFERENCE`` (used nowhere
   else), maps the two profiles to the angles; their mean is thresholded exactly like the phantom's ground truth.

Unusable images (blank, constant, non-finite, no pelvis found, implausible geometry or angle) get ``"reject"``.
The calibration is deterministic (derived from ``params.seed``) and cached per process.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.signal import fftconvolve

from tasks.params import Params
from tasks.phantom_geometry import (CUP_INNER, CUP_OUTER, HEAD_X, HEAD_Y, STREAM_REFERENCE, hip_density,
                                     image_rng, label_for_angle, render_hip, sample_angles)
from tasks.tables import REJECT

log = logging.getLogger(__name__)

REF_SIZE = 64  # every image is measured at this size
CALIBRATION_IMAGES = 1500
MIN_STD = 4.0 / 255.0  # below this an image is blank/constant
MIN_NCC = 0.45  # template match needed to believe there is a hip
PROFILE_DEG = np.arange(30.0, 175.0, 2.5)  # arc samples, Norberg convention (0° = towards the other head)
PROFILE_RADII = np.linspace(CUP_INNER + 0.015, CUP_OUTER - 0.015, 4)
ANGLE_SLACK = 15.0  # measured angles further than this outside phantom.angle_range are implausible


def _as_array(image: Image.Image) -> np.ndarray | None:
    """Grayscale float array at REF_SIZE in [0, 1], or None when the image has no usable content."""
    img = image.convert("F") if image.mode in ("F", "I", "I;16") else image.convert("L")
    arr = np.asarray(img, dtype=np.float64)
    if arr.size == 0 or not np.isfinite(arr).all():
        return None
    if image.mode in ("F", "I", "I;16"):
        lo, hi = arr.min(), arr.max()
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    if arr.shape != (REF_SIZE, REF_SIZE):
        arr = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize(
            (REF_SIZE, REF_SIZE), Image.Resampling.BILINEAR), dtype=np.float64)
    arr = arr / 255.0
    return arr if arr.std() >= MIN_STD else None


@functools.lru_cache(maxsize=1)
def _template() -> np.ndarray:
    """Zero-mean, unit-norm left-hip template (canonical pose, mid-range angle) at REF_SIZE."""
    half = int(round((CUP_OUTER + 0.08) * REF_SIZE / 2))
    coords = (np.arange(-half, half + 1)) * 2.0 / REF_SIZE
    x, y = np.meshgrid(coords - HEAD_X, coords + HEAD_Y)
    t = hip_density(x, y, -1, 105.0, 2.0 / REF_SIZE)
    t = t - t.mean()
    return t / np.linalg.norm(t)


def _ncc(arr: np.ndarray, tmpl: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation map (same shape as ``arr``), in [-1, 1]."""
    ones = np.ones_like(tmpl)
    n = tmpl.size
    num = fftconvolve(arr, tmpl[::-1, ::-1], mode="same")
    s1 = fftconvolve(arr, ones, mode="same")
    s2 = fftconvolve(arr * arr, ones, mode="same")
    var = np.maximum(s2 - s1 * s1 / n, 1e-9)
    return num / np.sqrt(var)


def _peak(score: np.ndarray, cols: slice) -> tuple[float, float, float]:
    """Sub-pixel (x, y) of the best match within a column band, and its score."""
    band = score[:, cols]
    r, c = np.unravel_index(int(np.argmax(band)), band.shape)
    c += cols.start
    dx = dy = 0.0
    if 0 < c < score.shape[1] - 1:
        a, b, d = score[r, c - 1], score[r, c], score[r, c + 1]
        dx = 0.5 * (a - d) / (a - 2 * b + d) if (a - 2 * b + d) < 0 else 0.0
    if 0 < r < score.shape[0] - 1:
        a, b, d = score[r - 1, c], score[r, c], score[r + 1, c]
        dy = 0.5 * (a - d) / (a - 2 * b + d) if (a - 2 * b + d) < 0 else 0.0
    return c + dx, r + dy, float(score[r, c])


def find_hips(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixel (x, y) of the left and right femoral-head centres, or None when no plausible pelvis is found."""
    tmpl = _template()
    half = REF_SIZE // 2
    left = _peak(_ncc(arr, tmpl), slice(2, half))
    right = _peak(_ncc(arr, tmpl[:, ::-1]), slice(half, REF_SIZE - 2))
    if min(left[2], right[2]) < MIN_NCC:
        return None
    lp, rp = np.array(left[:2]), np.array(right[:2])
    axis = rp - lp
    expected = 2 * HEAD_X * REF_SIZE / 2
    tilt = np.degrees(np.arctan2(axis[1], axis[0]))
    if not 0.75 < np.hypot(*axis) / expected < 1.25 or abs(tilt) > 20.0:
        return None
    return lp, rp


def hip_profiles(arr: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray | None:
    """Contrast-normalised cup profiles (2 × len(PROFILE_DEG)): one row per hip, Norberg convention."""
    axis = right - left
    unit = axis / np.hypot(*axis)
    scale = np.hypot(*axis) / (2 * HEAD_X)  # pixels per canonical unit
    normal = np.array([unit[1], -unit[0]])  # points cranially (up in the image)
    smooth = gaussian_filter(arr, 0.7)
    rows = []
    for centre, towards in ((left, unit), (right, -unit)):
        phi = np.radians(PROFILE_DEG)[None, :]
        r = PROFILE_RADII[:, None] * scale
        pts = centre[:, None, None] + (towards[:, None, None] * np.cos(phi) + normal[:, None, None] * np.sin(phi)) * r
        prof = map_coordinates(smooth, [pts[1].ravel(), pts[0].ravel()], order=1, mode="nearest")
        rows.append(prof.reshape(r.shape[0], -1).mean(axis=0))
    prof = np.array(rows)
    # Always-cup (start of the arc) vs never-cup (past any plausible rim): the cup's own contrast.
    inside, outside = prof[:, :8].mean(axis=1, keepdims=True), prof[:, -6:].mean(axis=1, keepdims=True)
    contrast = inside - outside
    if (contrast < 0.3 * arr.std()).any():
        return None
    return (prof - outside) / contrast


def measure(image: Image.Image) -> np.ndarray | None:
    """Cup profile features of an image (2 × n), or None when it is unusable."""
    arr = _as_array(image)
    if arr is None:
        return None
    hips = find_hips(arr)
    return None if hips is None else hip_profiles(arr, *hips)


def _design(prof: np.ndarray) -> np.ndarray:
    return np.hstack([prof, np.clip(prof, 0, 1).sum(axis=1, keepdims=True), np.ones((len(prof), 1))])


@functools.lru_cache(maxsize=4)
def _calibration(seed: int, size: int, lo: float, hi: float) -> np.ndarray:
    """Ridge weights mapping one hip's profile to its angle, fitted on the reference seed stream only."""
    feats, targets = [], []
    for i in range(CALIBRATION_IMAGES):
        rng = image_rng(seed, STREAM_REFERENCE, i)
        left, right = sample_angles(rng, lo, hi)
        prof = measure(render_hip((left, right), rng, size))
        if prof is not None:
            feats.append(prof)
            targets.extend([left, right])
    x, y = _design(np.vstack(feats)), np.array(targets)
    ridge = 1e-2 * np.eye(x.shape[1])
    ridge[-1, -1] = 0.0  # do not shrink the intercept
    w = np.linalg.solve(x.T @ x + ridge, x.T @ y)
    resid = x @ w - y
    log.info("reference labeler calibrated on %d hips: angle RMSE %.2f°", len(y), float(np.sqrt(np.mean(resid ** 2))))
    return w


def _weights(params: Params) -> np.ndarray:
    cfg = params.phantom
    # Calibrate a little beyond the class range so extreme hips are not extrapolated.
    return _calibration(params.seed, cfg.image_size, cfg.angle_range[0] - 5.0, cfg.angle_range[1] + 5.0)


def measure_angles(image: Image.Image, params: Params) -> tuple[float, float] | None:
    """Measured (left, right) hip angles in degrees, or None when the image is unusable."""
    prof = measure(image)
    if prof is None:
        return None
    left, right = (_design(prof) @ _weights(params)).tolist()
    return left, right


def reference_label(image: Image.Image, params: Params) -> str:
    """Class name for a hip image, or ``"reject"`` when it is unusable (blank, no pelvis, implausible)."""
    angles = measure_angles(image, params)
    if angles is None:
        return REJECT
    mean = float(np.mean(angles))
    lo, hi = params.phantom.angle_range
    if not lo - ANGLE_SLACK < mean < hi + ANGLE_SLACK:
        return REJECT
    return label_for_angle(mean, params.phantom.thresholds, params.classes)


def reference_labels(images: Iterable[Image.Image], params: Params) -> list[str]:
    """Batch form of ``reference_label`` (calibrates once, then measures each image)."""
    _weights(params)
    return [reference_label(im, params) for im in images]


def agreement(images: Sequence[Image.Image], labels: Sequence[str], params: Params) -> float:
    """Fraction of images whose reference label equals ``labels`` (rejects count as disagreement)."""
    if len(images) != len(labels) or not labels:
        raise ValueError("agreement needs as many labels as images, and at least one")
    got = reference_labels(images, params)
    return float(np.mean([g == t for g, t in zip(got, labels)]))
