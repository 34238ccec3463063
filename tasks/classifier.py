"""The one classifier training implementation, shared by baseline, retrain and evaluate.

Backbones: a small custom CNN (the CPU default, fast at 64²) and torchvision's ResNet18/50, VGG19, ViT-B/16 and
Inception-v3, always built with ``weights=None``; ``baseline.pretrained_weights`` may name a *local* state-dict
file (safetensors, or a ``torch.load(weights_only=True)`` pickle). Every model is wrapped in ``ClassifierNet``,
which takes images in [0, 1] with the data's channel count and does what the backbone needs itself: repeat a
grayscale channel to three, resize to 224 (ViT) / 299 (Inception), normalise. A saved model is therefore
self-contained: ``model.safetensors`` + ``model.json`` (backbone, classes, image size, channels, normalisation,
recipe). Helpers take DataFrames and tensors; only the stages' ``run()`` touch the disk (plus the loaders below,
which the stages call).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tasks.io import atomic_write_bytes, atomic_write_json
from tasks.params import Augment, Baseline, Params
from tasks.stage import StageError
from tasks.validation import validate

log = logging.getLogger(__name__)

#: Input size a backbone needs (others run at the data's size).
BACKBONE_INPUT_SIZE = {"vit_b_16": 224, "inception_v3": 299}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_FILE = "model.safetensors"
META_FILE = "model.json"
HISTORY_FILE = "history.csv"
REGISTERED_MODEL = "synthloop-classifier"


class ModelLoadError(StageError):
    """A model or weights file is missing, unreadable or does not fit the backbone."""


class TrainingDiverged(StageError):
    """The loss became NaN/inf; nothing from that point is saved."""


# ----------------------------------------------------------------------------------------------------- data


def resolve_under(folder: Path, rel: str) -> Path:
    """``folder/rel``, refusing anything (``..``, absolute, symlink) that resolves outside ``folder``."""
    root = Path(folder).resolve()
    path = (root / str(rel)).resolve()
    if not path.is_relative_to(root):
        raise StageError(f"file_name {rel!r} resolves outside {folder}; refusing to read it")
    return path


def read_imagefolder(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    """A caption-stage HF imagefolder as a table ``path,label,weight,source`` (validated by GX)."""
    meta = Path(folder) / "metadata.csv"
    if not meta.is_file():
        raise StageError(f"{meta} not found: run the caption stage first (dvc repro caption)")
    df = pd.read_csv(meta, dtype={"file_name": str, "label": str, "text": str}, keep_default_na=False)
    validate(df, "caption_metadata", classes=classes)
    return pd.DataFrame({"path": [str(resolve_under(folder, f)) for f in df["file_name"]],
                         "label": df["label"].to_numpy(), "weight": 1.0, "source": "real"})


def read_generated(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    """The ``ok`` rows of the generate manifest (``sha256`` kept as text), with an absolute ``path`` column added."""
    manifest = Path(folder) / "manifest.csv"
    if not manifest.is_file():
        raise StageError(f"{manifest} not found: run the generate stage first (dvc repro generate)")
    df = pd.read_csv(manifest, dtype={"file_name": str, "intended_label": str, "status": str, "sha256": str},
                     keep_default_na=False)
    validate(df, "generate_manifest", classes=classes)
    ok = df[df["status"] == "ok"].copy()
    ok["path"] = [str(resolve_under(folder, f)) for f in ok["file_name"]]
    return ok.sort_values("file_name", kind="stable").reset_index(drop=True)


def read_corrections(path: Path, classes: Sequence[str]) -> pd.DataFrame:
    """The review stage's ``corrections.csv`` (``sha256`` as text), validated by the ``review_corrections`` suite."""
    path = Path(path)
    if path.is_dir():
        path = path / "corrections.csv"
    if not path.is_file():
        raise StageError(f"{path} not found: run the review stage first (dvc repro review)")
    text = ("file_name", "sha256", "intended_label", "pred_label", "final_label", "decision", "reviewer",
            "timestamp", "note")
    df = pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False)
    validate(df, "review_corrections", classes=classes)
    return df


