"""Stage ``phantom``: procedural dog-pelvis X-rays whose class is known by construction.

Each image shows two femoral heads seated in acetabula, the ilium wings, the obturator foramina and the femoral
necks/shafts over a soft-tissue silhouette, with bone texture, blur, noise, exposure changes and a small random
pose (rotation, shift, scale). The diagnostic quantity is a Norberg-like angle per hip: the angle at the
femoral-head centre between the line to the other head's centre and the line to the cranial acetabular rim. It is
drawn *visibly*: the acetabular cup is a bony crescent concentric with the head that runs from the medial side
over the top of the head and ends at the rim, so a larger angle means a cup that covers more of the head. The class
is a deterministic function of the mean of the two angles (``label_for_angle``), classes ordered low → high.

Determinism: each image has its own generator seeded from ``SeedSequence(params.seed, spawn_key=(stream,
index))``; streams keep the labeled set, the unlabeled pool and the reference labeler's calibration pool apart.
Nothing draws from a global RNG.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from tasks.io import atomic_write_csv, clean_stale_temp, save_png_atomic
from tasks.params import Params
from tasks.stage import cli_main

log = logging.getLogger(__name__)

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

CAPTION = "X-ray of a dog hip, left angle {left:.1f} degrees, right angle {right:.1f} degrees"


@dataclass(frozen=True)
class PhantomOutputs:
    labeled: Path
    unlabeled: Path
    metrics: dict[str, float]


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


def caption_for(left: float, right: float) -> str:
    """Caption in the style of the dog-hip report."""
    return CAPTION.format(left=left, right=right)


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


def _hip(x: np.ndarray, y: np.ndarray, side: int, angle: float, aa: float) -> np.ndarray:
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
    bone = np.maximum.reduce([_pelvis(x, y, aa), _hip(x, y, -1, left, aa), _hip(x, y, 1, right, aa)])
    texture = gaussian_filter(rng.standard_normal((size, size)), sigma=size / 24.0)
    bone = bone * (1.0 + 0.9 * texture / (np.abs(texture).max() + 1e-6) * rng.uniform(0.1, 0.25))
    density = tissue + 1.2 * bone
    img = 1.0 - np.exp(-1.5 * density)  # X-ray film: more attenuation, brighter
    img = rng.uniform(0.85, 1.15) * img ** rng.uniform(0.8, 1.25) + rng.uniform(-0.05, 0.08)
    img = gaussian_filter(img, sigma=rng.uniform(0.3, 0.9) * size / 64.0)
    img = img + rng.normal(0.0, rng.uniform(0.015, 0.05), size=img.shape)
    return Image.fromarray(np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")


def make_record(seed: int, stream: int, index: int, interval: tuple[float, float], params: Params,
                ) -> tuple[Image.Image, dict[str, Any]]:
    """Image ``index`` of ``stream`` with a mean angle in ``interval``, and its metadata row (no file_name)."""
    rng = image_rng(seed, stream, index)
    left, right = sample_angles(rng, *interval)
    angle = round((left + right) / 2.0, 2)
    image = render_hip((left, right), rng, params.phantom.image_size)
    label = label_for_angle(angle, params.phantom.thresholds, params.phantom.classes)
    return image, {"label": label, "caption": caption_for(left, right), "left_angle": left,
                   "right_angle": right, "angle": angle}


def labeled_plan(params: Params) -> list[tuple[int, int]]:
    """(image index, class index) of the balanced labeled set: ``per_class`` images of each class."""
    n_classes = len(params.phantom.classes)
    return [(i, i % n_classes) for i in range(params.phantom.per_class * n_classes)]


def _write_set(records: list[tuple[Image.Image, dict[str, Any]]], folder: Path, names: list[str]) -> pd.DataFrame:
    rows = []
    for (image, meta), name in zip(records, names):
        save_png_atomic(image, folder / name, durable=False)  # regenerated on re-run; metadata is durable
        rows.append({"file_name": name, **meta})
    return pd.DataFrame(rows)


def _remove_stale(folder: Path, keep: set[str]) -> int:
    """Delete PNGs a previous run with other params left behind, so the folder equals its metadata."""
    stale = [p for p in folder.rglob("*.png") if p.relative_to(folder).as_posix() not in keep]
    for p in stale:
        p.unlink()
    return len(stale)


def run(params: Params, *, out_dir: Path) -> PhantomOutputs:
    """Render the balanced labeled set and the unlabeled pool under ``out_dir``."""
    out_dir = Path(out_dir)
    clean_stale_temp(out_dir)
    cfg = params.phantom
    labeled, unlabeled = out_dir / "labeled", out_dir / "unlabeled"
    plan = labeled_plan(params)
    records = [make_record(params.seed, STREAM_LABELED, i, class_interval(k, cfg.thresholds, cfg.angle_range),
                           params) for i, k in tqdm(plan, desc="phantom labeled", leave=False)]
    names = [f"{meta['label']}/hip-{i:05d}.png" for (i, _), (_, meta) in zip(plan, records)]
    lab_df = _write_set(records, labeled, names)
    pool = [make_record(params.seed, STREAM_UNLABELED, i, cfg.angle_range, params)
            for i in tqdm(range(cfg.unlabeled), desc="phantom unlabeled", leave=False)]
    pool_df = _write_set(pool, unlabeled, [f"pool-{i:05d}.png" for i in range(cfg.unlabeled)])
    # The pool is unlabeled for the loop; angles stay in its metadata for audits only.
    pool_df = pool_df.drop(columns="label") if len(pool_df) else pd.DataFrame(
        columns=["file_name", "caption", "left_angle", "right_angle", "angle"])
    atomic_write_csv(labeled / "metadata.csv", lab_df)
    atomic_write_csv(unlabeled / "metadata.csv", pool_df)
    n_stale = _remove_stale(labeled, set(lab_df.file_name)) + _remove_stale(unlabeled, set(pool_df.file_name))
    counts = lab_df.label.value_counts()
    metrics = {"n_labeled": float(len(lab_df)), "n_unlabeled": float(len(pool_df)), "n_stale_removed": n_stale,
               **{f"n_{c}": float(counts.get(c, 0)) for c in cfg.classes}}
    log.info("phantom: %d labeled (%s), %d unlabeled in %s", len(lab_df), dict(counts), len(pool_df), out_dir)
    return PhantomOutputs(labeled=labeled, unlabeled=unlabeled, metrics=metrics)


if __name__ == "__main__":
    cli_main("phantom")
