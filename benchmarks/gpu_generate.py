"""GPU benchmark: synthloop's generate path vs a naive diffusers loop, SD1.5 architecture, 512², 30 steps, CFG 8.

The model is Stable Diffusion 1.5's architecture built from its configs with random weights (nothing is
downloaded): the FLOPs, memory traffic and kernels are those of SD1.5, the pictures are noise. Reported:
images/s of ``tasks.generate`` (the stage's shard path: batched, shared text embeddings, channels_last, SDPA,
fp16/bf16, writer pool) and of a naive loop calling the same pipeline once per image, their ratio, and the
model-FLOP utilisation: images/s x 50.7 TFLOP per image / the GPU's dense bf16 peak (H100 SXM: 989 TFLOP/s,
a ceiling of about 19.5 images/s). Goal on one H100: >= 9 images/s and >= 4x naive.

Usage:  python benchmarks/gpu_generate.py [--images 256] [--naive-images 8] [--batch-size 16] [--precision fp16]
Without CUDA it prints why and exits with status 2 (nothing measured). ``--smoke`` runs the same code on the CPU
with the embedded tiny model at 32², 2 steps (the test suite runs it so the script does not rot between GPU
sessions); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tasks  # noqa: E402,F401  (torchvision guard before diffusers)
from tasks.params import Params, parse_params  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TFLOP_PER_IMAGE = 50.7  # SD1.5, 512², 30 steps with CFG (UNet x 60 evaluations + text encoder + VAE decode)
CLASSES = ("small", "big")


def sd15_pipeline(dtype) -> object:
    """StableDiffusionPipeline with SD1.5's UNet/VAE/CLIP-L text encoder configs and random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tasks.diffusion.tiny import SD15_SCHEDULER, build_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215)
    tokenizer = build_tokenizer()  # offline tokenizer; CLIP-L's width/depth are what cost compute
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return pipe.to(dtype=dtype)


def make_params(root: Path, args: argparse.Namespace) -> Params:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["generate"].update(num_images=args.images, num_inference_steps=args.steps, guidance_scale=8.0,
                            image_size=args.size, batch_size=args.batch_size, shard_size=args.shard_size,
                            precision=args.precision, scheduler="ddim", engine="local", grid_per_class=4)
    data["paths"] = {k: str(root / v) for k, v in data["paths"].items()}
    return parse_params(data, "gpu benchmark params")


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_naive(model: Path, args: argparse.Namespace, dtype, device: str) -> float:
    """One pipeline call per image (prompt in, PIL out), the way the diffusers docs show it."""
    import torch

    from tasks.diffusion.pipeline import load_pipeline

    pipe = load_pipeline(model, dtype=dtype, device=device)
    pipe.set_progress_bar_config(disable=True)
    pipe(CLASSES[0], num_inference_steps=2, guidance_scale=8.0, height=args.size, width=args.size)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for i in range(args.naive_images):
        pipe(f"photo of zwx {CLASSES[i % 2]} hip xray", num_inference_steps=args.steps, guidance_scale=8.0,
             height=args.size, width=args.size, generator=torch.Generator("cpu").manual_seed(i)).images[0].save(
            model.parent / f"naive-{i}.png")
    _sync(device)
    seconds = time.perf_counter() - start
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--naive-images", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--precision", default="fp16", choices=["fp16", "bf16"])
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16/fp16 peak of the GPU")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model: checks the script, measures nothing")
    args = ap.parse_args(argv)
    args.steps, args.size = (2, 32) if args.smoke else (30, 512)

    import torch

    if args.smoke:
        device, name, args.precision, dtype = "cpu", "cpu (smoke run: tiny model)", "fp32", torch.float32
    elif not torch.cuda.is_available():
        print("gpu_generate: no CUDA device visible (torch.cuda.is_available() is False); nothing measured. "
              "Run this on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        return 2
    else:
        device, name = "cuda", torch.cuda.get_device_name(0)
        dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    from tasks.generate import run
    from tasks.diffusion.pipeline import save_pipeline
    from tasks.diffusion.tiny import build_tiny_pipeline

    root = Path(tempfile.mkdtemp(prefix="gpu-generate-"))
    try:
        pipe = build_tiny_pipeline(args.size, 0) if args.smoke else sd15_pipeline(dtype)
        model = save_pipeline(pipe, root / "model")
        prompts = root / "prompts.json"
        prompts.write_text(json.dumps({"classes": list(CLASSES),
                                       "instance_prompts": {c: f"photo of zwx {c} hip xray" for c in CLASSES},
                                       "class_prompt": "photo of a hip xray"}))
        naive_s = time_naive(model, args, dtype, device)
        params = make_params(root, args)
        start = time.perf_counter()
        out = run(params, model=model, prompts=prompts, out_dir=root / "generate")
        wall = time.perf_counter() - start
        ips = out.metrics["images_per_second"]  # the shard path only: model load and manifest excluded
        naive_ips = args.naive_images / naive_s
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None
        result = {"device": name, "precision": args.precision,
                  "batch_size": args.batch_size, "images": args.images,
                  "synthloop_images_per_s": round(ips, 2), "synthloop_wall_images_per_s": round(args.images / wall, 2),
                  "naive_images_per_s": round(naive_ips, 2), "speedup": round(ips / naive_ips, 2),
                  "mfu": None if args.smoke else round(ips * TFLOP_PER_IMAGE / args.peak_tflops, 3),
                  "ceiling_images_per_s": round(args.peak_tflops / TFLOP_PER_IMAGE, 1),
                  "peak_memory_gib": peak}
        print(json.dumps(result, indent=2))
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
