"""CPU benchmark of the embedded default generator: pretrain (tiny base on the unlabeled pool) and dreambooth.

Runs the real stages with the real ``params.yaml`` (paths moved to a temp folder): phantom → ingest → caption to
make the inputs (not timed), then ``pretrain.run`` and ``dreambooth.run`` timed end to end. Prints training
steps/s of both and each stage's wall time; the issue's budget on 2 cores is pretrain ≤ ~4 min, dreambooth ≤ ~2 min.

Usage:  OMP_NUM_THREADS=2 python benchmarks/bench_dreambooth.py [--keep DIR]
        python -m benchmarks.run dreambooth
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tasks  # noqa: E402,F401  (torchvision guard before diffusers)
from tasks.params import parse_params  # noqa: E402
from tasks.stage import stage_inputs, stage_output  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _params(root: Path):
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["paths"] = {k: str(root / v) for k, v in data["paths"].items()}
    return parse_params(data, "params.yaml (benchmark paths)")


def _run(params, stage: str):
    import importlib

    module = importlib.import_module(f"tasks.{stage}")
    start = time.perf_counter()
    out = module.run(params, **stage_inputs(params, stage), out_dir=stage_output(params, stage))
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp dir)")
    args = ap.parse_args(argv if argv is not None else [])
    import torch

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-dreambooth-"))
    params = _params(root)
    for stage in ("phantom", "ingest", "caption"):
        _run(params, stage)
    pre, t_pre = _run(params, "pretrain")
    db, t_db = _run(params, "dreambooth")
    result = {
        "torch_threads": torch.get_num_threads(),
        "pretrain_seconds": round(t_pre, 1),
        "pretrain_unet_steps_per_s": round(pre.metrics.get("unet_steps_per_s", 0.0), 2),
        "pretrain_vae_recon_mse": round(pre.metrics.get("vae_recon_mse", 0.0), 4),
        "dreambooth_seconds": round(t_db, 1),
        "dreambooth_steps_per_s": round(db.metrics["steps_per_s"], 2),
        "dreambooth_final_loss": round(db.metrics["final_loss"], 4),
        "validation_class_difference": round(db.metrics.get("validation_class_difference", 0.0), 4),
        "validation_flagged": db.metrics.get("validation_flagged", 0.0),
        "params": {"pretrain": params.pretrain.model_dump(mode="json"),
                   "dreambooth": {k: v for k, v in params.dreambooth.model_dump(mode="json").items()
                                  if k in ("mode", "steps", "batch_size", "learning_rate", "num_class_images")}},
        "outputs": str(root),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
