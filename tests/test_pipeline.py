"""The DAG end to end: `dvc repro` in a temp copy of the project, the Prefect flow, and their agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from project import dvc, env_for, make_project

FOUNDATION = ["phantom", "ingest", "caption"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj")


def test_dvc_repro_foundation_then_noop(project: Path):
    first = dvc(project, "repro", "caption")
    for stage in FOUNDATION:
        assert f"Running stage '{stage}'" in first.stdout
        assert (project / "metrics" / f"{stage}.json").exists()
    manifest = (project / "data" / "ingest" / "trainval" / "manifest.csv").read_text()
    assert manifest.count("\n") > 10
    second = dvc(project, "repro", "caption")
    assert "Running stage" not in second.stdout, second.stdout
    assert json.loads(dvc(project, "status", "--json", *FOUNDATION).stdout or "{}") == {}


def test_prefect_flow_runs_stages_and_leaves_dvc_clean(project: Path, monkeypatch: pytest.MonkeyPatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import synthloop_loop

    monkeypatch.chdir(project)
    for key, value in env_for(project).items():
        monkeypatch.setenv(key, value)
    with prefect_test_harness():
        first = synthloop_loop(stages=FOUNDATION)
        assert first == {s: "ran" for s in FOUNDATION}
        assert json.loads(dvc(project, "status", "--json", *FOUNDATION).stdout or "{}") == {}
        assert "Running stage" not in dvc(project, "repro", "caption").stdout
        second = synthloop_loop(stages=FOUNDATION)
        assert second == {s: "skipped" for s in FOUNDATION}, "an up-to-date stage is reported as skipped"


def test_flow_lineage_in_mlflow(project: Path, monkeypatch: pytest.MonkeyPatch):
    """One parent run per loop (Prefect flow-run id, dvc.lock hashes) with a nested run per stage."""
    from mlflow import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import synthloop_loop

    monkeypatch.chdir(project)
    for key, value in env_for(project).items():
        monkeypatch.setenv(key, value)
    with prefect_test_harness():
        synthloop_loop(stages=["phantom", "ingest"])
    client = MlflowClient(env_for(project)["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("synthloop")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("synthloop.loop") == "1"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["prefect.flow_run_id"]
    assert parent.data.tags["dvc.ingest.trainval"], "dvc.lock output hashes are tagged on the loop run"
    children = {r.data.tags["synthloop.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"phantom", "ingest"}
    assert children["ingest"].data.tags["mlflow.source.git.commit"] != "unknown"
    assert children["ingest"].data.metrics, "stage metrics are logged on the nested run"


def test_flow_reports_run_cache_restores_as_cached(project: Path, monkeypatch: pytest.MonkeyPatch):
    """Outputs deleted but DVC's run cache has the stage: restored, reported as Cached (not as work done)."""
    import shutil

    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import synthloop_loop

    monkeypatch.chdir(project)
    for key, value in env_for(project).items():
        monkeypatch.setenv(key, value)
    dvc(project, "repro", "phantom")
    shutil.rmtree(project / "data" / "phantom")
    with prefect_test_harness():
        assert synthloop_loop(stages=["phantom"]) == {"phantom": "cached"}
    assert (project / "data" / "phantom" / "labeled" / "metadata.csv").exists()
