"""Classifier throughput on CPU: training and inference images/s for the custom CNN and ResNet18 at the
default image size (params.yaml ingest.image_size, grayscale). Prints one line per backbone.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_classifier.py
"""

from __future__ import annotations

import time

import tasks  # noqa: F401  (arms the torchvision guard)
import torch

from tasks.classify.models import build_model
from tasks.classify.train import WeightedLoss
from tasks.params import load_params


def _throughput(backbone: str, size: int, channels: int, batch: int = 32, steps: int = 10) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(backbone, 2, channels)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = WeightedLoss()
    x, y = torch.rand(batch, channels, size, size), torch.randint(0, 2, (batch,))
    model.train()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            t0 = time.perf_counter()
        loss = loss_fn(model.forward_train(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = batch * steps / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
    return train, batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = load_params()
    size, channels = p.ingest.image_size, p.ingest.channels
    print(f"CPU, torch threads={torch.get_num_threads()}, {size}x{size}x{channels}, batch 32")
    for backbone in ("custom_cnn", "resnet18"):
        train, infer = _throughput(backbone, size, channels)
        print(f"{backbone:12s} train {train:8.1f} img/s   inference {infer:8.1f} img/s")


if __name__ == "__main__":
    main()
