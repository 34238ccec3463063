"""Shared fixtures. ``params`` loads the real params.yaml and shrinks it, with every path under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import tasks  # noqa: F401  (arms the torchvision guard and offline defaults before anything imports torch)
from tasks.params import Params, parse_params

REPO = Path(__file__).resolve().parent.parent

#: Overrides that make every stage run in seconds on 2 CPU cores.
SHRINK = {
    "phantom": {"per_class": 40, "unlabeled": 64, "image_size": 32},
    "ingest": {"image_size": 32},
    "pretrain": {"steps": 4, "batch_size": 4},
    "dreambooth": {"steps": 4, "batch_size": 2, "num_class_images": 4, "checkpoint_every": 2,
                   "validation_every": 4},
    "generate": {"num_images": 8, "batch_size": 4, "num_inference_steps": 2, "shard_size": 4},
    "baseline": {"epochs": 2},
    "evaluate": {"seeds": [0, 1]},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def make_params(root: Path, overrides: dict | None = None) -> Params:
    """Real params.yaml, shrunk by SHRINK and ``overrides``, with paths anchored under ``root``."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data = _merge(_merge(data, SHRINK), overrides or {})
    data["paths"] = {k: str(root / v) for k, v in data["paths"].items()}
    return parse_params(data, "params.yaml (shrunk for tests)")


@pytest.fixture
def params(tmp_path: Path) -> Params:
    return make_params(tmp_path)


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow and Prefect never touch the developer's stores during tests."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("SYNTHLOOP_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
