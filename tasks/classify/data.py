"""Images into tensors for the classifiers: decoding to uint8 in memory, augmentation, the training dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tasks.sections import Augment
from tasks.stage import StageError


def load_images(paths: Sequence[str], channels: int, size: int) -> torch.Tensor:
    """Decode images to a uint8 tensor N×C×size×size (grayscale 'L' or 'RGB'; resized if another size).

    The data sets of this loop are small (hundreds to a few thousand images), so they are held in memory: no
    decoding per epoch, and an identical order of random draws on every run.
    """
    mode = "L" if channels == 1 else "RGB"
    out = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as err:
            raise StageError(f"cannot read image {p}: {err}") from err
        out[i] = torch.from_numpy(arr.reshape(size, size, channels).copy()).permute(2, 0, 1)
    return out


def build_augment(cfg: Augment):
    """transforms.v2 pipeline on float images. Rotation stays small: the label *is* an angle."""
    from torchvision.transforms import v2

    ops: list[Any] = []
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if cfg.max_rotation or cfg.translate or tuple(cfg.scale) != (1.0, 1.0):
        ops.append(v2.RandomAffine(degrees=cfg.max_rotation, translate=(cfg.translate, cfg.translate),
                                   scale=tuple(cfg.scale)))
    if cfg.brightness or cfg.contrast:
        ops.append(v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast))
    return v2.Compose(ops) if ops else None


class ImageDataset(Dataset):
    """uint8 images + label indices + per-sample weights → (float image in [0, 1], label, weight)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, transform=None):
        self.images, self.labels, self.weights, self.transform = images, labels, weights, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255)
        if self.transform is not None:
            x = self.transform(x).clamp_(0, 1)
        return x, self.labels[i], self.weights[i]
