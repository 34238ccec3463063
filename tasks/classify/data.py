"""Images into tensors for the classifiers: decoding to uint8 in memory (with an optional cache shared by the
trainings of one process), augmentation (per-sample strong policy, batched light policy, mixup/cutmix), the
training dataset."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tasks.sections import Augment
from tasks.stage import StageError


def image_tensor(im: Image.Image, mode: str, size: int, channels: int) -> torch.Tensor:
    """One picture as the classifier's uint8 ``(channels, size, size)`` tensor (converted, resized bilinearly)."""
    im = im.convert(mode)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.reshape(size, size, channels).copy()).permute(2, 0, 1)


def load_images(paths: Sequence[str], channels: int, size: int,
                cache: dict[tuple[str, int, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Decode images to a uint8 tensor N×C×size×size (grayscale 'L' or 'RGB'; resized if another size).

    The data sets of this loop are small (hundreds to a few thousand images), so they are held in memory: no
    decoding per epoch, and an identical order of random draws on every run. ``cache`` (owned by the caller, e.g.
    evaluate, which trains dozens of times on the same files) keeps decoded images by (path, channels, size).
    """
    mode = "L" if channels == 1 else "RGB"
    out = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        key = (str(p), channels, size)
        if cache is not None and key in cache:
            out[i] = cache[key]
            continue
        try:
            with Image.open(p) as im:
                out[i] = image_tensor(im, mode, size, channels)
        except (OSError, ValueError) as err:
            raise StageError(f"cannot read image {p}: {err}") from err
        if cache is not None:
            cache[key] = out[i].clone()
    return out


def build_policy(cfg: Augment):
    """The per-sample strong policy (transforms.v2 on uint8 images), or None for ``policy: none``.

    TrivialAugmentWide / RandAugment are generic: their rotations and shears can be larger than this data's label
    tolerates, which is part of what the ``real+augment`` control arm measures.
    """
    from torchvision.transforms import v2

    if cfg.policy == "trivial":
        return v2.TrivialAugmentWide()
    if cfg.policy == "randaugment":
        return v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude)
    return None


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device="cpu").to(device) * (high - low) + low


def augment_batch(x: torch.Tensor, cfg: Augment, gen: torch.Generator) -> torch.Tensor:
    """The light policy on a float batch in [0, 1], one random draw per image, as a few batched tensor ops.

    Per-sample ``v2.RandomAffine`` in the DataLoader cost more than the model's forward and backward passes on
    CPU (one tiny affine-grid matmul per image); one ``affine_grid``/``grid_sample`` per batch does the same work.
    Draws come from ``gen`` (seeded per training), so a seed gives the same augmentation on every run.
    """
    import torch.nn.functional as F

    n, dev = len(x), x.device
    if cfg.hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.to(dev)[:, None, None, None], x.flip(-1), x)
    if cfg.max_rotation or cfg.translate or tuple(cfg.scale) != (1.0, 1.0):
        angle = torch.deg2rad(_uniform(n, -cfg.max_rotation, cfg.max_rotation, gen, dev))
        scale = _uniform(n, cfg.scale[0], cfg.scale[1], gen, dev)
        shift = _uniform(2 * n, -cfg.translate, cfg.translate, gen, dev).view(n, 2) * 2  # [-1, 1] grid units
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # theta maps output to input coordinates: the inverse of rotate-by-angle, scale, shift
        theta = torch.stack([torch.stack([cos, sin, -shift[:, 0]], 1), torch.stack([-sin, cos, -shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.brightness:
        x = x * _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen, dev)[:, None, None, None]
    if cfg.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, dev)[:, None, None, None] + mean
    return x.clamp_(0, 1)


def build_mix(cfg: Augment, n_classes: int):
    """transforms.v2 MixUp or CutMix on a batch (images, int labels) → (images, soft labels); None for none."""
    from torchvision.transforms import v2

    if cfg.mix == "mixup":
        return v2.MixUp(alpha=cfg.mix_alpha, num_classes=n_classes)
    if cfg.mix == "cutmix":
        return v2.CutMix(alpha=cfg.mix_alpha, num_classes=n_classes)
    return None


class ImageDataset(Dataset):
    """uint8 images + label indices + per-sample weights → (uint8 image, label, weight); ``transform`` is the
    per-sample uint8 policy (the light policy runs batched in the training loop, see ``augment_batch``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, transform=None):
        self.images, self.labels, self.weights, self.transform = images, labels, weights, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i], self.weights[i]
