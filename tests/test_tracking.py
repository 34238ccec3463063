"""MLflow tracking: URI from the environment, nested stage runs under a loop run, params and tags recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tasks import stage as stage_mod
from tasks import tracking


def test_tracking_uri_defaults_to_sqlite_in_project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_stage_runs_nest_under_loop_run_with_params_and_tags(params):
    from mlflow import MlflowClient

    with tracking.loop_run(params, tags={"prefect.flow_run_id": "abc"}) as parent:
        with tracking.stage_run("ingest", params, {"raw": "deadbeef"}) as child:
            child.log_metrics({"n_ok": 3, "flag": True, "name": "x"})
    client = MlflowClient(tracking.tracking_uri())
    run = client.get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["synthloop.stage"] == "ingest"
    assert run.data.tags["synthloop.input.raw"] == "deadbeef"
    assert run.data.params["generate.num_images"] == str(params.generate.num_images)
    assert run.data.metrics == {"n_ok": 3.0}, "only numbers are metrics (bools and strings are not)"
    assert client.get_run(parent.run_id).data.tags["prefect.flow_run_id"] == "abc"


def test_metric_steps_arrive_with_their_steps_and_times_in_batches_of_at_most_1000(params):
    from mlflow import MlflowClient

    rows = [(step, 1_700_000_000_000 + step, {"train_loss": 1.0 / step, "lr": 0.1, "note": "x"})
            for step in range(1, 601)]
    with tracking.stage_run("dreambooth", params) as run:
        run.log_metric_steps(rows)  # 1,200 values: two log_batch calls
    history = MlflowClient(tracking.tracking_uri()).get_metric_history(run.run_id, "train_loss")
    assert sorted((m.step, m.timestamp, m.value) for m in history) == [(s, t, m["train_loss"]) for s, t, m in rows]
    assert len(MlflowClient(tracking.tracking_uri()).get_metric_history(run.run_id, "lr")) == 600


@dataclass(frozen=True)
class _Outputs:
    out: Path
    metrics: dict = field(default_factory=dict)


def test_run_stage_writes_metrics_json_and_mlflow(params, monkeypatch: pytest.MonkeyPatch):
    """The shared stage runner: the stage's metrics go to metrics/<stage>.json and MLflow, same dict."""
    import types

    from mlflow import MlflowClient

    fake = types.SimpleNamespace(run=lambda p, raw, out_dir: _Outputs(out_dir, {"n_ok": 7}))
    monkeypatch.setattr(stage_mod.importlib, "import_module", lambda name: fake)
    stage_mod.run_stage("ingest", params)
    written = json.loads((params.paths.metrics / "ingest.json").read_text())
    assert written["n_ok"] == 7 and written["stage_seconds"] >= 0
    runs = MlflowClient(tracking.tracking_uri()).search_runs(
        [MlflowClient(tracking.tracking_uri()).get_experiment_by_name("synthloop").experiment_id],
        "tags.`synthloop.stage` = 'ingest'")
    assert runs[0].data.metrics["n_ok"] == 7


def test_unknown_stage_is_a_clear_error(params):
    with pytest.raises(stage_mod.StageError, match="unknown stage 'nope'"):
        stage_mod.run_stage("nope", params)


def _runs(client):
    exp = client.get_experiment_by_name("synthloop")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_stage_runs_without_a_flow_share_one_dvc_loop_run_until_it_ends(params, monkeypatch: pytest.MonkeyPatch):
    """Under `dvc repro` (no parent in the environment) stages join one open loop run; a repeated stage or the
    last stage ends it."""
    from mlflow import MlflowClient

    monkeypatch.setenv("SYNTHLOOP_SET", json.dumps(["generate.num_images=4"]))
    for stage in ("phantom", "ingest", "phantom", "evaluate"):
        with tracking.stage_run(stage, params):
            pass
    client = MlflowClient(tracking.tracking_uri())
    runs = _runs(client)
    loops = [r for r in runs if r.data.tags.get("synthloop.loop") == "1"]
    assert [r.data.tags["synthloop.entry"] for r in loops] == ["dvc", "dvc"]
    assert all(client.get_run(r.info.run_id).info.status == "FINISHED" for r in loops), \
        "the first loop ended when phantom repeated, the second when evaluate finished"
    children = {loop.info.run_id: [r.data.tags["synthloop.stage"] for r in runs
                                   if r.data.tags.get("mlflow.parentRunId") == loop.info.run_id] for loop in loops}
    assert list(children.values()) == [["phantom", "ingest"], ["phantom", "evaluate"]]
    first = loops[0]
    assert first.data.params["generate.num_images"] == str(params.generate.num_images)
    assert json.loads(first.data.tags["synthloop.overrides"]) == {"run_set": ["generate.num_images=4"]}


def test_a_failed_stage_does_not_end_the_dvc_loop(params):
    """A stage that failed (or stopped at the review checkpoint) and is re-run stays in the same loop run."""
    from mlflow import MlflowClient

    with tracking.stage_run("phantom", params):
        pass
    with pytest.raises(RuntimeError):
        with tracking.stage_run("ingest", params):
            raise RuntimeError("bad data")
    with tracking.stage_run("ingest", params):
        pass
    runs = _runs(MlflowClient(tracking.tracking_uri()))
    assert len([r for r in runs if r.data.tags.get("synthloop.loop") == "1"]) == 1
    assert len({r.data.tags.get("mlflow.parentRunId") for r in runs if "synthloop.stage" in r.data.tags}) == 1


def test_artifacts_live_beside_the_sqlite_store(params, tmp_path: Path):
    """Not in ./mlruns of the working directory: a test (or a second project) never writes into this checkout."""
    with tracking.stage_run("phantom", params) as run:
        import mlflow

        uri = mlflow.get_artifact_uri()
    assert uri.startswith((tmp_path / "mlruns").as_uri()), uri
    assert run.run_id in uri
