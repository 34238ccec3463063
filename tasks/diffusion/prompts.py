"""Prompt text to UNet conditioning: encode prompts, and the ``a | b`` mean-embedding convention."""

from __future__ import annotations

from typing import Any

#: Joins several prompts into one prompt text whose embedding is the mean of theirs (``prompt_embedding``): how a
#: negative prompt names "all the other classes" in prompts.json and in the generate manifest.
PROMPT_SEPARATOR = " | "


def class_prompt(thing: str) -> str:
    """The class prompt of DreamBooth's prior preservation (``photo of a <thing>``): what any image of the data set
    shows, hence also the caption pretrain teaches the base when ``pretrain.caption`` is null."""
    return f"photo of a {thing}"


def encode_prompts(pipe: Any, prompts: list[str]) -> Any:
    """Text-encoder hidden states for ``prompts`` (padded to the tokenizer's max length), as the UNet wants them."""
    import torch

    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(pipe.text_encoder.device)
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def prompt_embedding(pipe: Any, text: str) -> Any:
    """Embedding (1, tokens, dim) of one prompt text; ``a | b`` is the mean of the embeddings of ``a`` and ``b``.

    Each part is encoded alone, so the result never depends on which other prompts share a batch.
    """
    import torch

    parts = text.split(PROMPT_SEPARATOR)
    if len(parts) == 1:
        return encode_prompts(pipe, [text])
    return torch.stack([encode_prompts(pipe, [part]) for part in parts]).mean(dim=0)
