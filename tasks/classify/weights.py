"""Initial weights for the classifier backbones from local files: read safely, fitted to the backbone, reported.

``baseline.pretrained_weights`` names a file per backbone (e.g. torchvision's ``resnet18-f37072fd.pth``, copied
from a machine with internet). Nothing is downloaded. A file is either ``.safetensors`` (no code can run while
reading it) or a ``.pt``/``.pth`` pickle read with ``torch.load(weights_only=True)``, which refuses any pickle that
holds more than tensors and plain containers.

Fitting a file to a backbone:

- the classifier head (``fc``, ``classifier.6``, ``heads.head``, Inception's ``fc`` and ``AuxLogits.fc``) is never
  loaded: it is rebuilt for the data set's classes, and the skipped keys are reported;
- grayscale data (``ingest.channels: 1``) with RGB weights: the first convolution's weights are summed over the
  three input channels — for a gray image copied to R, G and B the RGB filter's response is exactly that of the
  summed filter, so the stem keeps what it learned at a third of the cost;
- ViT-B/16 at another input size than the file's: the position embeddings are interpolated (bicubic) to the new
  patch grid (torchvision's ``interpolate_embeddings``);
- anything else that differs (a missing or extra key, another shape) is an error naming the first such keys.

May import core modules only (``tasks.stage``, ``tasks.io``); ``models`` builds on it.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.io import sha256_file
from tasks.sections import WEIGHT_SUFFIXES
from tasks.stage import StageError

log = logging.getLogger(__name__)

#: Per backbone: the classifier head's key prefixes (rebuilt for the data's classes, never loaded) and the first
#: convolution (adapted to the data's channel count).
HEAD_PREFIXES = {"custom_cnn": (), "resnet18": ("fc.",), "resnet50": ("fc.",), "vgg19": ("classifier.6.",),
                 "vit_b_16": ("heads.head.",), "inception_v3": ("fc.", "AuxLogits.fc.")}
STEM_CONV = {"custom_cnn": "blocks.0.0", "resnet18": "conv1", "resnet50": "conv1", "vgg19": "features.0",
             "vit_b_16": "conv_proj", "inception_v3": "Conv2d_1a_3x3.conv"}
VIT_POSITIONS = "encoder.pos_embedding"
#: How many offending keys an error message names.
SHOW_KEYS = 5


class ModelLoadError(StageError):
    """A model or weights file is missing, unreadable or does not fit the backbone."""


@dataclass(frozen=True)
class WeightsReport:
    """What loading a weights file did: kept in the model's meta (``init_weights``) as provenance."""

    path: str
    sha256: str
    loaded: int
    skipped: tuple[str, ...]
    adapted: tuple[str, ...]

    def as_meta(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _first(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOW_KEYS])
    return shown + (f" … ({len(keys)} in all)" if len(keys) > SHOW_KEYS else "")


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict (name → tensor) from a local file: safetensors, or a weights-only pickle (.pt/.pth)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ModelLoadError(f"weights file {path}: unsupported type {path.suffix!r} (use {', '.join(WEIGHT_SUFFIXES)})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelLoadError(
            f"weights file {path} is not a weights-only pickle: torch.load(weights_only=True) refused it, since "
            f"it holds Python objects besides tensors ({str(err).splitlines()[0][:200]}). Re-save only the "
            "model's state_dict(), preferably with safetensors.torch.save_file") from err
    except Exception as err:  # safetensors/pickle raise many types for a corrupt file; all mean the same
        raise ModelLoadError(f"cannot read weights file {path}: {type(err).__name__}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint (e.g. Lightning) wraps the state dict
    return _check_state_dict(state, path)


def _check_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights file {path} does not hold a state dict (name -> tensor) but a "
                             f"{type(state).__name__}")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"weights file {path} is not a state dict (name -> tensor): entries that are not "
                             f"tensors: {_first(bad)}")
    return state


def _adapt_stem(state: dict[str, torch.Tensor], key: str, in_channels: int) -> bool:
    """Sum an RGB stem over its input channels for grayscale data; True if it did."""
    w = state.get(key)
    if w is None or w.ndim != 4 or (w.shape[1], in_channels) != (3, 1):
        return False
    state[key] = w.sum(dim=1, keepdim=True)
    return True


def _resize_positions(state: dict[str, torch.Tensor], target: torch.Tensor, image_size: int) -> bool:
    """Interpolate ViT position embeddings to the model's patch grid; True if it did."""
    pos = state.get(VIT_POSITIONS)
    if pos is None or pos.shape == target.shape:
        return False
    from collections import OrderedDict

    from torchvision.models.vision_transformer import interpolate_embeddings

    try:
        state.update(interpolate_embeddings(image_size, 16, OrderedDict([(VIT_POSITIONS, pos)])))
    except (ValueError, RuntimeError) as err:
        raise ModelLoadError(f"cannot interpolate {VIT_POSITIONS} {tuple(pos.shape)} to {image_size}²: {err}") from err
    return True


def fit_state(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, backbone: str,
              source: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` without the head, checked key by key against ``target``; returns (to load, skipped keys).

    BatchNorm's ``num_batches_tracked`` may be absent (older torchvision files, e.g. ResNet's, lack it).
    """
    head = HEAD_PREFIXES[backbone]
    is_head = lambda k: k.startswith(head)  # noqa: E731
    skipped = [k for k in state if is_head(k)]
    missing = [k for k in target if k not in state and not is_head(k) and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in target and not is_head(k)]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in state
              if k in target and not is_head(k) and state[k].shape != target[k].shape]
    problems = [f"{len(missing)} keys of the backbone are missing: {_first(missing)}" if missing else "",
                f"{len(extra)} keys are not in the backbone: {_first(extra)}" if extra else "",
                f"{len(shapes)} shapes differ (file vs backbone): {_first(shapes)}" if shapes else ""]
    problems = [p for p in problems if p]
    if problems:
        raise ModelLoadError(f"weights file {source} does not fit the {backbone} backbone (is it a {backbone} "
                             f"state dict?): " + "; ".join(problems))
    return {k: v for k, v in state.items() if not is_head(k)}, skipped


def load_initial_weights(module: torch.nn.Module, path: Path, *, backbone: str, in_channels: int,
                         image_size: int | None = None) -> WeightsReport:
    """Load ``path`` into ``module`` (a backbone built for ``in_channels``, head not yet replaced), in place."""
    state = dict(load_state_file(path))
    target = module.state_dict()
    adapted = []
    if _adapt_stem(state, f"{STEM_CONV[backbone]}.weight", in_channels):
        adapted.append(f"{STEM_CONV[backbone]}.weight summed over RGB for 1-channel input")
    if backbone == "vit_b_16" and VIT_POSITIONS in target and image_size and \
            _resize_positions(state, target[VIT_POSITIONS], image_size):
        adapted.append(f"{VIT_POSITIONS} interpolated to {image_size}²")
    fitted, skipped = fit_state(state, target, backbone=backbone, source=Path(path))
    module.load_state_dict(fitted, strict=False)  # strict on everything but the head: fit_state checked the rest
    report = WeightsReport(str(path), sha256_file(path), len(fitted), tuple(skipped), tuple(adapted))
    log.info("initial %s weights from %s: %d tensors loaded; head rebuilt for the data's classes (skipped: %s)%s",
             backbone, path, report.loaded, ", ".join(skipped) or "none",
             "".join(f"; {a}" for a in adapted))
    return report
