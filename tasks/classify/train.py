"""The one classifier training recipe (baseline, retrain and every evaluation arm use it): losses, the
deterministic training loop with early stopping on the real val split, and prediction."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tasks.classify.data import ImageDataset, augment_batch, build_mix, build_policy, load_images
from tasks.classify.models import ClassifierNet, build_classifier, model_meta
from tasks.progress import progress
from tasks.sections import Augment, Baseline
from tasks.stage import StageError

log = logging.getLogger(__name__)


class TrainingDiverged(StageError):
    """The loss became NaN/inf; nothing from that point is saved."""


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
        """``target``: class indices (N), or soft labels (N×K, from mixup/cutmix: a mixture of the per-class
        losses, and of the class weights)."""
        soft = target if target.dim() == 2 else F.one_hot(target, logits.shape[1]).float()
        logp_all = F.log_softmax(logits.float(), dim=1)
        per_class = -logp_all
        if self.gamma:
            per_class = per_class * (1 - logp_all.exp()).clamp_min(0).pow(self.gamma)
        loss = (soft * per_class).sum(1)
        alpha = soft @ self.class_weights if self.class_weights.numel() else torch.ones_like(loss)
        w = alpha if sample_weight is None else alpha * sample_weight
        return (w * loss).sum() / w.sum().clamp_min(1e-12)


def class_weights(labels: np.ndarray, n_classes: int, *, missing_ok: bool = False) -> torch.Tensor:
    """'balanced' weights n / (k · count_c); a class with no training image is an error, not a silent 0 —
    unless ``missing_ok`` (pretraining on a synthetic set the review emptied of a class: that class gets weight 0,
    which no target ever uses, and the fine-tuning on real images still sees every class)."""
    counts = np.bincount(labels, minlength=n_classes)
    missing = np.flatnonzero(counts == 0).tolist()
    if missing and not missing_ok:
        raise StageError(f"classes without training images (indices {missing})")
    if missing:
        log.warning("training set has no images of class indices %s; their loss weight is 0", missing)
    present = np.maximum(counts, 1)
    return torch.tensor(np.where(counts > 0, len(labels) / ((n_classes - len(missing)) * present), 0.0),
                        dtype=torch.float32)


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


def _tensors(table: pd.DataFrame, classes: Sequence[str], channels: int, size: int, cache: dict | None = None):
    unknown = sorted(set(table["label"]) - set(classes))
    if unknown:
        raise StageError(f"labels {unknown} are not among the classes {list(classes)}")
    y = torch.tensor([classes.index(lbl) for lbl in table["label"]], dtype=torch.long)
    w = torch.tensor(table["weight"].to_numpy(dtype=np.float32) if "weight" in table else np.ones(len(table)),
                     dtype=torch.float32)
    return load_images(table["path"].tolist(), channels, size, cache), y, w


def _optimizer(cfg: Baseline, model: nn.Module) -> torch.optim.Optimizer:
    kw = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), momentum=0.9, nesterov=True, **kw)
    # fused: one kernel for all parameters instead of ~10 small ops per tensor (CPU and CUDA; the per-tensor loop is
    # torch's CPU default and cost a tenth of a training step here)
    return (torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam)(model.parameters(), fused=True, **kw)


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


@dataclass
class _Augmenter:
    """The batch side of augmentation: the light policy (batched) then mixup/cutmix, with the training's RNG."""

    cfg: Augment
    gen: torch.Generator
    mix: Any = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = augment_batch(x.float().div_(255), self.cfg, self.gen)
        if self.mix is not None and len(y) > 1:
            x, y = self.mix(x, y)
        return x, y


