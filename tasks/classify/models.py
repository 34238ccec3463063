"""The classifier backbones and their files.

Backbones: a small custom CNN (the CPU default, fast at 64²) and torchvision's ResNet18/50, VGG19, ViT-B/16 and
Inception-v3, always built with ``weights=None``; ``baseline.pretrained_weights`` may name a *local* state-dict
file (safetensors, or a ``torch.load(weights_only=True)`` pickle). Every model is wrapped in ``ClassifierNet``,
which takes images in [0, 1] with the data's channel count and does what the backbone needs itself: repeat a
grayscale channel to three, resize to 224 (ViT) / 299 (Inception), normalise. A saved model is therefore
self-contained: ``model.safetensors`` + ``model.json`` (backbone, classes, image size, channels, normalisation,
recipe).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.io import atomic_write_bytes, atomic_write_json
from tasks.stage import StageError

log = logging.getLogger(__name__)

#: Input size a backbone needs (others run at the data's size).
BACKBONE_INPUT_SIZE = {"vit_b_16": 224, "inception_v3": 299}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
HISTORY_FILE = "history.csv"


class ModelLoadError(StageError):
    """A model or weights file is missing, unreadable or does not fit the backbone."""


def _conv_block(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    # Strided convolution instead of conv + max-pool: CPU max-pool costs as much as all the convolutions here.
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=2, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CustomCNN(nn.Module):
    """Four strided conv blocks and global pooling: ~100k parameters, ~4M MACs at 64² — well under 1 ms per
    training image on one CPU core, so the whole seeds × arms table trains in minutes on a laptop."""

    out_features = 128

    def __init__(self, in_channels: int):
        super().__init__()
        self.blocks = nn.Sequential(_conv_block(in_channels, 16, 5), _conv_block(16, 32), _conv_block(32, 64),
                                    _conv_block(64, 128))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.blocks(x)), 1)


class ClassifierNet(nn.Module):
    """Backbone body (→ penultimate features) + linear head, with the input adaptation built in."""

    def __init__(self, body: nn.Module, head: nn.Module, *, body_channels: int, input_size: int | None,
                 mean: Sequence[float], std: Sequence[float], aux_head: bool = False):
        super().__init__()
        self.body, self.head = body, head
        self.body_channels, self.input_size, self.aux_head = body_channels, input_size, aux_head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.body_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # grayscale X-ray into an RGB backbone: same image on each channel
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and, for Inception-v3 in training mode, its auxiliary logits."""
        out = self.body(self._prepare(x))
        aux = None
        if isinstance(out, tuple):  # torchvision InceptionOutputs(logits=features, aux_logits)
            out, aux = out
        return self.head(out), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (eval mode), e.g. for FID with the frozen baseline."""
        out = self.body(self._prepare(x))
        return out[0] if isinstance(out, tuple) else out


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file: safetensors, or a tensors-only pickle (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors/pickle raise many types for a corrupt file; all mean the same
        raise ModelLoadError(f"cannot read weights file {path}: {type(err).__name__}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights file {path} does not hold a state dict")
    return state


def _load_pretrained(model: nn.Module, path: Path | None) -> None:
    if path is None:
        return
    try:
        model.load_state_dict(load_state_file(path), strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"weights file {path} does not fit the backbone: {err}") from err
    log.info("loaded pretrained backbone weights from %s", path)


def _torchvision_body(name: str, pretrained: Path | None) -> tuple[nn.Module, int]:
    """A torchvision backbone with its classifier replaced by Identity; returns (body, feature size)."""
    from torchvision import models as tvm

    if name in ("resnet18", "resnet50"):
        m = getattr(tvm, name)(weights=None)
        _load_pretrained(m, pretrained)
        n, m.fc = m.fc.in_features, nn.Identity()
    elif name == "vgg19":
        m = tvm.vgg19(weights=None)
        _load_pretrained(m, pretrained)
        n, m.classifier[6] = m.classifier[6].in_features, nn.Identity()
    elif name == "vit_b_16":
        m = tvm.vit_b_16(weights=None, image_size=224)
        _load_pretrained(m, pretrained)
        n, m.heads.head = m.heads.head.in_features, nn.Identity()
    elif name == "inception_v3":
        m = tvm.inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=False)
        _load_pretrained(m, pretrained)
        n, m.fc = m.fc.in_features, nn.Identity()
    else:
        raise StageError(f"unknown backbone {name!r}")
    return m, n


def build_model(backbone: str, n_classes: int, in_channels: int, pretrained: Path | None = None) -> ClassifierNet:
    """The classifier for ``backbone``; normalisation is ImageNet's with pretrained weights, else 0.5/0.5."""
    if backbone == "custom_cnn":
        body = CustomCNN(in_channels)
        _load_pretrained(body, pretrained)
        c = in_channels
        return ClassifierNet(body, nn.Linear(CustomCNN.out_features, n_classes), body_channels=c,
                             input_size=None, mean=(0.5,) * c, std=(0.5,) * c)
    body, n_feat = _torchvision_body(backbone, pretrained)
    aux = backbone == "inception_v3"
    if aux:
        body.AuxLogits.fc = nn.Linear(body.AuxLogits.fc.in_features, n_classes)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if pretrained else ((0.5,) * 3, (0.5,) * 3)
    return ClassifierNet(body, nn.Linear(n_feat, n_classes), body_channels=3,
                         input_size=BACKBONE_INPUT_SIZE.get(backbone), mean=mean, std=std, aux_head=aux)


def model_meta(model: ClassifierNet, *, backbone: str, classes: Sequence[str], channels: int, image_size: int,
               **extra: Any) -> dict[str, Any]:
    """What ``load_model`` needs to rebuild the model, plus provenance (recipe, seed, data sizes)."""
    return {"format": 1, "backbone": backbone, "classes": list(classes), "channels": channels,
            "image_size": image_size, "input_size": model.input_size or image_size,
            "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(), **extra}


def save_model(folder: Path, model: ClassifierNet, meta: dict[str, Any]) -> None:
    """Write ``model.safetensors`` and ``model.json`` atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(Path(folder) / MODEL_FILE, save(state))
    atomic_write_json(Path(folder) / META_FILE, meta)


def load_model(folder: Path) -> tuple[ClassifierNet, dict[str, Any]]:
    """Rebuild a saved model (eval mode, CPU) and its meta; a clear ModelLoadError if anything is wrong."""
    folder = Path(folder)
    meta_path, weights = folder / META_FILE, folder / MODEL_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise ModelLoadError(f"no model in {folder} (need {MODEL_FILE} and {META_FILE}): run its stage first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        model = build_model(meta["backbone"], len(meta["classes"]), int(meta["channels"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{meta_path} is unreadable or incomplete: {err}") from err
    try:
        model.load_state_dict(load_state_file(weights), strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"{weights} does not match the {meta['backbone']} backbone in {META_FILE}: {err}") from err
    model.mean.copy_(torch.tensor(meta["mean"]).view(1, -1, 1, 1))
    model.std.copy_(torch.tensor(meta["std"]).view(1, -1, 1, 1))
    return model.eval(), meta
