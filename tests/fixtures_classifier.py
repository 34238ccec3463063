"""Tiny on-disk fixtures for the classifier stages: caption imagefolders, a generate manifest, review
corrections and an ingest test split, with a class signal a small CNN learns in a few epochs (disc size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from tasks.io import sha256_file

CLASSES = ("small", "big")


def disc_image(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A noisy grayscale image with a centred disc: small radius for 'small', large for 'big'."""
    im = Image.new("L", (size, size), int(rng.integers(0, 40)))
    r = size // 8 if label == "small" else size // 3
    c = size // 2 + int(rng.integers(-2, 3))
    ImageDraw.Draw(im).ellipse([c - r, c - r, c + r, c + r], fill=int(rng.integers(170, 230)))
    arr = np.clip(np.asarray(im, dtype=float) + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _write(folder: Path, names: list[str], labels: list[str], size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, label in zip(names, labels):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        disc_image(label, size, rng).save(folder / name)


def make_caption(root: Path, n_train: int = 16, n_val: int = 16, size: int = 32) -> Path:
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        labels = [CLASSES[i % 2] for i in range(n)]
        names = [f"{split}_{i:03d}.png" for i in range(n)]
        _write(root / split, names, labels, size, seed)
        pd.DataFrame({"file_name": names, "text": [f"photo of zwx {lbl} hip xray" for lbl in labels],
                      "label": labels}).to_csv(root / split / "metadata.csv", index=False)
    return root


def make_generated(root: Path, n: int = 24, size: int = 32, bad: int = 2) -> pd.DataFrame:
    """``n`` ok images plus ``bad`` black ones; returns the manifest (with each file's sha256, as generate)."""
    labels = [CLASSES[i % 2] for i in range(n + bad)]
    names = [f"images/{lbl}/{i:06d}.png" for i, lbl in enumerate(labels)]
    _write(root, names, labels, size, 2)
    df = pd.DataFrame({"file_name": names, "intended_label": labels, "prompt": [f"zwx {x}" for x in labels],
                       "negative_prompt": "", "seed": range(n + bad), "scheduler": "ddim", "steps": 2,
                       "guidance": 8.0, "model_hash": "abc", "status": ["ok"] * n + ["black"] * bad,
                       "sha256": [sha256_file(root / f) for f in names]})
    df.to_csv(root / "manifest.csv", index=False)
    return df


def make_corrections(root: Path, manifest: pd.DataFrame, decisions: dict[str, tuple[str, str]] | None = None
                     ) -> pd.DataFrame:
    """Accept every ok item unless ``decisions`` maps file_name → (decision, final_label); each row records the
    manifest's sha256 (the image the decision was made on)."""
    decisions = decisions or {}
    rows = []
    for r in manifest[manifest["status"] == "ok"].itertuples():
        decision, final = decisions.get(r.file_name, ("accept", r.intended_label))
        rows.append({"file_name": r.file_name, "sha256": r.sha256, "intended_label": r.intended_label,
                     "pred_label": r.intended_label, "final_label": final, "decision": decision, "reviewer": "reference",
                     "timestamp": "2025-01-01T00:00:00Z", "version": 1, "note": ""})
    df = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    df.to_csv(root / "corrections.csv", index=False)
    return df


def make_test_split(root: Path, n: int = 20, size: int = 32) -> Path:
    labels = [CLASSES[i % 2] for i in range(n)]
    names = [f"{lbl}/{i:04d}.png" for i, lbl in enumerate(labels)]
    _write(root, names, labels, size, 3)
    pd.DataFrame({"file_name": names, "label": labels, "split": "test", "source": "fixture",
                  "sha256": [f"{i:064x}" for i in range(n)], "phash": "0", "group": range(n), "width": size,
                  "height": size, "caption": ""}).to_csv(root / "manifest.csv", index=False)
    return root


def make_trainval(root: Path, caption: Path) -> Path:
    """An ingest ``trainval`` folder holding the caption fixture's train and val images (split column = theirs,
    one near-duplicate group per image): the pool evaluate's repeats re-split."""
    import shutil

    rows = []
    for split in ("train", "val"):
        meta = pd.read_csv(caption / split / "metadata.csv")
        for name, label in zip(meta["file_name"], meta["label"]):
            rel = f"{split}/{name}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(caption / split / name, root / rel)
            rows.append({"file_name": rel, "label": label, "split": split, "source": f"src/{rel}"})
    df = pd.DataFrame(rows)
    df = df.assign(sha256=[f"{i:064x}" for i in range(len(df))], phash="0", group=[f"g{i}" for i in range(len(df))],
                   width=32, height=32, caption="")
    df.to_csv(root / "manifest.csv", index=False)
    return root
