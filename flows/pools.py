"""Stages on work pools: each GPU stage runs on a worker of the GPU pool, each CPU stage on the CPU pool.

``synthloop_loop(placement="pools")`` starts every stage except review as a run of the ``synthloop-stage``
deployment for its kind (``synthloop-stage/gpu`` or ``synthloop-stage/cpu``, declared in prefect.yaml) and waits
for it; the pool's worker decides the machine. Review stays in the loop's own process: its app and the pause for a
person live there. Every worker must see the same project checkout (``SYNTHLOOP_HOME``: one box, or shared storage
on a cluster), because the stages hand their data over through ``data/`` and dvc.lock.
"""

from __future__ import annotations

import json
import os

from prefect import flow
from prefect.deployments import run_deployment

from flows.gpu import ensure_gpu_limit, visible_devices
from tasks.overrides import RUN_ENV, record_resolved, run_overrides
from tasks.stage import needs_accelerator

STAGE_FLOW = "synthloop-stage"


def deployment_for(stage: str) -> str:
    """The deployment (``flow/deployment``) whose pool runs ``stage``: gpu for accelerator stages, else cpu."""
    return f"{STAGE_FLOW}/{'gpu' if needs_accelerator(stage) else 'cpu'}"


@flow(name=STAGE_FLOW)
def synthloop_stage(stage: str, set_params: list[str] | None = None) -> str:
    """One stage, on whichever worker picked this run up; on a GPU worker it queues for a slot and a device.
    ``set_params``: the loop run's overrides (a worker has no other way to get them)."""
    from flows.pipeline import run_stage

    with run_overrides(set_params):
        record_resolved()
        devices = visible_devices()
        if devices:
            ensure_gpu_limit(len(devices))
        return run_stage(stage, devices, return_state=True).result()


def run_on_pool(stage: str) -> str:
    """Run ``stage`` through its pool's deployment and wait; raise with the run's name when it did not complete."""
    overrides = json.loads(os.environ.get(RUN_ENV) or "[]")  # this loop run's set_params (tasks/overrides.py)
    run = run_deployment(deployment_for(stage), parameters={"stage": stage, "set_params": overrides}, timeout=None)
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise RuntimeError(f"stage {stage!r} ran as flow run {run.name!r} of {deployment_for(stage)} and ended "
                           f"{state}; see that run's logs in the Prefect UI")
    return "ran"
