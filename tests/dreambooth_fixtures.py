"""Toy DreamBooth inputs shared by the dreambooth stage tests and the diffusion wing's tests: class-dependent discs
and a caption-stage output folder (train imagefolder + prompts.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SIZE = 32
CLASSES = ("small", "big")


def disc_image(label: str, k: int) -> Image.Image:
    """A class-dependent toy X-ray: a bright disc whose radius depends on the class."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = (5 if label == "small" else 11) + (k % 3)
    cx, cy = SIZE / 2 + (k % 5) - 2, SIZE / 2 + (k % 4) - 2
    img = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, 220, 30).astype(np.uint8)
    return Image.fromarray(img, mode="L")


def write_caption(folder: Path, per_class: int = 4) -> Path:
    train = folder / "train"
    train.mkdir(parents=True)
    rows = []
    for label in CLASSES:
        for k in range(per_class):
            name = f"{label}/{label}-{k}.png"
            (train / label).mkdir(exist_ok=True)
            disc_image(label, k).save(train / name)
            rows.append({"file_name": name, "text": f"X-ray of a dog hip, {label} hip angle {k}", "label": label})
    pd.DataFrame(rows).to_csv(train / "metadata.csv", index=False)
    prompts = {"classes": list(CLASSES), "instance_prompts": {c: f"photo of zwx {c} hip xray" for c in CLASSES},
               "class_prompt": "photo of a hip xray"}
    (folder / "prompts.json").write_text(json.dumps(prompts))
    return folder
