"""The classifier as a real MLflow model: loaded by alias with mlflow.pyfunc, and served over REST."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import free_port, make_params  # noqa: E402
from fixtures_classifier import disc_image, make_caption  # noqa: E402

from tasks import baseline  # noqa: E402
from tasks.classify.registry import REGISTERED_MODEL, register_model  # noqa: E402

URI = f"models:/{REGISTERED_MODEL}@retrained"


def _png(label: str, seed: int) -> bytes:
    buf = io.BytesIO()
    disc_image(label, 32, np.random.default_rng(seed)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def _store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One tracking store for this module: a tiny classifier trained on the easy disc fixture, registered with
    the aliases baseline (by the stage) and retrained."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow-model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    params = make_params(root, {"baseline": {"epochs": 8, "batch_size": 4}})
    make_caption(params.paths.caption, n_train=16, n_val=16)
    # Artifacts beside the store, not in ./mlruns of the working directory (MLflow's default for sqlite stores).
    mlflow.create_experiment("synthloop", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment("synthloop")
    with mlflow.start_run():
        baseline.run(params, caption=params.paths.caption, out_dir=params.paths.baseline)
    with mlflow.start_run():
        register_model(params.paths.baseline, alias="retrained")
    return uri


@pytest.fixture
def registered(_store: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", _store)
    mlflow.set_tracking_uri(_store)
    return _store


def test_pyfunc_by_alias_predicts_the_class_of_real_images(registered):
    import mlflow

    model = mlflow.pyfunc.load_model(URI)
    inputs = model.metadata.get_input_schema().input_names()
    assert inputs == ["image"]
    assert model.metadata.get_output_schema().input_names() == ["p_small", "p_big", "pred_label"]
    labels = ["small", "big"] * 4
    out = model.predict(pd.DataFrame({"image": [_png(lbl, 100 + i) for i, lbl in enumerate(labels)]}))
    assert list(out["pred_label"]) == labels
    assert np.allclose(out[["p_small", "p_big"]].sum(axis=1), 1.0)
    client = mlflow.MlflowClient()
    versions = {a: client.get_model_version_by_alias(REGISTERED_MODEL, a).version for a in ("baseline", "retrained")}
    assert versions["baseline"] != versions["retrained"], "each registration is its own version"


def test_pyfunc_names_a_row_that_is_not_an_image(registered):
    import mlflow

    model = mlflow.pyfunc.load_model(URI)
    with pytest.raises(Exception, match="row 1 of column 'image' is not a readable image"):
        model.predict(pd.DataFrame({"image": [_png("big", 1), b"not a png"]}))


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_with_the_class(registered, tmp_path: Path):
    port = free_port()
    # `mlflow models serve` execs uvicorn by name: the environment's bin/ must be on PATH, as in an activated venv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", URI, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(port, proc, tmp_path / "serve.log")
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(_png(lbl, 200 + i)).decode()]
                                             for i, lbl in enumerate(["big", "small"])]}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
        assert [row["pred_label"] for row in answer["predictions"]] == ["big", "small"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        log.close()


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow models serve exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow models serve not healthy within {timeout} s:\n{log.read_text()[-3000:]}")
