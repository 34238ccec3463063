"""The embedded ``tiny`` base model: real diffusers/transformers classes built from small configs.

``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel`` and ``CLIPTokenizer`` at about 1 M UNet parameters,
so a CPU trains it in minutes. The tokenizer is a byte-level BPE built offline from the loop's prompt words and the data set's own.
Saving and loading pipelines lives in ``tasks.diffusion.pipeline``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import tasks  # noqa: F401  (torchvision guard before diffusers imports torchvision)

#: Stable Diffusion 1.x noise schedule; the tiny model uses the same so every sampler setting carries over.
SD15_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

#: Words every tiny tokenizer keeps whole, whatever the data set: the prompt scaffolding the loop itself writes
#: (``photo of <token> <class> <thing>``, ``photo of a <thing>``) and the usual instance tokens. The data set's own
#: words (its classes, ``caption.thing``, template text, user captions) are added per data set by
#: ``tasks.pretrain.prompt_words`` and travel with the pipeline folder (tokenizer/vocab.json, merges.txt).
BASE_WORDS: tuple[str, ...] = (
    "photo", "of", "a", "an", "the", "zwx", "sks", "and", "with", "image", "picture", "class", "label", "view",
)
#: At most this many data-set words become whole tokens (the most frequent first): the embedding table stays small.
MAX_WORDS = 1000


def words_of(texts: Iterable[str]) -> list[str]:
    """Lower-case alphabetic words of ``texts`` (as CLIP's tokenizer splits them), most frequent first, ties in
    first-seen order; digits, punctuation and one-letter words are left to byte tokens."""
    counts = Counter(w for text in texts for w in re.findall(r"[^\W\d_]+", str(text).lower()) if len(w) > 1)
    return [w for w, _ in counts.most_common()]


# --------------------------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def build_bpe(words: Iterable[str] = BASE_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of a CLIP-style byte-level BPE that keeps each of ``words`` as one token.

    The base vocabulary is the 256-symbol byte alphabet, with and without CLIP's end-of-word suffix ``</w>``,
    so any text round-trips; each word adds a left-to-right chain of merges ending in ``<word></w>``.
    """
    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(w.lower() for w in words):
        if not word.isalpha() or len(word) < 2:
            continue
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            pair = (left, right)
            left = left + right
            if pair not in merges:
                merges.append(pair)
                vocab_list.append(left)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    return vocab, merges


def build_tokenizer(words: Iterable[str] = BASE_WORDS) -> Any:
    """A ``CLIPTokenizer`` built offline from ``build_bpe`` (77-token context, as SD)."""
    from transformers import CLIPTokenizer

    vocab, merges = build_bpe(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


# --------------------------------------------------------------------------------------------- tiny model


def tiny_unet_config(image_size: int) -> dict[str, Any]:
    """~1 M-parameter UNet: 3 levels, cross-attention on the two lower levels, latents at image_size / 4."""
    return {
        "sample_size": image_size // 4,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 1,
        "cross_attention_dim": 64,
        "attention_head_dim": 8,
        "norm_num_groups": 16,
    }


def tiny_vae_config(image_size: int) -> dict[str, Any]:
    """3-level KL autoencoder: 3×image_size² → 4×(image_size/4)², small enough to train in a minute on CPU."""
    return {
        "sample_size": image_size,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (16, 32, 64),  # full-resolution convs dominate CPU time: keep the first level thin
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "scaling_factor": 1.0,
    }


def tiny_text_config(vocab_size: int, bos: int, eos: int) -> dict[str, Any]:
    """2-layer, 64-wide CLIP text encoder (hidden size = the UNet's cross_attention_dim)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }


def build_tiny_pipeline(image_size: int, seed: int, words: Iterable[str] = ()) -> Any:
    """A randomly initialised tiny ``StableDiffusionPipeline`` (fp32, CPU), deterministic in ``seed``; its tokenizer
    keeps ``BASE_WORDS`` and then ``words`` (the data set's, at most ``MAX_WORDS``) as whole tokens."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if image_size % 8 or image_size < 16:
        raise ValueError(f"tiny pipeline needs image_size a multiple of 8 and >= 16, got {image_size}")
    tokenizer = build_tokenizer((*BASE_WORDS, *[w for w in words if w not in BASE_WORDS][:MAX_WORDS]))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(image_size))
    vae = AutoencoderKL(**tiny_vae_config(image_size))
    text_cfg = CLIPTextConfig(**tiny_text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    text_encoder = CLIPTextModel(text_cfg)
    scheduler = DDIMScheduler(**SD15_SCHEDULER)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
