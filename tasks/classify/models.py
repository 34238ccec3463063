"""The classifier backbones and their files.

Backbones: a small custom CNN (the CPU default, fast at 64²) and torchvision's ResNet18/50, VGG19, ViT-B/16 and
Inception-v3, always built with ``weights=None``; ``baseline.pretrained_weights`` may name a *local* state-dict
file per backbone (``tasks/classify/weights.py`` reads and fits it). Every model is wrapped in ``ClassifierNet``,
which takes images in [0, 1] with the data's channel count and does what the backbone needs itself:

- channels: the first convolution takes the data's channels. For grayscale data a torchvision stem is built for
  RGB and summed over its three input channels (random or ImageNet weights alike, so a model's layout never
  depends on where its initial weights came from);
- size: images are resized (bilinear, antialiased) to the backbone's input size: ``baseline.input_size`` if set,
  else 224 for ViT-B/16 (position embeddings of a 224 file are interpolated to another size), 299 for
  Inception-v3 (the least its auxiliary classifier takes), the data's size for the others;
- normalisation: ImageNet mean/std (their channel means for grayscale) when ImageNet weights are loaded, 0.5/0.5
  otherwise. Inception-v3 always uses 0.5/0.5: Google's weights were trained on inputs in [-1, 1], and
  torchvision's ``transform_input=True`` only maps ImageNet-normalised input back to exactly that, so normalising
  with 0.5/0.5 and ``transform_input=False`` is the same computation (for one channel too);
- Inception-v3's auxiliary logits: returned by ``forward_train`` in training mode (train.py adds 0.4 × their loss),
  absent in eval mode.

A saved model is self-contained: ``model.safetensors`` + ``model.json`` (backbone, classes, image size, input
size, channels, normalisation, initial weights, recipe).
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

from tasks.classify.weights import STEM_CONV, ModelLoadError, WeightsReport, load_initial_weights, load_state_file
from tasks.io import atomic_write_bytes, atomic_write_json
from tasks.sections import MIN_INPUT_SIZE, NATIVE_INPUT_SIZE, VIT_PATCH, Baseline
from tasks.stage import StageError

__all__ = ["ClassifierNet", "CustomCNN", "ModelLoadError", "build_classifier", "build_model", "load_model",
           "model_meta", "save_model"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
HISTORY_FILE = "history.csv"
#: 2: grayscale torchvision stems take one channel (format 1 repeated the gray channel into an RGB stem).
META_FORMAT = 2


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

    def __init__(self, body: nn.Module, head: nn.Module, *, input_size: int | None, mean: Sequence[float],
                 std: Sequence[float], aux_head: bool = False, init_weights: WeightsReport | None = None):
        super().__init__()
        self.body, self.head = body, head
        self.input_size, self.aux_head, self.init_weights = input_size, aux_head, init_weights
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] at the data's size → the backbone's input: resized to ``input_size``, normalised."""
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        # channels_last: oneDNN's convolutions (and BatchNorm) run ~1.3x faster on NHWC than on NCHW here; weights
        # take the same layout while training (train_classifier), outputs are the same up to float rounding
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and, for Inception-v3 in training mode, its auxiliary logits."""
        out = self.body(self.prepare(x))
        aux = None
        if isinstance(out, tuple):  # torchvision InceptionOutputs(logits=features, aux_logits)
            out, aux = out
        return self.head(out), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (eval mode), e.g. for FID with the frozen baseline."""
        out = self.body(self.prepare(x))
        return out[0] if isinstance(out, tuple) else out


def _gray_stem(model: nn.Module, backbone: str) -> None:
    """Replace an RGB first convolution by a 1-channel one whose weights are the RGB ones summed."""
    parent_name, _, name = STEM_CONV[backbone].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    rgb: nn.Conv2d = getattr(parent, name)
    gray = nn.Conv2d(1, rgb.out_channels, rgb.kernel_size, stride=rgb.stride, padding=rgb.padding,
                     bias=rgb.bias is not None)
    with torch.no_grad():
        gray.weight.copy_(rgb.weight.sum(dim=1, keepdim=True))
        if rgb.bias is not None:
            gray.bias.copy_(rgb.bias)
    setattr(parent, name, gray)


def _torchvision_net(backbone: str, input_size: int | None) -> nn.Module:
    from torchvision import models as tvm

    if backbone in ("resnet18", "resnet50", "vgg19"):
        return getattr(tvm, backbone)(weights=None)
    if backbone == "vit_b_16":
        return tvm.vit_b_16(weights=None, image_size=input_size)
    if backbone == "inception_v3":
        return tvm.inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=False)
    raise StageError(f"unknown backbone {backbone!r}")


