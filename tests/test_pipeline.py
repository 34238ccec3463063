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


@pytest.mark.timeout(300)
def test_flow_refuses_a_data_folder_dvc_would_hang_on_before_any_dvc_command(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    """A named pipe in paths.raw makes `dvc status`/`dvc repro` block forever: the flow stops first, naming it."""
    import os

    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import synthloop_loop
    from tasks.stage import StageError

    project = make_project(tmp_path / "proj", overrides={"dataset": {"source": "folder"},
                                                         "review": {"mode": "manual"}, "paths": {"raw": "mine"}})
    (project / "mine" / "a").mkdir(parents=True)
    (project / "mine" / "a" / "x.png").write_bytes(b"x")
    os.mkfifo(project / "mine" / "a" / "pipe.png")
    monkeypatch.chdir(project)
    for key, value in env_for(project).items():
        monkeypatch.setenv(key, value)
    with prefect_test_harness(), pytest.raises(StageError, match=r"a/pipe\.png: named pipe"):
        synthloop_loop(stages=["ingest"])
    assert not (project / "data" / "ingest").exists()


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


def _loops(project: Path):
    from mlflow import MlflowClient

    client = MlflowClient(env_for(project)["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("synthloop").experiment_id],
                              order_by=["attributes.start_time ASC"])
    loops = [r for r in runs if r.data.tags.get("synthloop.loop") == "1"]
    children = {p.info.run_id: {r.data.tags["synthloop.stage"]: r for r in runs
                                if r.data.tags.get("mlflow.parentRunId") == p.info.run_id} for p in loops}
    return loops, children


def test_dvc_repro_lineage_and_an_override_that_leaves_params_yaml_alone(project: Path):
    """`dvc repro` alone: one parent run with nested stage runs (git commit, dvc.lock hashes, params). An override
    in params.local.yaml is seen by DVC (the stage it touches is stale, dvc.lock records the value) and used by
    the stage, a new loop run records it, and params.yaml stays as committed."""
    import subprocess

    import yaml

    dvc(project, "repro", "ingest")
    loops, children = _loops(project)
    assert [p.data.tags["synthloop.entry"] for p in loops] == ["dvc"]
    first = children[loops[0].info.run_id]
    assert set(first) == {"phantom", "ingest"}
    ingest = first["ingest"].data
    assert ingest.tags["mlflow.source.git.commit"] != "unknown" and ingest.tags["dvc.phantom.phantom"]
    assert ingest.params["ingest.image_size"] == "32"

    import sys

    cli = subprocess.run([sys.executable, "-m", "flows.cli", "params", "--set", "phantom.per_class=30"], cwd=project,
                         env=env_for(project), capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["changed"] == {"phantom.per_class": 30}
    stale = json.loads(dvc(project, "status", "--json", "phantom").stdout or "{}")
    assert "phantom" in stale, f"DVC sees the override (params.resolved.yaml): {stale}"
    run = dvc(project, "repro", "ingest")
    assert "Running stage 'phantom'" in run.stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["phantom"]["params"]["params.resolved.yaml"]["phantom"]["per_class"] == 30
    labeled = (project / "data" / "phantom" / "labeled" / "metadata.csv").read_text().count("\n") - 1
    n_classes = len(yaml.safe_load((project / "params.yaml").read_text())["phantom"]["thresholds"]) + 1
    assert labeled == 30 * n_classes, "the stage ran with the override"
    loops, children = _loops(project)
    assert len(loops) == 2, "phantom ran again: a new loop run"
    assert json.loads(loops[1].data.tags["synthloop.overrides"]) == {"local_set": ["phantom.per_class=30"]}
    assert children[loops[1].info.run_id]["phantom"].data.params["phantom.per_class"] == "30"
    git = subprocess.run(["git", "status", "--porcelain", "params.yaml"], cwd=project, capture_output=True, text=True)
    assert git.stdout == "", "params.yaml untouched"


def test_result_markdown_has_the_answer_review_source_and_report_link(params):
    from flows.pipeline import result_markdown

    assert result_markdown(params) is None, "nothing before evaluate wrote the report"
    params.paths.reports.mkdir(parents=True)
    (params.paths.reports / "report.md").write_text("# r\n\nAnswer (custom_cnn, ...): helped.\n\nData: x\n")
    text = result_markdown(params)
    assert "Answer (custom_cnn, ...): helped." in text
    assert f"review.mode: {params.review.mode}" in text
    assert (params.paths.reports / "report.html").resolve().as_uri() in text


def test_flow_run_overrides_reach_the_stage_and_end_with_the_run(project: Path, monkeypatch: pytest.MonkeyPatch):
    """set_params (what a schedule passes): the stage runs with it, MLflow records it, params.yaml is untouched and
    params.resolved.yaml is back to the checkout's own values afterwards."""
    import subprocess

    import yaml
    from mlflow import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import synthloop_loop

    monkeypatch.chdir(project)
    for key, value in env_for(project).items():
        monkeypatch.setenv(key, value)
    with prefect_test_harness(server_startup_timeout=180):  # a loaded 2-core machine needs more than 30 s
        assert synthloop_loop(set_params=["phantom.per_class=12"], stages=["phantom"]) == {"phantom": "ran"}
    labeled = (project / "data" / "phantom" / "labeled" / "metadata.csv").read_text().count("\n") - 1
    assert labeled % 12 == 0 and labeled < 40, "the stage ran with the run's override"
    client = MlflowClient(env_for(project)["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("synthloop").experiment_id])
    loop = next(r for r in runs if r.data.tags.get("synthloop.loop") == "1")
    assert loop.data.tags["synthloop.entry"] == "prefect"
    assert json.loads(loop.data.tags["synthloop.overrides"]) == {"run_set": ["phantom.per_class=12"]}
    resolved = yaml.safe_load((project / "params.resolved.yaml").read_text())
    assert resolved["phantom"]["per_class"] == 40, "re-resolved without the run's overrides"
    assert "phantom" in json.loads(dvc(project, "status", "--json", "phantom").stdout or "{}"), \
        "so DVC now says phantom differs from what the checkout's params would produce"
    git = subprocess.run(["git", "status", "--porcelain", "params.yaml"], cwd=project, capture_output=True, text=True)
    assert git.stdout == ""


def test_a_pool_stage_gets_the_loop_runs_overrides(monkeypatch: pytest.MonkeyPatch):
    """A worker sees no SYNTHLOOP_SET of the loop's process: run_on_pool hands the overrides over as a parameter."""
    import types

    import flows.pools as pools
    from tasks.overrides import RUN_ENV

    sent = {}

    def fake_run_deployment(name, parameters, timeout):
        sent.update(name=name, parameters=parameters)
        return types.SimpleNamespace(state=types.SimpleNamespace(is_completed=lambda: True), name="r")

    monkeypatch.setattr(pools, "run_deployment", fake_run_deployment)
    monkeypatch.setenv(RUN_ENV, json.dumps(["review.mode=reference"]))
    assert pools.run_on_pool("caption") == "ran"
    assert sent == {"name": "synthloop-stage/cpu",
                    "parameters": {"stage": "caption", "set_params": ["review.mode=reference"]}}


def test_flow_parameters_validate_as_a_deployed_run_does():
    """A deployment's run is validated against the flow signature; an unknown placement is a clear error."""
    from flows.pipeline import synthloop_loop

    params = synthloop_loop.validate_parameters({"set_params": ["review.mode=reference"], "stages": ["phantom"]})
    assert params["placement"] == "local"
    with pytest.raises(ValueError, match="placement must be one of local, pools"):
        synthloop_loop.fn(placement="cloud")
