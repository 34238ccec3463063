"""The DreamBooth training loop: one run's objects (``Trainer``), the loss, optimizer steps, checkpoints and
validation on schedule. Every random draw is derived from the step number, so a resumed loop continues exactly."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.diffusion.checkpoints import save_checkpoint
from tasks.diffusion.dreambooth_data import TrainData, make_batch, step_seed
from tasks.diffusion.previews import validation_grid, validation_prompts
from tasks.diffusion.training import check_finite, denoising_loss
from tasks.io import save_png_atomic
from tasks.sections_diffusion import Dreambooth

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """The objects of one training run; ``train_loop`` mutates ``step`` and ``losses``."""

    accelerator: Any
    pipe: Any  # holds the unwrapped modules; sampling uses it directly
    trainable: list[Any]  # as prepared by Accelerate (DDP-wrapped under multi-process)
    unet: Any
    text_encoder: Any
    optimizer: Any
    lr_scheduler: Any
    noise_scheduler: Any
    data: TrainData
    cfg: Dreambooth
    seed: int
    out_dir: Path
    fingerprint: dict
    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    channels: int = 3  # ingest.channels: validation grids in the data set's colour mode


def compute_loss(tr: Trainer, batch: dict, micro_step: int) -> Any:
    """Instance loss + prior_loss_weight × class loss (the prior half of the batch, when present)."""
    import torch

    acc = tr.accelerator
    gen = torch.Generator().manual_seed(step_seed(tr.seed, micro_step, acc.process_index, acc.num_processes,
                                                  "noise"))
    embeds = tr.text_encoder(batch["input_ids"].to(acc.device))[0]
    latents = batch["latents"].to(acc.device) * tr.pipe.vae.config.scaling_factor
    losses = denoising_loss(tr.unet, tr.noise_scheduler, latents, embeds, gen, snr_gamma=tr.cfg.snr_gamma,
                            offset_noise=tr.cfg.offset_noise, reduce=False)
    if tr.data.class_means is None:
        return losses.mean()
    inst, prior = losses.chunk(2)
    return inst.mean() + tr.cfg.prior_loss_weight * prior.mean()


def train_step(tr: Trainer) -> float:
    """One optimizer step (gradient_accumulation_steps micro-batches); returns the mean loss."""
    acc, cfg = tr.accelerator, tr.cfg
    values = []
    for k in range(cfg.gradient_accumulation_steps):
        micro = tr.step * cfg.gradient_accumulation_steps + k
        batch = make_batch(tr.data, cfg, tr.seed, micro, acc.process_index, acc.num_processes)
        with acc.accumulate(*tr.trainable), acc.autocast():
            loss = compute_loss(tr, batch, micro)
            values.append(check_finite(acc.reduce(loss.detach(), "mean"), tr.step + 1, "dreambooth"))
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_([p for m in tr.trainable for p in m.parameters() if p.requires_grad],
                                    cfg.max_grad_norm)
            tr.optimizer.step()
            tr.lr_scheduler.step()
            tr.optimizer.zero_grad(set_to_none=True)
    return sum(values) / len(values)


def train_loop(tr: Trainer, caption: Path, run: Any) -> dict[str, float]:
    """Train from ``tr.step`` to ``cfg.steps`` with checkpoints and validation; return headline metrics."""
    from tasks.progress import progress

    cfg, acc = tr.cfg, tr.accelerator
    metrics: dict[str, float] = {}
    start, first = time.perf_counter(), tr.step
    prompts = validation_prompts(caption, cfg)
    bar = progress(total=cfg.steps, initial=tr.step, desc="dreambooth", unit="step",
                   disable=not acc.is_main_process)
    logged = _StepMetrics(run if acc.is_main_process else None)
    try:
        while tr.step < cfg.steps:
            loss = train_step(tr)
            tr.step += 1
            tr.losses.append((tr.step, loss))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            logged.add(tr.step, {"train_loss": loss, "lr": tr.lr_scheduler.get_last_lr()[0]})
            if tr.step % cfg.checkpoint_every == 0 or tr.step == cfg.steps:
                save_checkpoint(acc, tr.out_dir / "checkpoints", tr.step, _trainer_state(tr),
                                cfg.checkpoints_total_limit)
                logged.flush()  # MLflow's history reaches at least as far as the newest checkpoint
            if (tr.step % cfg.validation_every == 0 or tr.step == cfg.steps) and acc.is_main_process:
                metrics.update(validate(tr, prompts, run))
    finally:
        logged.flush()  # a diverged or interrupted run keeps the losses it had
    bar.close()
    seconds = time.perf_counter() - start
    metrics["steps_per_s"] = (tr.step - first) / seconds if seconds > 0 and tr.step > first else 0.0
    metrics["final_loss"] = sum(v for _, v in tr.losses[-20:]) / max(len(tr.losses[-20:]), 1)
    metrics["resumed_from_step"] = float(first)
    return metrics


@dataclass
class _StepMetrics:
    """Per-step metrics for MLflow, sent ``every`` steps in one batch rather than one call per step."""

    run: Any
    every: int = 50
    pending: list[tuple[int, int, dict]] = field(default_factory=list)

    def add(self, step: int, values: dict) -> None:
        if self.run is None:
            return
        self.pending.append((step, int(time.time() * 1000), values))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.run is not None and self.pending:
            self.run.log_metric_steps(self.pending)
        self.pending = []


def _trainer_state(tr: Trainer) -> dict:
    return {"step": tr.step, "losses": tr.losses, "fingerprint": tr.fingerprint}


def validate(tr: Trainer, prompts: list[str], run: Any) -> dict[str, float]:
    """Fixed-seed grid (a row per class) → ``validation/step-<step>.png`` and MLflow; returns its metrics."""
    import torch

    with torch.no_grad(), _eval_mode(tr.trainable), tr.accelerator.autocast():
        grid, metrics = validation_grid(tr.pipe, prompts, tr.cfg.validation_images, tr.seed, tr.cfg, tr.channels)
    name = f"step-{tr.step:06d}.png"
    save_png_atomic(grid, tr.out_dir / "validation" / name)
    if metrics["validation_flagged"]:
        log.warning("validation at step %d: %d black/constant/NaN images", tr.step, metrics["validation_flagged"])
    if run is not None:
        run.log_image(grid, f"validation/{name}")
        run.log_metrics(metrics, step=tr.step)
    return metrics


@contextlib.contextmanager
def _eval_mode(modules: list[Any]):
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m in modules:
            m.train()
