"""How fast is this machine right now? A speed index to read next to any timing taken on a shared VM.

The best of ``--repeats`` timings (10 steps each, after 5 warm-up steps) of one training step of the embedded
tiny UNet (batch 16, 64² images = 16² latents, 77 random text tokens, fused AdamW) on the machine's cores, as
pretrain and dreambooth run it; and a 1024² fp32 matmul throughput. Lower ms = faster machine. On the 2-core VM of
benchmarks/RESULTS.md it read 137–224 ms within one day: compare stage timings only at similar indices.

Usage: ``python benchmarks/bench_machine.py`` (also ``python -m benchmarks.run machine``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tasks  # noqa: E402,F401  (torchvision guard before diffusers)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="training steps per timing")
    args = ap.parse_args(argv or [])
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from tasks.diffusion.tiny import SD15_SCHEDULER, tiny_unet_config
    from tasks.diffusion.training import denoising_loss

    noise = DDPMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "set_alpha_to_one"})
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny_unet_config(64)).train()
    opt = torch.optim.AdamW(unet.parameters(), 1e-4, fused=True)
    gen = torch.Generator().manual_seed(0)
    latents, embeds = torch.randn(16, 4, 16, 16), torch.randn(16, 77, 64)

    def step() -> None:
        loss = denoising_loss(unet, noise, latents, embeds, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        timings.append((time.perf_counter() - start) / args.steps * 1000)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    gflops = 2 * 1024 ** 3 * 10 / (time.perf_counter() - start) / 1e9
    result = {"threads": torch.get_num_threads(), "unet_step_ms_best": round(min(timings), 1),
              "unet_step_ms_median": round(sorted(timings)[len(timings) // 2], 1), "matmul_gflops": round(gflops, 1)}
    print(f"speed index: tiny-UNet training step {result['unet_step_ms_best']} ms (best of {args.repeats}), "
          f"median {result['unet_step_ms_median']} ms; matmul {result['matmul_gflops']} GFLOP/s; "
          f"{result['threads']} threads", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
