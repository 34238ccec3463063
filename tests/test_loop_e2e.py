"""The whole loop end to end on a shrunk profile, through `synthloop run` (Prefect) and `dvc repro`.

The session's first whole run (conftest ``completed_loop``) is checked, then one copy of that project walks
through the re-run matrix: unchanged → nothing re-runs; a changed generate.* param → generate and downstream only
(both entry points); a killed flow mid-generate → the next run resumes and finishes with a complete, valid
generated set. Another copy switches generation to Dask on a persistent Prefect server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ON_COMPLETED_LOOP
from project import copy_project, dvc, env_for, run_loop
from tasks.params import STAGES

pytestmark = [pytest.mark.slow, ON_COMPLETED_LOOP]

DOWNSTREAM_OF_GENERATE = ["generate", "predict", "review", "retrain", "evaluate"]


def _stamps(project: Path) -> dict[str, float]:
    """metrics/<stage>.json is rewritten exactly when a stage runs: its mtime tells which stages ran."""
    return {s: (project / "metrics" / f"{s}.json").stat().st_mtime_ns for s in STAGES}


def _ran_since(before: dict[str, float], project: Path) -> list[str]:
    after = _stamps(project)
    return [s for s in STAGES if after[s] != before[s]]


@pytest.fixture(scope="module")
def project(completed_loop, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(completed_loop[0], tmp_path_factory.mktemp("e2e") / "proj")


def test_first_run_produces_the_report(completed_loop):
    project, proc = completed_loop
    out = proc.stdout
    assert "## Paired difference" in out and "Answer (" in out, out[-3000:]
    assert "report:" in out and "MLflow:" in out and "Prefect:" in out
    assert (project / "reports" / "report.md").exists() and (project / "reports" / "report.html").exists()
    summary = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert summary, "evaluate wrote its metrics"
    assert json.loads(dvc(project, "status", "--json").stdout or "{}") == {}, "a Prefect run leaves dvc clean"


def test_unchanged_rerun_runs_nothing(project: Path):
    before = _stamps(project)
    start = time.perf_counter()
    proc = run_loop(project)
    assert _ran_since(before, project) == []
    assert proc.stderr.count("up to date") >= len(STAGES) or "Skipped" in proc.stderr
    assert time.perf_counter() - start < 120
    assert "Running stage" not in dvc(project, "repro").stdout


def test_changed_generate_param_reruns_generate_and_downstream_only_via_prefect(project: Path):
    before = _stamps(project)
    run_loop(project, "--set", "generate.num_images=12")
    assert _ran_since(before, project) == DOWNSTREAM_OF_GENERATE


def test_changed_generate_param_reruns_generate_and_downstream_only_via_dvc(project: Path):
    from tasks.params import apply_overrides

    # Not `dvc repro --dry`: it cannot know generate's outputs will change, so it lists generate alone.
    apply_overrides(project / "params.yaml", ["generate.guidance_scale=6.0"])
    out = dvc(project, "repro").stdout
    ran = [s for s in STAGES if f"Running stage '{s}'" in out]
    assert ran == DOWNSTREAM_OF_GENERATE, out[-3000:]
    assert "Running stage" not in dvc(project, "repro").stdout


def test_killed_flow_mid_generate_resumes(project: Path):
    """SIGKILL the whole flow process group while generate writes images; the next run finishes the job."""
    from tasks.params import apply_overrides

    apply_overrides(project / "params.yaml", ["generate.num_images=40", "generate.shard_size=4"])
    images = project / "data" / "generate" / "images"
    upto = ["--stages", *STAGES[:STAGES.index("generate") + 1]]  # the downstream re-run is tested above
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", *upto], cwd=project, env=env_for(project),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    baseline_count = _count_pngs(images)
    while time.time() < deadline and proc.poll() is None:
        if _count_pngs(images) > baseline_count + 4:  # generate is mid-way through the new images
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the flow finished before it could be killed; raise generate.num_images"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_loop(project, *upto)
    manifest = (project / "data" / "generate" / "manifest.csv").read_text().splitlines()
    assert len(manifest) - 1 == 40
    assert _count_pngs(images) == 40
    assert not list((project / "data" / "generate").rglob(".synthloop-tmp-*")), "no partial files survive"
    assert json.loads(dvc(project, "status", "--json", *upto[1:]).stdout or "{}") == {}


def _count_pngs(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.png")) if folder.exists() else 0


def test_loop_with_dask_generation_on_a_persistent_prefect_server(completed_loop, tmp_path: Path,
                                                                  prefect_server: str):
    """Outgrowing one process: the loop up to generate with shards on a local 2-worker Dask cluster, recorded on
    a real Prefect server (what `prefect server start` gives a team). Byte-identity between engines is checked
    in tests/test_generate.py (test_dask_two_workers_byte_identical_to_in_process)."""
    import anyio
    import pandas as pd
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # A new batch/shard layout changes every image's recipe: all 8 are generated again, on the Dask workers.
    project = copy_project(completed_loop[0], tmp_path / "dask", overrides={"generate": {
        "num_images": 8, "shard_size": 2, "batch_size": 2, "engine": "dask", "dask_workers": 2}})
    before = pd.read_csv(project / "data" / "generate" / "manifest.csv")
    proc = run_loop(project, "--stages", *STAGES[:6], env={**env_for(project), "PREFECT_API_URL": prefect_server})
    assert "Running stage 'generate'" in proc.stdout + proc.stderr
    assert "Running stage 'dreambooth'" not in proc.stdout + proc.stderr
    manifest = pd.read_csv(project / "data" / "generate" / "manifest.csv")
    assert len(manifest) == 8 and manifest["shard"].nunique() == 4
    assert not set(manifest["recipe"]) & set(before["recipe"])
    assert json.loads((project / "metrics" / "generate.json").read_text())["generated"] == 8
    assert sorted(p.name for p in (project / "data" / "generate" / "images").rglob("*.png")) == \
        sorted(Path(f).name for f in manifest["file_name"])

    async def flow_runs():
        async with get_client() as client:
            return [(r.name, r.state_name) for r in await client.read_flow_runs()]

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        runs = anyio.run(flow_runs)
    assert sum(state == "Completed" for _, state in runs) >= 2, \
        f"the loop and generate's Dask sub-flow are recorded on the persistent server: {runs}"
