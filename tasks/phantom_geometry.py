"""Hip-phantom geometry: the drawing of a procedural dog-pelvis X-ray, shared by the phantom stage (which makes the
embedded demo data set) and the reference labeler (which measures the same geometry back from pixels).

Coordinates are in units of the image half-width, y pointing down. The label-carrying quantity is a Norberg-like
angle per hip (see ``tasks/phantom.py``); everything else an image shows is nuisance variation drawn from ``rng``.
Only the phantom stage and ``tasks.review.reference`` import this module: nothing else may assume hip X-rays.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

#: Seed streams (``spawn_key[0]``): one per independent use of the phantom generator.
STREAM_LABELED = 0
STREAM_UNLABELED = 1
STREAM_REFERENCE = 2  # the reference labeler's calibration pool; never used for anything else

#: Canonical geometry in units of the image half-width, y pointing down (image convention).
HEAD_X = 0.42  # femoral-head centres at (±HEAD_X, HEAD_Y)
HEAD_Y = 0.02
HEAD_R = 0.16
CUP_INNER = HEAD_R + 0.015  # the cup is a crescent between these radii around the head centre
CUP_OUTER = HEAD_R + 0.10
CUP_START_DEG = 12.0  # medial end of the cup, measured like the Norberg angle
#: Half-difference between the left and right angle is drawn from ±ASYMMETRY_DEG.
ASYMMETRY_DEG = 4.0



def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent generator for image ``index`` of ``stream``: derived, never drawn from a global RNG."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, index)))


def label_for_angle(angle: float, thresholds: tuple[float, ...], classes: tuple[str, ...]) -> str:
    """Class of a mean hip angle: ``classes[k]`` where k thresholds are ≤ angle (classes ordered low → high)."""
    if len(classes) != len(thresholds) + 1:
        raise ValueError(f"need len(classes) == len(thresholds) + 1, got {len(classes)} classes and "
                         f"{len(thresholds)} thresholds")
    if list(thresholds) != sorted(thresholds):
        raise ValueError(f"thresholds must be increasing, got {list(thresholds)}")
    if not np.isfinite(angle):
        raise ValueError(f"hip angle must be finite, got {angle}")
    return classes[int(np.searchsorted(np.asarray(thresholds, dtype=float), angle, side="right"))]


def class_interval(k: int, thresholds: tuple[float, ...], angle_range: tuple[float, float]) -> tuple[float, float]:
    """Angle interval ``[lo, hi)`` of class ``k`` inside ``angle_range``."""
    edges = [angle_range[0], *thresholds, angle_range[1]]
    if not 0 <= k < len(edges) - 1:
        raise ValueError(f"class index {k} out of range for {len(edges) - 1} classes")
    return edges[k], edges[k + 1]


def sample_angles(rng: np.random.Generator, lo: float, hi: float) -> tuple[float, float]:
    """Left/right angles (0.1° precision, as in the captions) whose mean lies in ``[lo, hi)``.

    The mean is drawn uniformly; the asymmetry between the hips is independent of it. Rounding happens before
    the mean is computed so that the label, the caption and the pixels all agree.
    """
    if not hi - lo > 0.2:
        raise ValueError(f"angle interval [{lo}, {hi}) is too narrow to sample from")
    while True:
        mean = rng.uniform(lo + 0.05, hi - 0.05)
        half = rng.uniform(-ASYMMETRY_DEG, ASYMMETRY_DEG)
        left, right = round(mean + half, 1), round(mean - half, 1)
        if lo <= (left + right) / 2 < hi:
            return left, right


def _smooth_step(d: np.ndarray, width: float) -> np.ndarray:
    """0 → 1 ramp across a signed distance ``d`` (positive = inside), antialiasing an edge over ``width``."""
    return np.clip(0.5 + d / width, 0.0, 1.0)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, tilt: float,
             aa: float) -> np.ndarray:
    c, s = np.cos(tilt), np.sin(tilt)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    return _smooth_step((1.0 - r) * min(ax, ay), aa)


def _segment(x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], half_width: float,
             aa: float) -> np.ndarray:
    """Antialiased capsule (thick line segment) from ``p0`` to ``p1``."""
    px, py = x - p0[0], y - p0[1]
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    dist = np.hypot(px - t * dx, py - t * dy)
    return _smooth_step(half_width - dist, aa)


def hip_density(x: np.ndarray, y: np.ndarray, side: int, angle: float, aa: float) -> np.ndarray:
    """Bone density of one hip (head, cup ending at the Norberg-like ``angle``, neck, shaft). side -1 = left."""
    cx = side * HEAD_X
    # Polar angle measured from the direction towards the other head, opening upwards (cranially) — the
    # Norberg-angle convention, mirrored for the right hip so both hips share one definition.
    dx, dy = (x - cx) * (-side), -(y - HEAD_Y)
    r = np.hypot(dx, dy)
    phi = np.degrees(np.arctan2(dy, dx))
    head = np.sqrt(np.clip(1.0 - (r / HEAD_R) ** 2, 0.0, 1.0)) ** 0.5 * _smooth_step(HEAD_R - r, aa)
    radial = _smooth_step(np.minimum(r - CUP_INNER, CUP_OUTER - r), aa)
    arc_len = np.radians(np.minimum(phi - CUP_START_DEG, angle - phi)) * r  # distance to the arc's ends
    cup = radial * _smooth_step(arc_len, aa)
    neck_end = (cx + side * 0.16, HEAD_Y + 0.30)
    neck = _segment(x, y, (cx, HEAD_Y), neck_end, 0.065, aa)
    shaft = _segment(x, y, neck_end, (cx + side * 0.20, 1.3), 0.085, aa)
    trochanter = _ellipse(x, y, cx + side * 0.25, HEAD_Y + 0.22, 0.07, 0.09, 0.0, aa)
    return np.maximum.reduce([0.95 * head, 0.9 * cup, 0.7 * neck, 0.8 * shaft, 0.6 * trochanter])


def _pelvis(x: np.ndarray, y: np.ndarray, aa: float) -> np.ndarray:
    """Bone density of the pelvis without the acetabula: ilium wings, sacrum, pubis/ischium rings."""
    parts = [0.35 * _segment(x, y, (0.0, -1.2), (0.0, -0.15), 0.11, aa)]  # sacrum / caudal spine
    for side in (-1, 1):
        parts.append(0.45 * _ellipse(x, y, side * 0.24, -0.62, 0.12, 0.34, side * 0.3, aa))
        ring = _ellipse(x, y, side * 0.22, 0.38, 0.17, 0.21, 0.0, aa)
        foramen = _ellipse(x, y, side * 0.22, 0.38, 0.10, 0.14, 0.0, aa)
        parts.append(0.5 * ring * (1.0 - foramen))
    return np.maximum.reduce(parts)


def render_hip(angles: tuple[float, float], rng: np.random.Generator, size: int) -> Image.Image:
    """Render one grayscale hip X-ray (``size``×``size``, mode L) with (left, right) Norberg-like ``angles``.

    ``rng`` supplies the nuisance variation only (pose, exposure, blur, noise, texture); the angles alone
    decide the geometry that carries the label.
    """
    if size < 16:
        raise ValueError(f"phantom image size must be at least 16 px, got {size}")
    left, right = (float(a) for a in angles)
    if not all(np.isfinite([left, right])) or not all(40.0 < a < 170.0 for a in (left, right)):
        raise ValueError(f"hip angles must be finite degrees in (40, 170), got {angles}")
    rot = np.radians(rng.uniform(-6.0, 6.0))
    scale = rng.uniform(0.92, 1.08)
    shift = rng.uniform(-0.06, 0.06, size=2)
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    gx, gy = np.meshgrid(coords, coords)
    # Inverse pose: pixel → canonical coordinates (rotation about the image centre, then scale, then shift).
    px, py = (gx - shift[0]) / scale, (gy - shift[1]) / scale
    x, y = np.cos(rot) * px + np.sin(rot) * py, -np.sin(rot) * px + np.cos(rot) * py
    aa = 2.0 / size  # one pixel, in canonical units
    tissue = 0.45 * _ellipse(x, y, 0.0, 0.1, 1.05, 1.35, 0.0, 0.25)
    bone = np.maximum.reduce([_pelvis(x, y, aa), hip_density(x, y, -1, left, aa), hip_density(x, y, 1, right, aa)])
    texture = gaussian_filter(rng.standard_normal((size, size)), sigma=size / 24.0)
    bone = bone * (1.0 + 0.9 * texture / (np.abs(texture).max() + 1e-6) * rng.uniform(0.1, 0.25))
    density = tissue + 1.2 * bone
    img = 1.0 - np.exp(-1.5 * density)  # X-ray film: more attenuation, brighter
    img = rng.uniform(0.85, 1.15) * img ** rng.uniform(0.8, 1.25) + rng.uniform(-0.05, 0.08)
    img = gaussian_filter(img, sigma=rng.uniform(0.3, 0.9) * size / 64.0)
    img = img + rng.normal(0.0, rng.uniform(0.015, 0.05), size=img.shape)
    return Image.fromarray(np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
