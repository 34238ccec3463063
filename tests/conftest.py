"""Shared fixtures. ``params`` loads the real params.yaml and shrinks it, with every path under tmp_path."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

import tasks  # noqa: F401  (arms the torchvision guard and offline defaults before anything imports torch)
from tasks.params import Params, parse_params

REPO = Path(__file__).resolve().parent.parent

# Prefect's ephemeral API server gets 20 s to start by default; on a loaded 2-core CI machine (several pytest-
# started flows, dask workers) that is not always enough, and a timeout there says nothing about our code.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Flow runs of the tests never land in the developer's Prefect history (the Makefile points PREFECT_HOME at the
# project), and two pytest-xdist workers never share one Prefect database: each test process gets its own home.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="synthloop-test-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
#: Threads for torch in each test process: the machine's cores shared out over the pytest-xdist workers (`make test`
#: runs two), so two workers' kernels do not spin against each other.
TEST_THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("OMP_NUM_THREADS", TEST_THREADS)

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


#: Tests that start from the session's finished loop (``completed_loop``): pytest-xdist keeps them on one worker,
#: which builds that loop once (``make test`` runs ``--dist loadgroup``).
ON_COMPLETED_LOOP = pytest.mark.xdist_group("completed_loop")


@pytest.fixture(scope="session")
def completed_loop(tmp_path_factory: pytest.TempPathFactory):
    """One project (shrunk params) after a whole `synthloop run`, and that run's output.

    Run once per session; tests that start from a finished loop take a ``project.copy_project`` of it and never
    change it, so the pristine project and its first-run output stay checkable.
    """
    from project import make_project, run_loop

    _built_once_across_workers(tmp_path_factory)
    project = make_project(tmp_path_factory.mktemp("loop") / "proj")
    return project, run_loop(project)


def _built_once_across_workers(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Under pytest-xdist the tests on ``completed_loop`` must share one worker (``ON_COMPLETED_LOOP``): they walk
    one copy of it through the re-run matrix in order. If a second worker asks for it, grouping is broken — say so
    instead of building the loop twice and failing on the order."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    marker = tmp_path_factory.getbasetemp().parent / "completed_loop.built"  # one folder for all workers
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pytest.fail(f"completed_loop was already built by worker {marker.read_text()}: the tests marked "
                    "ON_COMPLETED_LOOP were split over workers. Run with `--dist loadgroup` and a pytest that "
                    "pytest-xdist can group with (pyproject.toml: pytest < 9.2, pytest-dev/pytest-xdist#1386).")
    os.write(fd, worker.encode())
    os.close(fd)


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
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", TEST_THREADS))


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
