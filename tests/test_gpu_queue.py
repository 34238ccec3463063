"""GPU stages queue for the accelerator and get a device; CPU stages never wait (flows/gpu.py, tasks.stage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from flows import gpu
from project import env_for, make_project
from tasks.params import STAGES
from tasks.stage import ACCELERATOR_STAGES, StageError, needs_accelerator


def test_every_stage_declares_its_need():
    cpu = {s for s in STAGES if not needs_accelerator(s)}
    assert cpu == {"phantom", "ingest", "caption", "review"}
    assert ACCELERATOR_STAGES | cpu == set(STAGES)


def test_unknown_stage_has_no_need():
    with pytest.raises(StageError, match="unknown stage 'trian'"):
        needs_accelerator("trian")


def test_visible_devices_from_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(gpu.DEVICES_ENV, " 0, 2 ,")
    assert gpu.visible_devices() == ["0", "2"]
    monkeypatch.setenv(gpu.DEVICES_ENV, "")
    assert gpu.visible_devices() == []


def test_cpu_stage_is_hidden_from_gpus_and_never_queues(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, str(tmp_path))
    with gpu.stage_placement("ingest", ["0"]) as env:
        assert env == {"CUDA_VISIBLE_DEVICES": ""}
    with gpu.stage_placement("dreambooth", []) as env:  # no devices: the CPU fallback changes nothing
        assert env == {}
    assert not list(tmp_path.iterdir())  # neither took a device lock


def test_only_a_stage_that_would_queue_for_a_gpu_asks_dvc_status_first(monkeypatch: pytest.MonkeyPatch):
    """A CPU stage, or any stage on a machine without devices, goes straight to `dvc repro` (one DVC process), and
    DVC's own "didn't change" line makes it Skipped; a GPU stage with devices asks `dvc status` before queueing."""
    import logging

    from flows import pipeline

    asked: list[str] = []
    repro: list[list[str]] = []

    def current(stage: str) -> bool:
        asked.append(stage)
        return True

    def streaming(cmd, env=None, on_line=None):
        repro.append(cmd)
        return 0, f"Stage '{cmd[-1]}' didn't change, skipping\nData and pipelines are up to date.\n"

    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(pipeline, "create_progress_artifact", lambda *a, **k: None)  # no flow run to attach to
    monkeypatch.setattr(pipeline, "stage_is_current", current)
    monkeypatch.setattr(pipeline, "_run_streaming", streaming)
    for stage, devices in (("caption", ["0"]), ("dreambooth", [])):
        state = pipeline.run_stage.fn(stage, devices)
        assert state.name == "Skipped" and state.data == "skipped"
    assert asked == [] and [cmd[-1] for cmd in repro] == ["caption", "dreambooth"]
    assert pipeline.run_stage.fn("dreambooth", ["0"]).name == "Skipped"
    assert asked == ["dreambooth"] and len(repro) == 2  # skipped before it could queue for the device
    monkeypatch.setattr(pipeline, "_run_streaming", lambda cmd, env=None, on_line=None: (0, "Running stage\n"))
    assert pipeline.run_stage.fn("caption", []) == "ran"


def test_claim_device_gives_concurrent_holders_different_devices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(gpu.LOCK_DIR_ENV, str(tmp_path))
    with gpu.claim_device(["0", "1"]) as first, gpu.claim_device(["0", "1"]) as second:
        assert {first, second} == {"0", "1"}
    got: list[str] = []
    with gpu.claim_device(["0"]):
        waiter = threading.Thread(target=lambda: got.append(_claim_once(["0"])))
        waiter.start()
        time.sleep(0.3)
        assert got == []  # the only device is held: the second claimant waits
    waiter.join(timeout=5)
    assert got == ["0"]


def _claim_once(devices: list[str]) -> str:
    with gpu.claim_device(devices, poll_s=0.05) as device:
        return device


# ---- two loops on one Prefect server (slow: a server and four flow runs) -------------------------------------

STUB = """
import json, os, sys, time
from pathlib import Path
stage, log, peer = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
start = time.time()
if stage == "ingest":
    # A barrier between the two loops' first CPU stage: it passes only if both run at the same time.
    (log.parent / (log.stem + ".ingest-started")).touch()
    while not (peer.parent / (peer.stem + ".ingest-started")).exists() and time.time() - start < 60:
        time.sleep(0.1)
time.sleep(1.5)
with open(log, "a") as f:
    f.write(json.dumps({"stage": stage, "start": start, "end": time.time(),
                        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
"""
SELECTED = ["ingest", "caption", "pretrain", "dreambooth"]


def _toy_project(dest: Path, log: Path, peer: Path) -> Path:
    """The real project and flow, with each DVC stage's command replaced by a stub that records its window."""
    project = make_project(dest)
    (project / "stub.py").write_text(STUB)
    stages = {s: {"cmd": f"{sys.executable} stub.py {s} {log} {peer}", "always_changed": True} for s in SELECTED}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (project / "dvc.lock").unlink(missing_ok=True)
    return project


