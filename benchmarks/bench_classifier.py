"""Classifier throughput on CPU: training and inference images/s per backbone at the default image size
(params.yaml ingest.image_size and ingest.channels), each at the input size the model resizes to (ViT-B/16 224,
Inception-v3 299 unless ``@size`` says otherwise). Prints one line per backbone and returns the numbers.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_classifier.py                  # custom_cnn, resnet18
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_classifier.py vit_b_16 vit_b_16@64 resnet50
"""

from __future__ import annotations

import sys
import time

import tasks  # noqa: F401  (arms the torchvision guard)
import torch

from tasks.classify.models import build_model
from tasks.classify.train import WeightedLoss
from tasks.params import load_params

DEFAULT = ("custom_cnn", "resnet18")


def _throughput(backbone: str, size: int, channels: int, input_size: int | None, batch: int = 32,
                steps: int = 10) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(backbone, 2, channels, input_size=input_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = WeightedLoss()
    x, y = torch.rand(batch, channels, size, size), torch.randint(0, 2, (batch,))
    model.train()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            t0 = time.perf_counter()
        logits, aux = model.forward_train(x)
        loss = loss_fn(logits, y) + (0.4 * loss_fn(aux, y) if aux is not None else 0)
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


def main(specs: list[str] | None = None) -> dict:
    """``specs``: backbone names, each optionally ``@input_size``; default custom_cnn and resnet18."""
    p = load_params()
    size, channels = p.ingest.image_size, p.ingest.channels
    print(f"CPU, torch threads={torch.get_num_threads()}, {size}x{size}x{channels}, batch 32")
    results = {}
    for spec in specs or DEFAULT:
        backbone, _, at = spec.partition("@")
        train, infer = _throughput(backbone, size, channels, int(at) if at else None)
        print(f"{spec:14s} train {train:8.1f} img/s   inference {infer:8.1f} img/s")
        results[spec] = {"train_images_per_s": round(train, 1), "inference_images_per_s": round(infer, 1)}
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