def _cut_head(model: nn.Module, backbone: str, n_classes: int) -> int:
    """Replace the ImageNet classifier by Identity (the head lives in ClassifierNet); returns the feature size."""
    if backbone == "vgg19":
        n, model.classifier[6] = model.classifier[6].in_features, nn.Identity()
    elif backbone == "vit_b_16":
        n, model.heads.head = model.heads.head.in_features, nn.Identity()
    else:
        n, model.fc = model.fc.in_features, nn.Identity()
    if backbone == "inception_v3":
        model.AuxLogits.fc = nn.Linear(model.AuxLogits.fc.in_features, n_classes)
    return n


def check_input_size(backbone: str, size: int) -> None:
    """The same rule params apply at load time, for models built in code (a StageError if it does not fit)."""
    if size < MIN_INPUT_SIZE.get(backbone, 1) or (backbone == "vit_b_16" and size % VIT_PATCH):
        raise StageError(f"{backbone} cannot take {size}² input (at least {MIN_INPUT_SIZE[backbone]}"
                         f"{', a multiple of 16' if backbone == 'vit_b_16' else ''})")


def _normalisation(backbone: str, channels: int, imagenet: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not imagenet or backbone in ("custom_cnn", "inception_v3"):
        return (0.5,) * channels, (0.5,) * channels
    if channels == 1:  # the summed stem sees one gray channel: the mean of the RGB statistics
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return IMAGENET_MEAN, IMAGENET_STD


def build_model(backbone: str, n_classes: int, in_channels: int, pretrained: Path | None = None, *,
                input_size: int | None = None) -> ClassifierNet:
    """The classifier for ``backbone`` taking ``in_channels`` images; ``pretrained``: a local weights file.

    ``input_size`` None: the backbone's native size (ViT-B/16 224, Inception-v3 299), the data's for the others.
    """
    if input_size is not None:
        check_input_size(backbone, input_size)
    size = input_size or NATIVE_INPUT_SIZE.get(backbone)
    if backbone == "custom_cnn":
        body: nn.Module = CustomCNN(in_channels)
    else:
        body = _torchvision_net(backbone, size)
        if in_channels == 1:
            _gray_stem(body, backbone)
    report = None
    if pretrained is not None:
        report = load_initial_weights(body, Path(pretrained), backbone=backbone, in_channels=in_channels,
                                      image_size=size)
    n_feat = CustomCNN.out_features if backbone == "custom_cnn" else _cut_head(body, backbone, n_classes)
    mean, std = _normalisation(backbone, in_channels, imagenet=report is not None)
    return ClassifierNet(body, nn.Linear(n_feat, n_classes), input_size=size, mean=mean, std=std,
                         aux_head=backbone == "inception_v3", init_weights=report)


def build_classifier(cfg: Baseline, n_classes: int, in_channels: int) -> ClassifierNet:
    """``build_model`` for a training recipe: its backbone, that backbone's weights file and input size."""
    return build_model(cfg.backbone, n_classes, in_channels, cfg.weights_for(cfg.backbone),
                       input_size=cfg.input_size_for(cfg.backbone))


def model_meta(model: ClassifierNet, *, backbone: str, classes: Sequence[str], channels: int, image_size: int,
               **extra: Any) -> dict[str, Any]:
    """What ``load_model`` needs to rebuild the model, plus provenance (initial weights, recipe, seed, data)."""
    return {"format": META_FORMAT, "backbone": backbone, "classes": list(classes), "channels": channels,
            "image_size": image_size, "input_size": model.input_size or image_size,
            "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
            "init_weights": model.init_weights.as_meta() if model.init_weights else None, **extra}


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
        size = meta.get("input_size")
        if size == meta["image_size"] and meta["backbone"] not in NATIVE_INPUT_SIZE:
            size = None  # ran at the data's size, whatever it is
        model = build_model(meta["backbone"], len(meta["classes"]), int(meta["channels"]), input_size=size)
    except (ValueError, KeyError, TypeError, StageError) as err:
        raise ModelLoadError(f"{meta_path} is unreadable or incomplete: {err}") from err
    try:
        model.load_state_dict(load_state_file(weights), strict=True)
    except RuntimeError as err:
        old = "" if meta.get("format", 1) >= META_FORMAT else \
            f" (saved in model format {meta.get('format', 1)}, before grayscale stems took one channel: re-run its stage)"
        raise ModelLoadError(f"{weights} does not match the {meta['backbone']} backbone in {META_FILE}{old}: "
                             f"{err}") from err
    model.mean.copy_(torch.tensor(meta["mean"]).view(1, -1, 1, 1))
    model.std.copy_(torch.tensor(meta["std"]).view(1, -1, 1, 1))
    return model.eval(), meta
