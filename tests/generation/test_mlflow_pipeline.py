"""The DreamBooth pipeline as an MLflow pyfunc: loaded by alias, it renders a class image as generate would."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_params
from tasks.generation.mlflow_pipeline import REGISTERED_PIPELINE, log_pipeline

CLASSES = ["small", "big"]
PROMPTS = {"classes": CLASSES, "instance_prompts": {c: f"photo of zwx {c} hip xray" for c in CLASSES},
           "class_prompt": "photo of a hip xray", "negative_prompts": {"small": "photo of zwx big hip xray",
                                                                        "big": "photo of zwx small hip xray"}}
URI = f"models:/{REGISTERED_PIPELINE}@dreambooth"


@pytest.fixture(scope="module")
def _store(tmp_path_factory: pytest.TempPathFactory):
    """One tracking store for the module, with a tiny random pipeline logged and registered by log_pipeline."""
    import mlflow

    from tasks.diffusion.pipeline import save_pipeline
    from tasks.diffusion.tiny import build_tiny_pipeline

    tmp_path = tmp_path_factory.mktemp("mlflow-pipeline")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    model = save_pipeline(build_tiny_pipeline(32, 0), tmp_path / "model")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS))
    params = make_params(tmp_path)
    mlflow.create_experiment("synthloop", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("synthloop")
    with mlflow.start_run():
        log_pipeline(model, prompts, params)
    return uri, model, params


@pytest.fixture
def logged(_store, monkeypatch: pytest.MonkeyPatch):
    import mlflow

    uri, model, params = _store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return model, params


def test_pipeline_pyfunc_by_alias_renders_the_class_as_generate_does(logged):
    import mlflow

    from tasks.generation.sampling import prepare_pipeline, render_batch

    model_dir, params = logged
    pyfunc = mlflow.pyfunc.load_model(URI)
    out = pyfunc.predict(pd.DataFrame({"label": ["small", "small", "big"], "seed": [3, 3, 4]}),
                         params={"num_inference_steps": 2})
    assert list(out["prompt"]) == [PROMPTS["instance_prompts"][c] for c in ("small", "small", "big")]
    first = Image.open(io.BytesIO(out["image"][0]))
    assert first.size == (32, 32) and first.mode == ("L" if params.ingest.channels == 1 else "RGB")
    assert out["image"][0] == out["image"][1] and out["image"][0] != out["image"][2], "seeded, per row"
    g = params.generate
    row = {"prompt": PROMPTS["instance_prompts"]["small"], "negative_prompt": PROMPTS["negative_prompts"]["small"],
           "seed": 3, "steps": 2, "guidance": g.guidance_scale, "height": 32, "width": 32,
           "channels": params.ingest.channels}
    direct = render_batch(prepare_pipeline(model_dir, g.scheduler, "fp32"), [row])[0]
    expected = (np.nan_to_num(direct).clip(0, 1) * 255).round().astype("uint8")
    assert np.array_equal(np.asarray(first).reshape(expected.shape), expected), "the generate stage's sampling"


def test_pipeline_pyfunc_names_a_bad_row(logged):
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(URI)
    with pytest.raises(Exception, match="row 1: unknown label 'huge'"):
        pyfunc.predict(pd.DataFrame({"label": ["big", "huge"], "seed": [1, 2]}), params={"num_inference_steps": 1})
