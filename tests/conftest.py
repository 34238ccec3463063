"""Shared fixtures. ``params`` loads the real params.yaml and shrinks it, with every path under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import tasks  # noqa: F401  (arms the torchvision guard and offline defaults before anything imports torch)
from tasks.params import Params, parse_params

REPO = Path(__file__).resolve().parent.parent

# Prefect's ephemeral API server gets 20 s to start by default; on a loaded 2-core CI machine (several pytest-
# started flows, dask workers) that is not always enough, and a timeout there says nothing about our code.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

#: Overrides that make every stage run in seconds on 2 CPU cores.
SHRINK = {
    "phantom": {"per_class": 40, "unlabeled": 64, "image_size": 32},
    "ingest": {"image_size": 32},
    "pretrain": {"steps": 4, "batch_size": 4, "vae_steps": 4, "vae_batch_size": 4, "sample_images": 2,
                 "sample_steps": 2},
    "dreambooth": {"steps": 4, "batch_size": 2, "num_class_images": 4, "checkpoint_every": 2,
                   "validation_every": 4, "validation_images": 2, "inference_steps": 2},
    "generate": {"num_images": 8, "batch_size": 4, "num_inference_steps": 2, "shard_size": 4, "cpu_threads": 1},
    "baseline": {"epochs": 2},
    "evaluate": {"repeats": 2, "curve_repeats": 1, "curve_ratios": [0, 1], "effort_fractions": [0, 1], "workers": 1},
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


@pytest.fixture(scope="session")
def completed_loop(tmp_path_factory: pytest.TempPathFactory):
    """One project (shrunk params) after a whole `synthloop run`, and that run's output.

    Run once per session; tests that start from a finished loop take a ``project.copy_project`` of it and never
    change it, so the pristine project and its first-run output stay checkable.
    """
    from project import make_project, run_loop

    project = make_project(tmp_path_factory.mktemp("loop") / "proj")
    return project, run_loop(project)


@pytest.fixture
def params(tmp_path: Path) -> Params:
    return make_params(tmp_path)


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow and Prefect never touch the developer's stores during tests."""
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    if "mlflow" in sys.modules:
        # mlflow keeps the URI an earlier test set as process state; the environment alone does not reset it.
        sys.modules["mlflow"].set_tracking_uri(uri)
    monkeypatch.delenv("SYNTHLOOP_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    """A persistent local Prefect server (`prefect server start` on 127.0.0.1) — the path users take when a
    flow must outlive one process (pause for review, schedules). Yields its API URL; stopped afterwards."""
    import subprocess
    import sys
    import time
    import urllib.request

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": ""}
    env.pop("PREFECT_API_URL")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError("prefect server exited during start-up")
    else:
        proc.terminate()
        raise RuntimeError("prefect server did not become healthy within 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def manual(tmp_path: Path) -> Params:
    """A project with the review stage's inputs written and ``review.mode: manual`` (a person decides)."""
    from review_fixtures import write_review_inputs

    p = make_params(tmp_path, {"review": {"mode": "manual"}})
    write_review_inputs(p)
    return p