def reviewed_synthetic(generated: pd.DataFrame, corrections: pd.DataFrame) -> pd.DataFrame:
    """Synthetic training rows ``file_name,label,path``: accepted or corrected items, labelled ``final_label``.

    Rejected items and generated images nobody reviewed are left out; so is a correction for an image that is not
    an ``ok`` generated image (it was filtered after review, or the manifest changed), and one whose ``sha256`` is
    not the manifest's for that file: the label was given to a different picture (the image was regenerated).
    """
    for name, df in (("generate manifest", generated), ("corrections", corrections)):
        if "sha256" not in df:
            raise StageError(f"{name} has no sha256 column: reviewed labels cannot be matched to image content")
    kept = corrections[corrections["decision"].isin(["accept", "correct"])]
    unlabeled = kept["final_label"].fillna("").eq("")
    if unlabeled.any():  # the review_corrections suite forbids this; a hand-made table may not have run it
        raise StageError(f"accepted/corrected items without final_label: {kept.loc[unlabeled, 'file_name'].tolist()[:10]}")
    table = pd.DataFrame({"file_name": kept["file_name"].to_numpy(), "label": kept["final_label"].to_numpy(),
                          "reviewed_sha256": kept["sha256"].fillna("").astype(str).to_numpy()})
    merged = table.merge(generated[["file_name", "path", "sha256"]], on="file_name", how="inner")
    dropped = len(table) - len(merged)
    if dropped:
        log.warning("%d reviewed items are not ok generated images; left out", dropped)
    same = merged["reviewed_sha256"].eq(merged["sha256"].fillna("").astype(str)) & merged["reviewed_sha256"].ne("")
    if not same.all():
        log.warning("%d reviewed items were decided on a different image than the one now at their file name "
                    "(sha256 differs from the generate manifest: regenerated); left out, review them again "
                    "(e.g. %s)", int((~same).sum()), merged.loc[~same, "file_name"].tolist()[:3])
    merged = merged[same].drop(columns=["reviewed_sha256", "sha256"])
    return merged.sort_values("file_name", kind="stable").reset_index(drop=True)


def select_synthetic(synthetic: pd.DataFrame, n_real: int, ratio: float, cap: int | None,
                     seed: int) -> pd.DataFrame:
    """At most ``ratio * n_real`` (and ``cap``) synthetic rows, drawn class-balanced and reproducibly."""
    if ratio > 10:
        log.warning("retrain.synthetic_ratio %.1f is above 10:1, where published gains saturate", ratio)
    limit = math.floor(ratio * n_real)
    if cap is not None:
        limit = min(limit, cap)
    if len(synthetic) <= limit:
        return synthetic.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    # Round-robin over classes (each shuffled) keeps the classes balanced when the limit bites.
    queues = [list(rng.permutation(g.index.to_numpy())) for _, g in synthetic.groupby("label", sort=True)]
    picked: list[int] = []
    while len(picked) < limit:
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return synthetic.loc[sorted(picked)].reset_index(drop=True)


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


# --------------------------------------------------------------------------------------------------- models


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


# --------------------------------------------------------------------------------------------------- losses


