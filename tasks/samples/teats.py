"""Teat-end photographs: a procedural RGB data set with four ORDERED classes (``score_1`` … ``score_4``).

Stands for a folder of phone photos of dairy-cow teat ends graded for hyperkeratosis (the keratin ring that
machine milking builds around the teat orifice): score 1 no ring, 2 a smooth thin ring, 3 a raised rough ring,
4 a very rough ring with fronds. The score is a visible property of the ring — its extent, roughness, colour and
texture — while everything else varies as in real photos: background (gradients, blotches, straw streaks, each in
its own colours), skin tone, the teat's size, position, tilt (an ellipse) and rotation, the light's direction and
strength, white balance, exposure, focus blur and sensor noise. Ring size overlaps a little between neighbouring
scores, as a grader's scale does.

Nothing is shared with the phantom demo. Each image has its own generator (``SeedSequence(seed, spawn_key=(score,
index))``), so the set is the same on every machine and a larger set extends a smaller one.

    python -m tasks.samples.teats --out data/byod/teats --per-class 150
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from tasks.io import save_png_atomic

log = logging.getLogger(__name__)

CLASSES = ("score_1", "score_2", "score_3", "score_4")

#: Per score: ring outer radius (× teat radius), edge roughness (× teat radius), opacity, texture strength,
#: how yellow the keratin is (0 white … 1 yellow-brown). Score 1 has no ring.
RING = {
    "score_1": (0.0, 0.0, 0.0, 0.0, 0.0),
    "score_2": (0.22, 0.015, 0.55, 0.10, 0.15),
    "score_3": (0.36, 0.07, 0.80, 0.35, 0.45),
    "score_4": (0.52, 0.16, 0.95, 0.70, 0.75),
}


def image_rng(seed: int, score: int, index: int) -> np.random.Generator:
    """The generator of image ``index`` of class ``score`` (0-based): derived, never global."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(score, index)))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a ``cells``² random grid upsampled bicubically to ``size``²."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A photo background (size, size, 3) in [0, 1]: a two-colour gradient with blotches, sometimes straw streaks."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Muted barn colours: a grey level with a small tint each (stalls, concrete, rubber mats, metal, bedding).
    a, b = (np.clip(rng.uniform(0.08, 0.7) + rng.normal(0, 0.07, 3), 0, 1) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    img = a * (1 - t) + b * t
    img = img + (rng.uniform(0.05, 0.25) * (_smooth_noise(rng, size, int(rng.integers(3, 9))) - 0.5))[..., None]
    if rng.random() < 0.4:  # straw / bedding: thin bright streaks at one dominant direction
        streaks = np.zeros((size, size), np.float32)
        direction = rng.uniform(0, np.pi)
        for _ in range(int(rng.integers(8, 30))):
            x0, y0, length = rng.uniform(0, size, 2).tolist() + [rng.uniform(0.1, 0.5) * size]
            d = direction + rng.normal(0, 0.3)
            ts = np.linspace(0, length, int(length) * 2 + 2)
            xs = np.clip((x0 + ts * np.cos(d)).astype(int), 0, size - 1)
            ys = np.clip((y0 + ts * np.sin(d)).astype(int), 0, size - 1)
            streaks[ys, xs] = rng.uniform(0.3, 0.8)
        colour = np.array([0.85, 0.75, 0.45]) * rng.uniform(0.7, 1.1)
        img = img * (1 - streaks[..., None]) + colour * streaks[..., None]
    return np.clip(img, 0, 1)


def _angular_noise(rng: np.random.Generator, theta: np.ndarray, freqs: tuple[int, int], terms: int) -> np.ndarray:
    """A random periodic function of the angle in about [-1, 1]: the ring's ragged outline."""
    out = np.zeros_like(theta)
    for _ in range(terms):
        f = int(rng.integers(*freqs))
        out += np.sin(f * theta + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.5, 1.0)
    return out / max(terms * 0.75, 1)


def teat(rng: np.random.Generator, label: str, size: int) -> np.ndarray:
    """One teat-end photo (size, size, 3) in [0, 1] with the ring of ``label`` on a random background."""
    img = background(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size * (0.5 + rng.normal(0, 0.05, 2))
    radius = size * rng.uniform(0.27, 0.38)
    aspect, rot = rng.uniform(0.78, 1.0), rng.uniform(0, np.pi)
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / aspect
    r = np.sqrt(u ** 2 + v ** 2)
    theta = np.arctan2(v, u)
    # Skin: a dome lit from a random direction, pink to light brown, with faint blotches.
    skin = np.array([0.86, 0.62, 0.56]) * (1 - (mix := rng.uniform(0, 0.6))) + np.array([0.62, 0.48, 0.42]) * mix
    skin = np.clip(skin * rng.uniform(0.8, 1.15) + rng.normal(0, 0.03, 3), 0, 1)
    z = np.sqrt(np.clip(1 - r ** 2, 0, 1))
    phi, elev = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.1)
    light = np.array([np.cos(phi) * np.sin(elev), np.sin(phi) * np.sin(elev), np.cos(elev)])
    lambert = np.clip(u * light[0] + v * light[1] + z * light[2], 0, 1)
    shade = rng.uniform(0.35, 0.5) + rng.uniform(0.45, 0.7) * lambert + 0.25 * lambert ** 12
    blotch = 1 + 0.08 * (_smooth_noise(rng, size, 6) - 0.5)
    teat_rgb = skin * (shade * blotch)[..., None]
    # Keratin ring around the orifice: extent, ragged edge, opacity, texture and colour grow with the score.
    outer, rough, opacity, texture, yellow = RING[label]
    if outer:
        edge = outer * rng.uniform(0.85, 1.15) + rough * _angular_noise(rng, theta, (5, 26) if rough > 0.1 else (3, 9), 4)
        inside = np.clip((edge - r) / 0.04, 0, 1) * np.clip((r - 0.07) / 0.03, 0, 1)
        keratin = np.array([0.93, 0.90, 0.82]) * (1 - yellow) + np.array([0.80, 0.68, 0.45]) * yellow
        grain = 1 + texture * (rng.random((size, size)) - 0.5) + texture * 0.6 * (_smooth_noise(rng, size, 16) - 0.5)
        ring_rgb = keratin * (shade * grain)[..., None]
        alpha = (inside * opacity)[..., None]
        teat_rgb = teat_rgb * (1 - alpha) + ring_rgb * alpha
    orifice = np.clip((0.07 * rng.uniform(0.7, 1.3) - r) / 0.03, 0, 1)[..., None]
    teat_rgb = teat_rgb * (1 - orifice) + np.array([0.30, 0.12, 0.12]) * orifice
    cover = np.clip((1 - r) / 0.04, 0, 1)[..., None]
    shadow = 1 - 0.35 * np.clip((1.25 - r) / 0.25, 0, 1)[..., None] * (1 - cover)  # soft contact shadow
    img = img * shadow * (1 - cover) + teat_rgb * cover
    return _camera(rng, img)


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """White balance, exposure, focus blur and sensor noise of a phone photo."""
    img = img * rng.uniform(0.9, 1.1, 3) * rng.uniform(0.8, 1.2)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    pil = pil.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.2))))
    out = np.asarray(pil, dtype=np.float32) / 255 + rng.normal(0, rng.uniform(0.005, 0.03), (*img.shape[:2], 3))
    return np.clip(out, 0, 1)


def render(seed: int, label: str, index: int, size: int) -> Image.Image:
    """Image ``index`` of class ``label`` as an RGB PIL image."""
    rng = image_rng(seed, CLASSES.index(label), index)
    return Image.fromarray((teat(rng, label, size) * 255).round().astype(np.uint8), mode="RGB")


def write(out: Path, per_class: int, size: int = 128, seed: int = 0) -> dict[str, int]:
    """Write ``per_class`` images of each score as ``out/<score>/teat-<index>.png``; return the counts."""
    if per_class < 1 or size < 16:
        raise ValueError(f"per_class must be >= 1 and size >= 16, got {per_class} and {size}")
    counts = {}
    for label in CLASSES:
        for i in range(per_class):
            save_png_atomic(render(seed, label, i, size), out / label / f"teat-{i:05d}.png", durable=False)
        counts[label] = per_class
    log.info("teats: %d images (%s) at %d² in %s", sum(counts.values()), counts, size, out)
    return counts


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.samples.teats --out FOLDER [--per-class N] [--size S] [--seed K]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (one sub-folder per score)")
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--size", type=int, default=128, help="side in pixels (ingest resizes to ingest.image_size)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write(args.out, args.per_class, args.size, args.seed)


if __name__ == "__main__":
    main()