def _train_epoch(model, loader, augment: _Augmenter, loss_fn, opt, scaler, device, amp_dtype,
                 epoch: int) -> tuple[float, float]:
    model.train()
    total, correct, seen = 0.0, 0, 0
    for step, (x, y, w) in enumerate(loader):
        x, y, w = x.to(device), y.to(device), w.to(device)
        x, target = augment(x, y)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits, aux = model.forward_train(x)
        loss = loss_fn(logits, target, w)
        if aux is not None:  # Inception-v3's auxiliary classifier, weighted as in its paper
            loss = loss + 0.4 * loss_fn(aux, target, w)
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
def refresh_bn(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Set every BatchNorm's running mean/var to the plain average over ``images`` (uint8 N×C×H×W, in a fixed
    order) of the training-mode batch statistics — what ``torch.optim.swa_utils.update_bn`` does — leaving the
    weights and the momentum as they were. No-op without BatchNorm layers (VGG19, ViT)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    model.train()
    # near-equal chunks of at most ~batch_size: never a last batch of one (BN needs two values per channel)
    for chunk in torch.tensor_split(images, max(1, -(-len(images) // batch_size))):
        model(chunk.to(device).float().div_(255))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.train(was_training)


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
                     init_state: dict[str, torch.Tensor] | None = None, metric_prefix: str = "",
                     image_cache: dict | None = None, missing_classes_ok: bool = False) -> TrainResult:
    """Train one classifier on ``train`` (``path,label[,weight]``); early stopping and best epoch on ``val`` only.

    Deterministic on CPU for a seed (same data → identical weights). Per-epoch train/val loss and accuracy go to
    the history and to the active MLflow run (``step=epoch``). ``image_cache``: decoded images shared between
    trainings on the same files (``load_images``). ``missing_classes_ok``: a class with no training image is
    allowed (pretraining on synthetic images only); otherwise it is an error.
    """
    classes = list(classes)
    epochs = epochs or cfg.epochs
    with deterministic(seed):
        device = resolve_device(cfg.device)
        x_tr, y_tr, w_tr = _tensors(train, classes, channels, image_size, image_cache)
        x_va, y_va, _ = _tensors(val, classes, channels, image_size, image_cache)
        model = build_classifier(cfg, len(classes), channels)
        if init_state is not None:
            model.load_state_dict(init_state)
        model.to(device, memory_format=torch.channels_last)  # the layout ClassifierNet.prepare gives its inputs
        cw = class_weights(y_tr.numpy(), len(classes), missing_ok=missing_classes_ok) if cfg.class_weights == "balanced" else None
        gamma = cfg.focal_gamma if cfg.loss == "focal" else 0.0
        loss_fn = WeightedLoss(gamma, cw).to(device)
        opt, amp_dtype = _optimizer(cfg, model), _autocast_dtype(cfg.precision, device)
        sched = _scheduler(cfg, opt, epochs)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        # A last batch of one breaks BatchNorm in training mode; drop it only then.
        loader = DataLoader(ImageDataset(x_tr, y_tr, w_tr, build_policy(cfg.augment)), batch_size=cfg.batch_size,
                            shuffle=True, generator=torch.Generator().manual_seed(seed),
                            num_workers=cfg.num_workers, drop_last=len(y_tr) % cfg.batch_size == 1)
        augment = _Augmenter(cfg.augment, torch.Generator().manual_seed(seed + 1), build_mix(cfg.augment, len(classes)))
        rows, best, best_state, best_epoch, bad = [], None, None, 0, 0
        # one progress line per epoch at most every SYNTHLOOP_PROGRESS_S (baseline, retrain, evaluate's arms)
        for epoch in progress(range(1, epochs + 1), desc=f"{metric_prefix}train epochs", unit="epoch"):
            lr = opt.param_groups[0]["lr"]
            tr_loss, tr_acc = _train_epoch(model, loader, augment, loss_fn, opt, scaler, device, amp_dtype, epoch)
            if cfg.refreshes_bn():
                refresh_bn(model, x_tr, cfg.batch_size, device)
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
    model.to("cpu", memory_format=torch.contiguous_format).eval()  # plain layout: what save_model and users expect
    history = pd.DataFrame(rows)
    best_row = history.loc[history["epoch"] == best_epoch].iloc[0]
    val_metrics = {k: float(best_row[k]) for k in ("val_loss", "val_accuracy", "val_balanced_accuracy")}
    meta = model_meta(model, backbone=cfg.backbone, classes=classes, channels=channels, image_size=image_size,
                      seed=seed, best_epoch=best_epoch, recipe=cfg.model_dump(mode="json"),
                      n_train=len(train), n_train_synthetic=int((train.get("source") == "synthetic").sum()),
                      val_metrics=val_metrics)
    return TrainResult(model, history, best_epoch, val_metrics, meta)