def _run_two_loops(tmp_path: Path, server: str, devices: str) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    os.environ["PREFECT_API_URL"] = server
    try:
        with get_client(sync_client=True) as client:
            try:
                client.delete_global_concurrency_limit_by_name(gpu.GPU_LIMIT)
            except ObjectNotFound:
                pass
    finally:
        del os.environ["PREFECT_API_URL"]
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    procs = []
    for name, log, peer in (("a", logs[0], logs[1]), ("b", logs[1], logs[0])):
        project = _toy_project(tmp_path / name, log, peer)
        env = {**env_for(project), "PREFECT_API_URL": server, gpu.DEVICES_ENV: devices,
               gpu.LOCK_DIR_ENV: str(tmp_path / "locks"), "PYTHONPATH": str(project)}
        code = f"from flows.pipeline import synthloop_loop; synthloop_loop(stages={SELECTED!r})"
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=project, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]
    return [json.loads(line) for log in logs for line in log.read_text().splitlines()]


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def _pairs(records: list[dict], stages: set[str]) -> list[tuple[dict, dict]]:
    rows = [r for r in records if r["stage"] in stages]
    return [(x, y) for i, x in enumerate(rows) for y in rows[i + 1:]]


@pytest.mark.slow
def test_one_gpu_slot_serialises_gpu_stages_cpu_stages_overlap(tmp_path: Path, prefect_server: str):
    records = _run_two_loops(tmp_path, prefect_server, devices="0")
    assert sorted(r["stage"] for r in records) == sorted(SELECTED * 2)
    gpu_rows = [r for r in records if r["stage"] in ACCELERATOR_STAGES]
    assert {r["cuda"] for r in gpu_rows} == {"0"}
    assert not any(_overlap(x, y) for x, y in _pairs(records, ACCELERATOR_STAGES)), gpu_rows
    ingest = [r for r in records if r["stage"] == "ingest"]
    assert _overlap(*ingest), ingest  # the barrier passed: CPU stages did not wait for each other
    assert {r["cuda"] for r in records if r["stage"] not in ACCELERATOR_STAGES} == {""}


def test_gpu_limit_is_created_once_and_then_kept(prefect_server: str, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(gpu.GPU_LIMIT)
        except ObjectNotFound:
            pass
    assert gpu.ensure_gpu_limit(2) == 2  # one slot per device: two stages may run at once, on devices 0 and 1
    assert gpu.ensure_gpu_limit(1) == 2  # an existing limit is the operator's: kept, with a warning
    assert "keeping 2" in caplog.text
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(gpu.GPU_LIMIT).limit == 2


def test_pools_route_stages_by_need():
    from flows.pools import deployment_for

    assert deployment_for("dreambooth") == "synthloop-stage/gpu"
    assert deployment_for("caption") == "synthloop-stage/cpu"
    with pytest.raises(StageError):
        deployment_for("nope")


def _prefect(project: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=project, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_prefect_yaml_deploys_and_stages_run_on_their_pools(tmp_path: Path, prefect_server: str):
    """prefect.yaml as shipped: `prefect deploy --all`, one worker per pool, the loop with placement=pools."""
    log = tmp_path / "stages.jsonl"
    project = _toy_project(tmp_path / "p", log, log)
    env = {**env_for(project), "PREFECT_API_URL": prefect_server, gpu.DEVICES_ENV: "0",
           gpu.LOCK_DIR_ENV: str(tmp_path / "locks"), "PYTHONPATH": str(project), "SYNTHLOOP_HOME": str(project),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    for pool in ("synthloop-gpu", "synthloop-cpu", "synthloop-pool"):
        _prefect(project, env, "work-pool", "create", pool, "--type", "process", "--overwrite")
    _prefect(project, env, "--no-prompt", "deploy", "--all")
    listed = _prefect(project, env, "deployment", "ls")
    for name in ("synthloop/nightly-pools", "synthloop-stage/gpu", "synthloop-stage/cpu"):
        assert name in listed, listed
    workers = {pool: subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                                       "--name", f"test-{pool}"], cwd=project,
                                      env={**env, gpu.DEVICES_ENV: "0" if pool == "synthloop-gpu" else ""},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
               for pool in ("synthloop-gpu", "synthloop-cpu")}
    try:
        code = ("from flows.pipeline import synthloop_loop; "
                "print(synthloop_loop(stages=['ingest', 'pretrain'], placement='pools'))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, text=True, capture_output=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        for worker in workers.values():
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a loaded machine: a worker still polling may miss SIGTERM's window
                worker.kill()
                worker.wait(timeout=30)
    records = {json.loads(line)["stage"]: json.loads(line) for line in log.read_text().splitlines()}
    assert set(records) == {"ingest", "pretrain"}
    assert records["pretrain"]["cuda"] == "0"  # ran through the GPU pool's worker, holding device 0
    assert records["ingest"]["cuda"] in ("", None)  # the CPU pool's worker has no devices to hide
