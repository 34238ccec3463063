"""The scheduled deployment: registers with its cron schedule on a real local server; a triggered run completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from project import env_for, make_project


def test_deployment_kwargs_follow_params(params):
    from flows.schedule import deployment_kwargs

    kw = deployment_kwargs(params)
    assert kw["name"] == params.schedule.name
    assert kw["schedules"][0].cron == params.schedule.cron
    assert kw["parameters"] == {"set_params": list(params.schedule.set_params)}


@pytest.mark.slow
def test_served_deployment_registers_schedule_and_runs(tmp_path: Path, prefect_server: str,
                                                        monkeypatch: pytest.MonkeyPatch):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = make_project(tmp_path / "proj", overrides={"review": {"mode": "manual"},
                                                             "schedule": {"set_params": ["review.mode=reference"]}})
    env = {**env_for(project), "PREFECT_API_URL": prefect_server, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            deployment = _wait_for_deployment(get_client, "synthloop/nightly", serve)
            assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
            assert deployment.parameters == {"set_params": ["review.mode=reference"]}
            run = run_deployment("synthloop/nightly", parameters={"stages": ["phantom"]}, timeout=300,
                                 poll_interval=2)
            assert run.state.is_completed(), run.state
    finally:
        serve.terminate()
        out, _ = serve.communicate(timeout=30)
    assert (project / "metrics" / "phantom.json").exists(), out[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("synthloop").experiment_id])
    loop = next(r for r in runs if r.data.tags.get("synthloop.entry") == "prefect")
    assert json.loads(loop.data.tags["synthloop.overrides"]) == {"run_set": ["review.mode=reference"]}
    assert loop.data.params["review.mode"] == "reference", "the scheduled run applied its set_params"
    git = subprocess.run(["git", "status", "--porcelain", "params.yaml", "configs"], cwd=project,
                         capture_output=True, text=True).stdout
    assert git == "", f"a scheduled run rewrites no params file: {git}"


def _wait_for_deployment(get_client, name: str, serve: subprocess.Popen, timeout: float = 120):
    import anyio

    async def read():
        async with get_client() as client:
            return await client.read_deployment_by_name(name)

    deadline = time.time() + timeout
    while time.time() < deadline:
        if serve.poll() is not None:
            raise AssertionError(f"synthloop serve exited: {serve.stdout.read()[-3000:]}")
        try:
            return anyio.run(read)
        except Exception:  # noqa: BLE001 — not registered yet
            time.sleep(1)
    raise AssertionError(f"deployment {name} was not registered within {timeout} s")
