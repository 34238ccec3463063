"""Where the CPU training time of the loop went, side by side in one process: each row times the project's setting
against the one it replaced, on the embedded default's shapes (tiny SD at 64², custom_cnn at 64² grayscale).

* ``adamw``: one tiny-UNet + text-encoder training step at DreamBooth's batch (4 instance + 4 prior) with
  torch's CPU default AdamW (a loop of ~10 small ops over each of ~360 tensors) vs ``fused=True`` (what
  pretrain, dreambooth and the classifiers use);
* ``classifier``: one custom_cnn training step (batch 32) with NCHW vs channels_last inputs and weights
  (what ``train_classifier`` uses);
* ``vae_encode``: the tiny VAE encoding 512 images, NCHW in batches of 256 (before) vs channels_last in batches
  of 64 (pretrain's ``encode_pool``).

Random weights: speed does not depend on them. The threads are the machine's cores (as the stages run).
Usage: ``python benchmarks/bench_train_speed.py [--repeats 5]`` (also ``python -m benchmarks.run train_speed``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tasks  # noqa: E402,F401  (torchvision guard before diffusers)


def _best_ms(step, repeats: int, inner: int) -> float:
    """Best of ``repeats`` timings of ``inner`` calls (ms per call), after two warm-up calls."""
    for _ in range(2):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            step()
        best = min(best, (time.perf_counter() - start) / inner * 1000)
    return best


def adamw_rows(repeats: int) -> dict[str, float]:
    import torch
    from diffusers import DDPMScheduler

    from tasks.diffusion.tiny import SD15_SCHEDULER, build_tiny_pipeline
    from tasks.diffusion.training import denoising_loss

    pipe = build_tiny_pipeline(64, seed=0, words=["small", "big", "hip", "xray"])
    unet, te = pipe.unet.train(), pipe.text_encoder.train()
    noise = DDPMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "set_alpha_to_one"})
    params = [*unet.parameters(), *te.parameters()]
    ids = pipe.tokenizer(["photo of zwx small hip xray"] * 8, padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    latents, gen = torch.randn(8, 4, 16, 16), torch.Generator().manual_seed(0)
    out = {}
    for name, fused in (("loop", False), ("fused", True)):
        opt = torch.optim.AdamW(params, lr=1e-5, fused=fused)

        def step():
            loss = denoising_loss(unet, noise, latents, te(ids)[0], gen)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[f"adamw_{name}_ms"] = _best_ms(step, repeats, 10)
    out["adamw_speedup"] = out["adamw_loop_ms"] / out["adamw_fused_ms"]
    return out


def classifier_rows(repeats: int) -> dict[str, float]:
    import torch

    from tasks.classify.models import build_model

    out = {}
    for name, layout in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        torch.manual_seed(0)
        model = build_model("custom_cnn", 2, 1).to(memory_format=layout).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        x, y = torch.rand(32, 1, 64, 64), torch.randint(0, 2, (32,))
        body = model.body  # ClassifierNet.prepare always hands channels_last on: call the layers directly

        def step():
            logits = model.head(body(((x - 0.5) / 0.5).contiguous(memory_format=layout)))
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        out[f"classifier_{name}_ms"] = _best_ms(step, repeats, 10)
    out["classifier_speedup"] = out["classifier_nchw_ms"] / out["classifier_channels_last_ms"]
    return out


def vae_rows(repeats: int) -> dict[str, float]:
    import torch

    from tasks.diffusion.tiny import build_tiny_pipeline

    vae = build_tiny_pipeline(64, seed=0).vae.eval()
    images = torch.rand(512, 3, 64, 64) * 2 - 1
    out = {}
    for name, layout, batch in (("nchw_256", torch.contiguous_format, 256), ("channels_last_64", torch.channels_last, 64)):
        vae.to(memory_format=layout)

        def encode():
            with torch.no_grad():
                for i in range(0, len(images), batch):
                    vae.encode(images[i:i + batch].contiguous(memory_format=layout)).latent_dist.mean

        out[f"vae_encode_{name}_ms_per_image"] = _best_ms(encode, max(1, repeats // 2), 1) / len(images)
    out["vae_encode_speedup"] = out["vae_encode_nchw_256_ms_per_image"] / out["vae_encode_channels_last_64_ms_per_image"]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per row (the best is kept)")
    args = ap.parse_args(argv or [])
    import torch

    results = {"threads": torch.get_num_threads(), **adamw_rows(args.repeats), **classifier_rows(args.repeats),
               **vae_rows(args.repeats)}
    for key, value in results.items():
        print(f"{key:40s} {value:10.2f}", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
