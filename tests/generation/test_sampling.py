"""Generation sampling: slerp endpoints, and an image's bits depend on its slot, not on the rest of its batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.generation import sampling as S
from tasks.generation.filters import quantise
from tasks.generation.shards import _torch_threads


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight pipeline folder (32²), built once for the module."""
    from tasks.diffusion.pipeline import save_pipeline
    from tasks.diffusion.tiny import build_tiny_pipeline

    return save_pipeline(build_tiny_pipeline(32, 0), tmp_path_factory.mktemp("sampling-model") / "model")


def test_slerp_endpoints():
    import torch

    a, b = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    assert torch.allclose(S.slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(S.slerp(a, b, 1.0), b, atol=1e-5)


def test_image_bits_depend_on_slot_not_on_the_rest_of_the_batch(model):
    pipe = S.prepare_pipeline(model, "ddim", "fp32")
    row = dict(prompt="photo of zwx small hip xray", negative_prompt="", seed=1, steps=2, guidance=8.0,
               height=32, width=32, channels=3)
    others = [dict(row, seed=s, prompt=p) for s, p in ((2, "a"), (3, "b"), (4, "photo"))]
    with _torch_threads(1):
        full = S.render_batch(pipe, [row, *others])
        padded = S.render_batch(pipe, [row] * 4)
    assert np.array_equal(quantise(full[0]), quantise(padded[0]))
    assert np.array_equal(full[0], padded[0])


def test_render_batch_returns_the_data_sets_channels(model):
    pipe = S.prepare_pipeline(model, "ddim", "fp32")
    row = dict(prompt="photo of zwx small hip xray", negative_prompt="", seed=1, steps=2, guidance=8.0,
               height=32, width=32, channels=3)
    with _torch_threads(1):
        rgb, gray = S.render_batch(pipe, [row]), S.render_batch(pipe, [dict(row, channels=1)])
    assert rgb.shape == (1, 32, 32, 3) and gray.shape == (1, 32, 32, 1)
    assert np.allclose(gray[..., 0], rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), atol=1e-6)
