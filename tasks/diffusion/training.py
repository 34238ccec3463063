"""Training idioms shared by pretrain and dreambooth: the denoising loss, NaN stops, Accelerate, image loading.

The denoising loss carries min-SNR weighting and offset noise; ``check_finite`` stops training on a NaN/inf loss
before anything is saved; ``make_accelerator`` resets Accelerate's process-wide state between stages run in one
process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tasks.stage import StageError


class ImageListError(StageError):
    """A training image listed in metadata.csv is missing or lies outside its folder."""


# --------------------------------------------------------------------------------------------- data


def load_images(folder: Path, file_names: list[str], size: int) -> Any:
    """Images under ``folder`` as a float tensor (N, 3, size, size) in [-1, 1]; grayscale is replicated to RGB.

    A ``file_name`` that leaves ``folder`` or does not exist raises ``ImageListError`` naming it.
    """
    import numpy as np
    import torch
    from PIL import Image

    root = folder.resolve()
    arrays = []
    for name in file_names:
        path = (folder / name).resolve()
        if not path.is_relative_to(root):
            raise ImageListError(f"{folder}/metadata.csv: file_name {name!r} points outside {folder}")
        if not path.is_file():
            raise ImageListError(f"{folder}/metadata.csv lists {name!r} but {path} does not exist")
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            arrays.append(np.asarray(im, dtype=np.uint8))
    if not arrays:
        raise ImageListError(f"no images listed in {folder}/metadata.csv")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0


# --------------------------------------------------------------------------------------------- losses


def denoising_loss(unet: Any, noise_scheduler: Any, latents: Any, embeds: Any, generator: Any, *,
                   snr_gamma: float = 0.0, offset_noise: float = 0.0, reduce: bool = True) -> Any:
    """DDPM training loss of ``unet`` on ``latents`` (already scaled), per sample unless ``reduce``.

    ``snr_gamma`` > 0 applies min-SNR-γ weighting (Hang et al. 2023); ``offset_noise`` adds per-channel constant
    noise so the model can learn overall brightness (pure black/white backgrounds). Randomness comes only from
    ``generator`` so a resumed run draws the same noise.
    """
    import torch
    import torch.nn.functional as F

    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
    if offset_noise > 0:
        noise = noise + offset_noise * torch.randn((b, latents.shape[1], 1, 1), generator=generator).to(noise)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
    noisy = noise_scheduler.add_noise(latents.float(), noise, t)
    target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
        noise_scheduler.get_velocity(latents.float(), noise, t)
    pred = unet(noisy.to(latents.dtype), t, encoder_hidden_states=embeds).sample
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma > 0:
        loss = loss * min_snr_weights(noise_scheduler, t, snr_gamma)
    return loss.mean() if reduce else loss


def min_snr_weights(noise_scheduler: Any, timesteps: Any, gamma: float) -> Any:
    """min(SNR, γ) / SNR per timestep (epsilon prediction; v-prediction divides by SNR + 1)."""
    import torch

    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=gamma) / snr
    if noise_scheduler.config.prediction_type == "v_prediction":
        weights = torch.clamp(snr, max=gamma) / (snr + 1)
    return weights.float()


def check_finite(loss: Any, step: int, what: str) -> float:
    """The loss as a float; a NaN/inf raises ``NonFiniteLoss`` (training stops, nothing from here is saved)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLoss(f"{what}: loss is {value} at step {step}; training stopped and nothing from this "
                            f"step was saved. Lower the learning rate, use precision 'no'/bf16 instead of fp16, "
                            f"or check the input images.")
    return value


class NonFiniteLoss(StageError):
    """A NaN/inf training loss."""


# --------------------------------------------------------------------------------------------- accelerate


def make_accelerator(precision: str, gradient_accumulation_steps: int = 1) -> Any:
    """An ``Accelerator`` for this run's precision, CPU when there is no CUDA.

    Accelerate keeps its state in process-wide singletons that refuse a second, different mixed precision;
    stages run one after another in one process (tests, the flow), so the precision/accumulation state is reset
    here. The process group (``PartialState``) is kept: under ``accelerate launch`` it is shared.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=gradient_accumulation_steps,
                       cpu=not torch.cuda.is_available())
