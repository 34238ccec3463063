"""tasks/diffusion/prompts.py: prompt encoding and the ``a | b`` mean embedding."""

from __future__ import annotations

from tasks.diffusion import prompts, tiny


def test_prompt_embedding_averages_separated_parts() -> None:
    import torch

    pipe = tiny.build_tiny_pipeline(32, 0)
    a, b = (prompts.encode_prompts(pipe, [t]) for t in ("photo of zwx small hip xray", "photo of zwx big hip xray"))
    assert torch.equal(prompts.prompt_embedding(pipe, "photo of zwx small hip xray"), a)
    both = prompts.prompt_embedding(pipe, "photo of zwx small hip xray | photo of zwx big hip xray")
    assert both.shape == a.shape and torch.allclose(both, (a + b) / 2, atol=1e-6)
    assert not torch.allclose(both, a)
