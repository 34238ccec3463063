"""Every backbone trains with the real recipe (train_classifier) on a shrunk config and beats chance on an easy
fixture: horizontal vs vertical stripes, 24 training images, scored on 16 held-out ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.classify.data import load_images
from tasks.classify.train import balanced_accuracy, predict_proba, train_classifier
from tasks.sections import Augment

CLASSES = ("horizontal", "vertical")
SIZE = 32


def stripes(label: str, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """Stripes of a random period and phase, with noise; the class is only their orientation."""
    period, phase = int(rng.integers(4, 9)), rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * np.arange(size) / period + phase)
    img = np.repeat(wave[:, None], size, 1) if label == "horizontal" else np.repeat(wave[None, :], size, 0)
    img = 128 + 60 * img + rng.normal(0, 12, (size, size))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _split(folder: Path, n_per_class: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for i in range(2 * n_per_class):
        label = CLASSES[i % 2]
        path = folder / f"{i:03d}.png"
        stripes(label, rng).save(path)
        rows.append({"path": str(path), "label": label, "source": "real"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def stripe_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("stripes")
    return _split(root / "train", 12, 0), _split(root / "val", 6, 1), _split(root / "test", 8, 2)


#: Per backbone: input size (None: the backbone's own), epochs, learning rate, bn_refresh. Small where the backbone
#: allows; Inception-v3 cannot go below 299² (its auxiliary classifier). Measured on 2-core VMs: VGG19 (no BatchNorm)
#: stays at chance for 7 epochs at 1e-4 and reaches 1.00 from epoch 8 (5e-4 and SGD 1e-2 never leave chance); ViT-B/16
#: at 32² 0.62 (1e-4 × 4), 0.69 (3e-4 × 4); Inception-v3 fits the train set but every val epoch sat at chance until
#: training re-estimated its BatchNorm statistics (``baseline.bn_refresh: auto``): then 1.00 at 2e-4 × 4. ResNet50 at
#: 32² × 5 epochs was at chance for 3 of 4 seeds (one machine's 0.94 at seed 0 was luck, 0.69 on another): the input
#: is 1×1 by layer4, and 24 optimiser steps leave BatchNorm's running statistics far from the batch ones; at 64² with
#: the statistics re-estimated (``always``) 8 × 5e-4 gave 0.94 for each of 4 seeds.
RECIPES = {
    "custom_cnn": (None, 4, 3e-3, "auto"),
    "resnet18": (None, 3, 1e-3, "auto"),
    "resnet50": (64, 8, 5e-4, "always"),
    "vgg19": (None, 10, 1e-4, "auto"),
    "vit_b_16": (32, 6, 3e-4, "auto"),
    "inception_v3": (None, 4, 2e-4, "auto"),
}


def _recipe(params, backbone: str):
    size, epochs, lr, bn_refresh = RECIPES[backbone]
    still = Augment(hflip=False, max_rotation=0.0, translate=0.0, scale=(1.0, 1.0), brightness=0.0, contrast=0.0)
    return params.baseline.model_copy(update={
        "backbone": backbone, "input_size": {backbone: size} if size else {}, "epochs": epochs,
        "batch_size": 8, "learning_rate": lr, "optimizer": "adamw", "scheduler": "none", "patience": epochs,
        "monitor": "val_balanced_accuracy", "device": "cpu", "precision": "fp32", "augment": still,
        "bn_refresh": bn_refresh})


def _trains_and_beats_chance(params, stripe_sets, backbone: str) -> None:
    train, val, test = stripe_sets
    cfg = _recipe(params, backbone)
    result = train_classifier(cfg, train, val, classes=CLASSES, channels=1, image_size=SIZE, seed=0)
    assert len(result.history) == cfg.epochs  # 3 steps per epoch: many optimiser steps, not one
    assert result.history["train_loss"].iloc[-1] < result.history["train_loss"].iloc[0]
    proba = predict_proba(result.model, load_images(test["path"].tolist(), 1, SIZE))
    y = np.array([CLASSES.index(lbl) for lbl in test["label"]])
    acc = balanced_accuracy(y, proba.argmax(1))
    # 16 held-out images: ≥ 0.75 by guessing has probability < 4 %, and the seed is fixed
    assert acc >= 0.75, f"{backbone}: held-out balanced accuracy {acc:.2f} (chance 0.5)"


@pytest.mark.parametrize("backbone", ["custom_cnn", "resnet18"])
def test_backbone_trains_and_beats_chance(params, stripe_sets, backbone):
    _trains_and_beats_chance(params, stripe_sets, backbone)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet50", "vgg19", "vit_b_16", "inception_v3"])
def test_big_backbone_trains_and_beats_chance(params, stripe_sets, backbone):
    _trains_and_beats_chance(params, stripe_sets, backbone)
