"""tasks/diffusion/tiny.py: the tiny pipeline and the offline tokenizer."""

from __future__ import annotations

import pytest
import torch

from tasks.diffusion import tiny


#: Prompts of two unrelated data sets: the tokenizer must round-trip both, with or without their words merged.
PROMPTS = [
    "photo of zwx small hip xray",
    "X-ray of a dog hip, left angle 93.5 degrees, right angle 101.2 degrees",
    "photo of zwx score_3 teat end photo",
    "Zitzenkuppe, Hyperkeratose Grad 2 (rau)",
]


@pytest.mark.parametrize("words", [tiny.BASE_WORDS, tiny.words_of(PROMPTS)], ids=["base", "data set words"])
def test_tokenizer_builds_offline_and_round_trips_any_prompt(words) -> None:
    tok = tiny.build_tokenizer(words)
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids[1:-1]
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == prompt.lower().replace(" ", "")
    assert tok.model_max_length == 77


def test_data_set_words_become_single_tokens_and_base_words_stay() -> None:
    base, own = tiny.build_tokenizer(), tiny.build_tokenizer((*tiny.BASE_WORDS, *tiny.words_of(PROMPTS)))
    prompt = "photo of zwx small hip xray"
    assert len(own(prompt).input_ids) == 2 + 6  # every word one token
    assert len(base(prompt).input_ids) > 2 + 6  # the base knows the scaffolding only: hip/xray go byte by byte
    assert len(base("photo of zwx").input_ids) == 2 + 3
    assert own("zwx").input_ids != own("small").input_ids


def test_words_of_orders_by_frequency_and_skips_digits_and_single_letters() -> None:
    assert tiny.words_of(["teat end, score 3", "teat Teat x 4b"]) == ["teat", "end", "score"]


def test_pipeline_tokenizer_caps_data_set_words() -> None:
    many = [f"w{'abcdefghij'[i % 10]}{'abcdefghij'[i // 10 % 10]}{'abcdefghijklm'[i // 100]}" for i in range(1200)]
    pipe = tiny.build_tiny_pipeline(16, seed=0, words=["teat", *many])
    vocab = pipe.tokenizer.get_vocab()
    assert "teat</w>" in vocab and "photo</w>" in vocab and many[tiny.MAX_WORDS - 2] + "</w>" in vocab
    assert many[tiny.MAX_WORDS] + "</w>" not in vocab  # beyond the cap: left to byte tokens
    assert pipe.text_encoder.config.vocab_size == len(vocab)


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
