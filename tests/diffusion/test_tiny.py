"""tasks/diffusion/tiny.py: the tiny pipeline and the offline tokenizer."""

from __future__ import annotations

import pytest
import torch

from tasks.diffusion import tiny


PROJECT_PROMPTS = [
    "photo of zwx small hip xray",
    "photo of zwx big hip xray",
    "photo of a hip xray",
    "X-ray of a dog hip",
    "X-ray of a dog hip, left angle 93.5 degrees, right angle 101.2 degrees",
    "X-ray of a dog hip, big hip angle",
]


def test_tokenizer_builds_offline_and_round_trips_prompts() -> None:
    tok = tiny.build_tokenizer()
    for prompt in PROJECT_PROMPTS:
        ids = tok(prompt).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids[1:-1]
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == prompt.lower().replace(" ", "")
    # Project words are single tokens; the instance token is distinct from the class words.
    assert len(tok("photo of zwx big hip xray").input_ids) == 2 + 6
    assert tok("zwx").input_ids != tok("big").input_ids
    assert tok.model_max_length == 77


def test_build_bpe_chains_merges_and_skips_non_words() -> None:
    vocab, merges = tiny.build_bpe(("hip", "x1", "a"))
    assert merges == [("h", "i"), ("hi", "p</w>")]
    assert "hip</w>" in vocab and "<|endoftext|>" in vocab
    assert len(vocab) == len(set(vocab.values()))  # ids are unique


def test_build_tiny_pipeline_is_seeded_and_small() -> None:
    a, b = tiny.build_tiny_pipeline(32, seed=3), tiny.build_tiny_pipeline(32, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.unet.parameters(), b.unet.parameters()))
    assert sum(p.numel() for p in a.unet.parameters()) < 2_000_000
    assert a.unet.config.sample_size * a.vae_scale_factor == 32
    assert a.text_encoder.config.hidden_size == a.unet.config.cross_attention_dim


def test_build_tiny_pipeline_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny.build_tiny_pipeline(30, seed=0)
