"""baseline: trains on caption train/, early-stops on val/, writes a loadable model."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_classifier import make_caption  # noqa: E402

from tasks import baseline  # noqa: E402
from tasks.classify.models import load_model  # noqa: E402
from tasks.stage import StageError  # noqa: E402


def test_run_writes_model_meta_history_and_learns(params):
    P = params.paths
    make_caption(P.caption, n_train=16, n_val=16)
    p = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 12, "batch_size": 4})})
    out = baseline.run(p, caption=P.caption, out_dir=P.baseline)
    model, meta = load_model(P.baseline)
    assert meta["backbone"] == "custom_cnn" and meta["classes"] == ["small", "big"] and meta["channels"] == 1
    hist = pd.read_csv(out.history)
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(hist.columns)
    assert out.metrics["val_balanced_accuracy"] >= 0.75  # disc size is easy: a broken loop stays at 0.5
    # the kept checkpoint is the best epoch on the monitored validation metric (first best on ties)
    monitored = hist[p.baseline.monitor]
    best = monitored.idxmin() if p.baseline.monitor == "val_loss" else monitored.idxmax()
    assert out.metrics["best_epoch"] == hist.loc[best, "epoch"]
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 2)


def test_run_logs_and_registers_model_in_mlflow(params):
    import mlflow
    from mlflow import MlflowClient

    from tasks.tracking import stage_run

    P = params.paths
    make_caption(P.caption, n_train=8, n_val=8)
    p = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 2})})
    with stage_run("baseline", p) as run:
        baseline.run(p, caption=P.caption, out_dir=P.baseline)
    history = MlflowClient().get_metric_history(run.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    version = MlflowClient().get_model_version_by_alias("synthloop-classifier", "baseline")
    assert version.run_id == run.run_id
    assert mlflow.active_run() is None


def test_run_without_caption_output_is_a_clear_error(params):
    with pytest.raises(StageError, match="run the caption stage first"):
        baseline.run(params, caption=params.paths.caption, out_dir=params.paths.baseline)
