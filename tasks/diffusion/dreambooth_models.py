"""DreamBooth's trainable models: what is frozen or trained (full or LoRA), in which dtype, the optimizer, and
fusing / saving the LoRA adapters at the end."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from tasks.diffusion.pipeline import PARTIAL_PREFIX
from tasks.sections_diffusion import Dreambooth

log = logging.getLogger(__name__)


def build_models(pipe: Any, cfg: Dreambooth, weight_dtype: Any, seed: int) -> list[Any]:
    """Freeze what is not trained, add LoRA adapters if asked; return the trainable modules (fp32 weights).

    Frozen modules go to ``weight_dtype`` (fp16/bf16 on GPU saves memory); trainable parameters are upcast to
    fp32 because GradScaler cannot unscale fp16 gradients. LoRA's random init is seeded from ``seed`` (peft draws
    from the global RNG, which earlier work in the process has moved).
    """
    import torch

    pipe.vae.requires_grad_(False)
    if pipe.vae.dtype != weight_dtype:
        pipe.vae.to(dtype=weight_dtype)
    pipe.unet.requires_grad_(cfg.mode == "full")
    pipe.text_encoder.requires_grad_(cfg.mode == "full" and cfg.train_text_encoder)
    trainable = [pipe.unet] + ([pipe.text_encoder] if cfg.train_text_encoder else [])
    if cfg.mode == "lora":
        _add_lora(pipe, cfg, seed)
    for module in (pipe.unet, pipe.text_encoder):
        want = torch.float32 if module in trainable and cfg.mode == "full" else weight_dtype
        if module.dtype != want:
            module.to(dtype=want)
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            pipe.text_encoder.gradient_checkpointing_enable()
    return trainable


def _add_lora(pipe: Any, cfg: Dreambooth, seed: int) -> None:
    import torch
    from peft import LoraConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe.unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                                         target_modules=list(cfg.lora_target_modules)))
        if cfg.train_text_encoder:
            from peft import inject_adapter_in_model

            # peft directly: transformers' own add_adapter demands a newer peft than diffusers does.
            te_config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                                   target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
            inject_adapter_in_model(te_config, pipe.text_encoder)
            pipe.text_encoder.peft_config = {"default": te_config}


def make_optimizer(params: list[Any], cfg: Dreambooth, device: Any) -> Any:
    """AdamW; bitsandbytes' 8-bit AdamW when asked and possible (CUDA + bitsandbytes), else a logged fallback."""
    import torch

    kwargs = {"lr": cfg.learning_rate, "weight_decay": cfg.adam_weight_decay}
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb  # noqa: PLC0415
        except ImportError:
            bnb = None
        if bnb is not None and device.type == "cuda":
            return bnb.optim.AdamW8bit(params, **kwargs)
        log.warning("use_8bit_adam needs bitsandbytes and CUDA; using torch AdamW")
    # fused on the CPU too: torch's CPU default loops ~10 small ops over each of ~360 tensors, about 40 ms of a
    # ~100 ms tiny-model step (measured); one fused kernel does the same update
    return torch.optim.AdamW(params, fused=True, **kwargs)


# --------------------------------------------------------------------------------------------- lora outputs


def merge_lora(module: Any) -> None:
    """Fuse peft LoRA layers into their base weights and drop the adapters, so ``module`` saves as a plain model."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in module.modules():
        if isinstance(m, BaseTunerLayer):
            m.merge()
    recurse_remove_peft_layers(module)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(module, attr):
            delattr(module, attr) if attr == "peft_config" else setattr(module, attr, False)


def save_lora(pipe: Any, folder: Path) -> Path:
    """LoRA adapters in diffusers' safetensors layout (``load_lora_weights`` reads them back)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    te_layers = None
    if getattr(pipe.text_encoder, "peft_config", None):
        te_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder))
    tmp = folder.parent / f"{PARTIAL_PREFIX}{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers,
                                              safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