class WeightedLoss(nn.Module):
    """Cross-entropy (gamma = 0) or focal loss, with class weights (focal alpha) and per-sample weights.

    Per sample: ``l_i = a[y_i] (1 - p_i)^gamma (-log p_i)``; the batch loss is ``Σ w_i l_i / Σ w_i a[y_i]`` —
    for gamma = 0 and w = 1 exactly ``F.cross_entropy(weight=a)``.
    """

    def __init__(self, gamma: float = 0.0, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -logp
        if self.gamma:
            loss = loss * (1 - logp.exp()).clamp_min(0).pow(self.gamma)
        alpha = self.class_weights[target] if self.class_weights.numel() else torch.ones_like(loss)
        w = alpha if sample_weight is None else alpha * sample_weight
        return (w * loss).sum() / w.sum().clamp_min(1e-12)


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """'balanced' weights n / (k · count_c); a class with no training image is an error, not a silent 0."""
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise StageError(f"classes without training images (indices {np.flatnonzero(counts == 0).tolist()})")
    return torch.tensor(len(labels) / (n_classes * counts), dtype=torch.float32)


# ------------------------------------------------------------------------------------------------- training


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed every RNG and ask torch for deterministic kernels (warn-only: a few CUDA ops have none)."""
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise StageError("baseline.device is 'cuda' but CUDA is not available")
    return torch.device("cuda" if choice in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


@dataclass
class TrainResult:
    """A trained model (best validation epoch restored), its per-epoch history and its meta."""

    model: ClassifierNet
    history: pd.DataFrame
    best_epoch: int
    val_metrics: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)


def _tensors(table: pd.DataFrame, classes: Sequence[str], channels: int, size: int):
    unknown = sorted(set(table["label"]) - set(classes))
    if unknown:
        raise StageError(f"labels {unknown} are not among the classes {list(classes)}")
    y = torch.tensor([classes.index(lbl) for lbl in table["label"]], dtype=torch.long)
    w = torch.tensor(table["weight"].to_numpy(dtype=np.float32) if "weight" in table else np.ones(len(table)),
                     dtype=torch.float32)
    return load_images(table["path"].tolist(), channels, size), y, w


def _optimizer(cfg: Baseline, model: nn.Module) -> torch.optim.Optimizer:
    kw = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), momentum=0.9, nesterov=True, **kw)
    return (torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam)(model.parameters(), **kw)


def _scheduler(cfg: Baseline, opt: torch.optim.Optimizer, epochs: int):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.step_gamma)
    return None


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true``."""
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
    return float(np.mean(recalls)) if recalls else float("nan")


@torch.no_grad()
def predict_proba(model: ClassifierNet, images: torch.Tensor, batch_size: int = 128,
                  device: torch.device | None = None) -> np.ndarray:
    """Softmax probabilities (N×K, float64) for uint8 images N×C×H×W."""
    device = device or next(model.parameters()).device
    model.eval()
    out = [torch.softmax(model(images[i:i + batch_size].to(device).float().div_(255)).float(), dim=1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, model.head.out_features))


def _log_epoch(row: dict[str, float], prefix: str) -> None:
    """Per-epoch metrics to the active MLflow run, if any (mlflow not imported ⇒ no run is open)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def _train_epoch(model, loader, loss_fn, opt, scaler, device, amp_dtype, epoch: int) -> tuple[float, float]:
    model.train()
    total, correct, seen = 0.0, 0, 0
    for step, (x, y, w) in enumerate(loader):
        x, y, w = x.to(device), y.to(device), w.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits, aux = model.forward_train(x)
        loss = loss_fn(logits, y, w)
        if aux is not None:  # Inception-v3's auxiliary classifier, weighted as in its paper
            loss = loss + 0.4 * loss_fn(aux, y, w)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch} step {step}: lower "
                                   "baseline.learning_rate or use baseline.precision: fp32; nothing was saved")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        total += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return total / max(seen, 1), correct / max(seen, 1)


@torch.no_grad()
def _validate(model, images, labels, loss_fn, batch_size, device) -> dict[str, float]:
    proba = predict_proba(model, images, batch_size, device)
    logp = torch.log(torch.from_numpy(proba).float().clamp_min(1e-12))
    # nll on log-probs == cross-entropy on logits; the class weights keep val_loss comparable to train_loss
    loss = float(loss_fn(logp.to(device), labels.to(device)))
    pred = proba.argmax(1)
    y = labels.numpy()
    return {"val_loss": loss, "val_accuracy": float(np.mean(pred == y)),
            "val_balanced_accuracy": balanced_accuracy(y, pred)}


def train_classifier(cfg: Baseline, train: pd.DataFrame, val: pd.DataFrame, *, classes: Sequence[str],
                     channels: int, image_size: int, seed: int, epochs: int | None = None,
                     init_state: dict[str, torch.Tensor] | None = None, metric_prefix: str = "") -> TrainResult:
    """Train one classifier on ``train`` (``path,label[,weight]``); early stopping and best epoch on ``val`` only.

    Deterministic on CPU for a seed (same data → identical weights). Per-epoch train/val loss and accuracy go to
    the history and to the active MLflow run (``step=epoch``).
    """
    classes = list(classes)
    epochs = epochs or cfg.epochs
    with deterministic(seed):
        device = resolve_device(cfg.device)
        x_tr, y_tr, w_tr = _tensors(train, classes, channels, image_size)
        x_va, y_va, _ = _tensors(val, classes, channels, image_size)
        model = build_model(cfg.backbone, len(classes), channels, cfg.pretrained_weights)
        if init_state is not None:
            model.load_state_dict(init_state)
        model.to(device)
        cw = class_weights(y_tr.numpy(), len(classes)) if cfg.class_weights == "balanced" else None
        gamma = cfg.focal_gamma if cfg.loss == "focal" else 0.0
        loss_fn = WeightedLoss(gamma, cw).to(device)
        opt, amp_dtype = _optimizer(cfg, model), _autocast_dtype(cfg.precision, device)
        sched = _scheduler(cfg, opt, epochs)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        # A last batch of one breaks BatchNorm in training mode; drop it only then.
        loader = DataLoader(ImageDataset(x_tr, y_tr, w_tr, build_augment(cfg.augment)), batch_size=cfg.batch_size,
                            shuffle=True, generator=torch.Generator().manual_seed(seed),
                            num_workers=cfg.num_workers, drop_last=len(y_tr) % cfg.batch_size == 1)
        rows, best, best_state, best_epoch, bad = [], None, None, 0, 0
        for epoch in range(1, epochs + 1):
            lr = opt.param_groups[0]["lr"]
            tr_loss, tr_acc = _train_epoch(model, loader, loss_fn, opt, scaler, device, amp_dtype, epoch)
            row = {"epoch": epoch, "train_loss": tr_loss, "train_accuracy": tr_acc,
                   **_validate(model, x_va, y_va, loss_fn, cfg.batch_size, device), "lr": lr}
            rows.append(row)
            _log_epoch(row, metric_prefix)
            if sched is not None:
                sched.step()
            score = -row["val_loss"] if cfg.monitor == "val_loss" else row["val_balanced_accuracy"]
            if best is None or score > best:
                best, best_epoch, bad = score, epoch, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                bad += 1
                if bad >= cfg.patience:
                    log.info("early stop at epoch %d (best %d on %s)", epoch, best_epoch, cfg.monitor)
                    break
        model.load_state_dict(best_state)
    model.cpu().eval()
    history = pd.DataFrame(rows)
    best_row = history.loc[history["epoch"] == best_epoch].iloc[0]
    val_metrics = {k: float(best_row[k]) for k in ("val_loss", "val_accuracy", "val_balanced_accuracy")}
    meta = model_meta(model, backbone=cfg.backbone, classes=classes, channels=channels, image_size=image_size,
                      seed=seed, best_epoch=best_epoch, recipe=cfg.model_dump(mode="json"),
                      n_train=len(train), n_train_synthetic=int((train.get("source") == "synthetic").sum()),
                      val_metrics=val_metrics)
    return TrainResult(model, history, best_epoch, val_metrics, meta)


def train_arm(params: Params, real_train: pd.DataFrame, val: pd.DataFrame, synthetic: pd.DataFrame | None = None,
              *, backbone: str | None = None, seed: int | None = None, metric_prefix: str = "") -> TrainResult:
    """One arm of the comparison with the baseline recipe: real only (``synthetic`` None/empty) or real +
    synthetic (weighted ``retrain.synthetic_weight``; or pretrained on synthetic, then fine-tuned on real)."""
    cfg = params.baseline if backbone is None else params.baseline.model_copy(update={"backbone": backbone})
    seed = params.seed if seed is None else seed
    common = {"classes": params.classes, "channels": params.ingest.channels,
              "image_size": params.ingest.image_size, "seed": seed}
    if synthetic is None or synthetic.empty:
        return train_classifier(cfg, real_train, val, metric_prefix=metric_prefix, **common)
    synth = synthetic.assign(weight=params.retrain.synthetic_weight, source="synthetic")
    if not params.retrain.pretrain_on_synthetic:
        mixed = pd.concat([real_train, synth[real_train.columns.intersection(synth.columns)]], ignore_index=True)
        return train_classifier(cfg, mixed, val, metric_prefix=metric_prefix, **common)
    pre = train_classifier(cfg, synth, val, epochs=params.retrain.pretrain_epochs,
                           metric_prefix=f"{metric_prefix}pretrain_", **common)
    result = train_classifier(cfg, real_train, val, init_state=pre.model.state_dict(),
                              metric_prefix=metric_prefix, **common)
    result.meta.update(pretrained_on_synthetic=len(synth), n_train_synthetic=len(synth))
    return result


def save_result(folder: Path, result: TrainResult) -> None:
    """Model files + ``history.csv`` of a training run."""
    from tasks.io import atomic_write_csv

    save_model(folder, result.model, result.meta)
    atomic_write_csv(Path(folder) / HISTORY_FILE, result.history.round(6))


def register_model(folder: Path, alias: str) -> None:
    """Log the model folder to the active MLflow run and register it with ``alias`` (no-op without a run)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return
    from tasks.tracking import log_model_files

    log_model_files(Path(folder), "model", registered_name=REGISTERED_MODEL, alias=alias)
