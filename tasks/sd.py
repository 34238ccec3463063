"""Stable Diffusion plumbing shared by pretrain, dreambooth and generate: build, load, hash, schedulers.

Two kinds of base model go through the same code:

* ``tiny`` — the embedded default: real diffusers/transformers classes (``UNet2DConditionModel``,
  ``AutoencoderKL``, ``CLIPTextModel``, ``CLIPTokenizer``) built from small configs, about 1 M UNet parameters,
  so a CPU trains it in minutes. The tokenizer is a byte-level BPE built offline from the project's prompt words.
* a hub id (``runwayml/stable-diffusion-v1-5``) or a local diffusers folder — loaded with ``from_pretrained``;
  offline when ``HF_HUB_OFFLINE`` is set (the project default, see ``tasks/env.py``).

No training code lives here: this module only knows how to make, load and describe pipelines.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import tasks  # noqa: F401  (torchvision guard before diffusers imports torchvision)
from tasks.io import sha256_file
from tasks.stage import StageError

log = logging.getLogger(__name__)

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

#: Words the tiny tokenizer merges into whole tokens (anything else still tokenizes, byte by byte).
PROMPT_WORDS: tuple[str, ...] = (
    "photo", "of", "a", "an", "the", "zwx", "sks", "hip", "hips", "xray", "x", "ray", "dog", "dogs", "small",
    "big", "medium", "angle", "angles", "norberg", "left", "right", "degrees", "deg", "and", "with", "image",
    "radiograph", "cow", "teat", "cows", "teats", "healthy", "lesion", "grade", "normal", "abnormal", "scan",
    "unlabeled", "class", "label", "ventrodorsal", "view", "pelvis", "joint", "dysplasia", "mild", "severe",
)

#: Component folders of a diffusers SD pipeline: what ``model_hash`` covers.
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

SCHEDULERS = ("ddim", "dpm++", "euler", "pndm")

#: Joins several prompts into one prompt text whose embedding is the mean of theirs (``prompt_embedding``): how a
#: negative prompt names "all the other classes" in prompts.json and in the generate manifest.
PROMPT_SEPARATOR = " | "

#: Prefix of a folder being written (pipeline, checkpoint); a leftover one is a killed write, never loaded.
PARTIAL_PREFIX = ".partial-"


class ModelNotAvailable(StageError):
    """The base model's weights are not where params say (wrong path, or a hub id not in the offline cache)."""


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


def build_bpe(words: tuple[str, ...] = PROMPT_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
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


def build_tokenizer(words: tuple[str, ...] = PROMPT_WORDS) -> Any:
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


def build_tiny_pipeline(image_size: int, seed: int) -> Any:
    """A randomly initialised tiny ``StableDiffusionPipeline`` (fp32, CPU), deterministic in ``seed``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if image_size % 8 or image_size < 16:
        raise ValueError(f"tiny pipeline needs image_size a multiple of 8 and >= 16, got {image_size}")
    tokenizer = build_tokenizer()
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


def save_pipeline(pipe: Any, folder: Path | str) -> Path:
    """Save ``pipe`` as a diffusers folder (safetensors) via a temp sibling + rename, so a kill leaves no half model.

    An existing folder is replaced only after the new one is complete.
    """
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f"{PARTIAL_PREFIX}{folder.name}"
    old = folder.parent / f"{PARTIAL_PREFIX}{folder.name}.old"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------------------------- loading


def _looks_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") != 1 or Path(ref).exists()


def load_pipeline(ref: str | Path, *, dtype: Any = None, device: Any = None, variant: str | None = None) -> Any:
    """Load a ``StableDiffusionPipeline`` from a local diffusers folder or a hub id.

    Hub ids resolve from the local cache when ``HF_HUB_OFFLINE`` is set. ``variant="fp16"`` picks SD1.5's fp16
    weight files. Missing weights raise ``ModelNotAvailable`` naming the reference and the fix.
    """
    from diffusers import StableDiffusionPipeline

    ref_s = str(ref)
    local = isinstance(ref, Path) or _looks_local(ref_s)
    if local and not (Path(ref_s).expanduser() / "model_index.json").is_file():
        raise ModelNotAvailable(
            f"no diffusers pipeline at {ref_s!r} (model_index.json missing). Run the stage that writes it "
            f"(`dvc repro pretrain` / `dvc repro dreambooth`) or point params at a folder saved with "
            f"StableDiffusionPipeline.save_pretrained().")
    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if variant:
        kwargs["variant"] = variant
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(Path(ref_s).expanduser()) if local else ref_s, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelNotAvailable(_missing_message(ref_s, local, variant, err)) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


def _missing_message(ref: str, local: bool, variant: str | None, err: Exception) -> str:
    import os

    if local:
        return (f"could not load the diffusers pipeline in {ref!r}: {err}. The folder is incomplete or corrupt; "
                f"re-create it (`dvc repro` the stage that wrote it).")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "false", "False", "")
    how = (f"download it once on a connected machine with HF_HUB_OFFLINE=0 "
           f"(`huggingface-cli download {ref}` or run the stage with HF_HUB_OFFLINE=0), "
           f"or set the base model to a local folder")
    mode = "offline (HF_HUB_OFFLINE is set) and it is not in the local cache" if offline else "not reachable"
    var = f" (variant={variant!r})" if variant else ""
    return f"base model {ref!r}{var} is {mode}: {err}. Fix: {how}."


def model_hash(folder: Path | str) -> str:
    """Stable content hash of a pipeline folder's model files (component folders + model_index.json).

    Top-level extras such as ``model_card.json`` are left out so writing a card does not change the hash.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ModelNotAvailable(f"model_hash: {folder} is not a diffusers pipeline folder (no model_index.json)")
    h = hashlib.sha256()
    files = [folder / "model_index.json"] + sorted(
        p for c in COMPONENTS if (folder / c).is_dir() for p in (folder / c).rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- sampling


def set_scheduler(pipe: Any, name: str) -> Any:
    """Swap ``pipe.scheduler`` for ``name`` (ddim | dpm++ | euler | pndm), keeping the trained noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    classes = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
               "pndm": PNDMScheduler}
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpm++" else {}
    pipe.scheduler = classes[name].from_config(pipe.scheduler.config, **extra)
    return pipe


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
