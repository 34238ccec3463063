"""tasks/diffusion/training.py: image loading, min-SNR weights and the NaN stop shared by pretrain and dreambooth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.diffusion import tiny, training
from tasks.diffusion.training import ImageListError, NonFiniteLoss


def write_image(folder: Path) -> Path:
    """One random 32² grayscale ``pool-0.png`` in ``folder``."""
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(folder / "pool-0.png")
    return folder


def test_load_images_rejects_escaping_and_missing_files(tmp_path: Path) -> None:
    pool = write_image(tmp_path / "pool")
    with pytest.raises(ImageListError, match="outside"):
        training.load_images(pool, ["../secret.png"], 32)
    with pytest.raises(ImageListError, match="does not exist"):
        training.load_images(pool, ["nope.png"], 32)
    x = training.load_images(pool, ["pool-0.png"], 16)
    assert x.shape == (1, 3, 16, 16) and -1 <= x.min() and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1])  # grayscale replicated to the SD VAE's 3 channels


def test_min_snr_weights_cap_low_noise_steps() -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**{k: v for k, v in tiny.SD15_SCHEDULER.items() if k != "set_alpha_to_one"})
    w = training.min_snr_weights(sched, torch.tensor([0, 500, 999]), gamma=5.0)
    assert w[0] < 0.01  # tiny t: SNR is huge, its weight is capped
    assert w[2] == pytest.approx(1.0)  # high noise: SNR < gamma, weight 1
    assert torch.all(w <= 1.0)


def test_check_finite_raises_on_nan() -> None:
    assert training.check_finite(torch.tensor(0.5), 1, "x") == 0.5
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 7"):
        training.check_finite(torch.tensor(float("nan")), 7, "x")
    with pytest.raises(NonFiniteLoss, match="inf"):
        training.check_finite(torch.tensor(float("inf")), 1, "x")
