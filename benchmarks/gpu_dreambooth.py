"""GPU benchmark of DreamBooth training at SD1.5 scale: steps/s, peak memory, 800-step wall time.

The SD1.5 architecture is built from its config dicts (below) with random weights — no hub access, no download —
so the figures are about compute, not about image quality. Each step does what ``tasks/dreambooth.py`` does on
SD1.5 *without* latent caching (the worst case: the VAE encodes every batch, as diffusers' script does): prior
preservation on (each batch = ``batch`` instance + ``batch`` class images at 512²), VAE encode (frozen, bf16),
CLIP text encode (frozen, bf16), UNet forward/backward under bf16 autocast, fused AdamW step on fp32 trainable
weights. Settings: TF32 matmuls, SDPA attention (diffusers' default AttnProcessor2_0), channels_last UNet.

Usage (on a CUDA machine):
    python benchmarks/gpu_dreambooth.py                      # lora + full, batch 1 2 4
    python benchmarks/gpu_dreambooth.py --modes full --batches 1 --steps 30 --out gpu_dreambooth.json

800-step wall time is extrapolated from the timed steps after warm-up (plus nothing for checkpoints/validation).
Goal from issue 3: 800 steps <= 90 s on one H100.

``--smoke`` runs the same code on the CPU with the SD1.5 configs shrunk (the test suite runs it so the script does
not rot between GPU sessions); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE = {
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "scaling_factor": 0.18215,
}
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
#: ``--smoke``: the same architecture families, shrunk so a CPU runs a step in a second.
SMOKE = {"unet": {"sample_size": 8, "block_out_channels": (32, 32, 64, 64), "cross_attention_dim": 32,
                  "norm_num_groups": 16, "layers_per_block": 1},
         "vae": {"sample_size": 64, "block_out_channels": (16, 16, 32, 32), "norm_num_groups": 16,
                 "layers_per_block": 1},
         "text": {"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "bos_token_id": 998, "eos_token_id": 999, "pad_token_id": 999},
         "resolution": 64}


def configs(smoke: bool) -> tuple[dict, dict, dict, int]:
    """UNet, VAE and text-encoder config dicts and the image resolution (SD1.5's, or shrunk for ``--smoke``)."""
    if not smoke:
        return SD15_UNET, SD15_VAE, SD15_TEXT, 512
    return ({**SD15_UNET, **SMOKE["unet"]}, {**SD15_VAE, **SMOKE["vae"]}, {**SD15_TEXT, **SMOKE["text"]},
            SMOKE["resolution"])


def build(mode: str, device: str, smoke: bool = False):
    """SD1.5-shaped UNet/VAE/text encoder with random weights; trainable weights fp32, frozen ones bf16."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cfg, vae_cfg, text_cfg, _ = configs(smoke)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**vae_cfg).to(device, torch.bfloat16).requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(**text_cfg)).to(device, torch.bfloat16).requires_grad_(False)
    if mode == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False).to(torch.bfloat16)
        unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # fp32 trainable weights under bf16 autocast
    unet.to(device, memory_format=torch.channels_last).train()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear")
    return unet, vae, text, sched


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train_steps(mode: str, batch: int, steps: int, warmup: int, device: str, smoke: bool = False) -> dict:
    """Time ``steps`` optimizer steps after ``warmup``; return steps/s, peak memory and extrapolations."""
    import torch
    import torch.nn.functional as F

    _, vae_cfg, text_cfg, resolution = configs(smoke)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    unet, vae, text, sched = build(mode, device, smoke)
    params = [p for p in unet.parameters() if p.requires_grad]
    lr = 1e-6 if mode == "full" else 1e-4
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, fused=True)
    n = 2 * batch  # prior preservation: instance + class images in every batch
    images = torch.randn(n, 3, resolution, resolution, device=device, dtype=torch.bfloat16)
    ids = torch.randint(0, text_cfg["vocab_size"], (n, 77), device=device)
    alphas = sched.alphas_cumprod.to(device)

    def step() -> None:
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample() * vae_cfg["scaling_factor"]
            embeds = text(ids)[0]
        noise = torch.randn_like(latents, dtype=torch.float32)
        t = torch.randint(0, 1000, (n,), device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * latents.float() + (1 - a).sqrt() * noise).to(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16):
            pred = unet(noisy, t, encoder_hidden_states=embeds).sample
        inst, prior = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3)).chunk(2)
        loss = inst.mean() + prior.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    sps = steps / seconds
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None
    result = {"mode": mode, "batch": batch, "images_per_step": n, "steps_per_s": round(sps, 3),
              "peak_gpu_gib": peak, "wall_800_steps_s": round(800 / sps, 1),
              "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 2)}
    del unet, vae, text, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--smoke", action="store_true", help="CPU, shrunk configs: checks the script, measures nothing")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import tasks  # noqa: F401  (torchvision guard before diffusers)
    import torch

    if args.smoke:
        device, name = "cpu", "cpu (smoke run: shrunk configs, figures mean nothing)"
    elif not torch.cuda.is_available():
        print("gpu_dreambooth: no CUDA device found; this benchmark needs a GPU (run it on an H100/A100 machine). "
              "CPU figures come from benchmarks/bench_dreambooth.py.", file=sys.stderr)
        return 2
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        device, name = "cuda", torch.cuda.get_device_name(0)
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    results = []
    for mode in args.modes:
        for batch in args.batches:
            try:
                r = train_steps(mode, batch, args.steps, args.warmup, device, args.smoke)
            except torch.cuda.OutOfMemoryError:
                r = {"mode": mode, "batch": batch, "error": "out of GPU memory"}
                torch.cuda.empty_cache()
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": name, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
