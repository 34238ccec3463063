"""MLflow tracking in one place.

URI from ``MLFLOW_TRACKING_URI``, else the embedded default ``sqlite:///mlflow.db`` in the project directory
(``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows it). One parent run per loop with a nested run per
stage, whichever entry point runs it:

* the Prefect flow (``synthloop run``) opens the parent and passes it to the stage processes as
  ``SYNTHLOOP_PARENT_RUN_ID``;
* under ``dvc repro`` (no parent given) the first stage opens a parent (tag ``synthloop.entry=dvc``) that later
  stage processes find in the tracking store and join; it closes when evaluate finishes, and a stage that already
  finished in the open loop starts a new one (a new ``dvc repro`` after a complete or edited loop).

Every stage run carries the flattened params, the params layers (profile, overrides), the git SHA, content hashes
of its inputs and the dvc.lock hashes of the other stages' outputs it ran after.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.params import STAGES

log = logging.getLogger(__name__)

EXPERIMENT = "synthloop"
PARENT_ENV = "SYNTHLOOP_PARENT_RUN_ID"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _mlflow():
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(EXPERIMENT) is None:
        # Artifacts beside the database (MLflow's default is ./mlruns of whatever directory the process runs in).
        try:
            mlflow.create_experiment(EXPERIMENT, artifact_location=(Path(uri[len("sqlite:///"):]).parent
                                                                     / "mlruns").resolve().as_uri())
        except mlflow.exceptions.MlflowException:  # another stage process created it first
            pass
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of ``metrics`` as floats (bools and text are not metrics)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass(frozen=True)
class StageRun:
    """Handle on an open MLflow run; what a stage uses to log."""

    run_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        clean = _numeric(metrics)
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_metric_steps(self, rows: Sequence[tuple[int, int, Mapping[str, float]]]) -> None:
        """Many steps' metrics, ``(step, timestamp in ms, metrics)`` each, in a few MLflow calls (``log_batch``
        takes up to 1,000 values): one ``log_metrics`` call per training step cost ~7 ms on the sqlite store."""
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        values = [Metric(k, v, ts, step) for step, ts, metrics in rows for k, v in _numeric(metrics).items()]
        client = MlflowClient()
        for i in range(0, len(values), 1000):
            client.log_batch(self.run_id, metrics=values[i:i + 1000])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        (mlflow.log_artifacts if path.is_dir() else mlflow.log_artifact)(str(path), artifact_path)

    def log_image(self, image: Any, name: str) -> None:
        import mlflow

        mlflow.log_image(image, artifact_file=name)

    def log_dict(self, obj: Any, name: str) -> None:
        import mlflow

        mlflow.log_dict(obj, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def layer_tags() -> dict[str, str]:
    """``synthloop.overrides``: the params layers this process runs with (tasks/overrides.py), ``{}`` for none."""
    from tasks.overrides import read_layers

    return {"synthloop.overrides": json.dumps(read_layers(Path.cwd()).describe())}


def _lineage_tags(params: Any) -> dict[str, str]:
    return {"synthloop.profile": params.profile, "mlflow.source.git.commit": git_sha(), **layer_tags()}


@contextlib.contextmanager
def stage_run(stage: str, params: Any, input_hashes: Mapping[str, str] | None = None) -> Iterator[StageRun]:
    """Open the MLflow run of one stage, nested under the loop's parent run (the flow's, or a ``dvc repro`` one)."""
    mlflow = _mlflow()
    parent = os.environ.get(PARENT_ENV) or _dvc_loop_parent(mlflow, stage, params)
    tags = {"synthloop.stage": stage, **_lineage_tags(params)}
    tags.update({f"synthloop.input.{k}": v for k, v in (input_hashes or {}).items()})
    tags.update({k: v for k, v in dvc_lock_tags().items() if not k.startswith(f"dvc.{stage}.")})
    with mlflow.start_run(run_name=stage, nested=True, parent_run_id=parent, tags=tags) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.flat().items()})
        yield StageRun(run.info.run_id)
    if not os.environ.get(PARENT_ENV) and stage == STAGES[-1]:
        # The loop of a `dvc repro` ends with its last stage: record what it produced and close it.
        client = mlflow.MlflowClient()
        for key, value in dvc_lock_tags().items():
            client.set_tag(parent, key, value)
        client.set_terminated(parent, "FINISHED")


def _dvc_loop_parent(mlflow, stage: str, params: Any) -> str:
    """The open ``dvc repro`` loop this stage belongs to, or a new one (see the module docstring)."""
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    open_loops = client.search_runs([experiment], "tags.`synthloop.entry` = 'dvc' and attributes.status = 'RUNNING'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
    if open_loops:
        parent = open_loops[0].info.run_id
        done = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}' and "
                                  f"tags.`synthloop.stage` = '{stage}' and attributes.status = 'FINISHED'",
                                  max_results=1)
        if not done:
            return parent
        log.info("stage %s already ran in loop run %s: starting a new loop run", stage, parent)
        client.set_terminated(parent, "FINISHED")
    tags = {"synthloop.loop": "1", "synthloop.entry": "dvc", "mlflow.runName": "loop", **_lineage_tags(params)}
    run = client.create_run(experiment, run_name="loop", tags=tags)
    flat = [mlflow.entities.Param(k, str(v)[:500]) for k, v in params.flat().items()]
    for i in range(0, len(flat), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run.info.run_id, params=flat[i:i + 100])
    return run.info.run_id


@contextlib.contextmanager
def loop_run(params: Any, tags: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
    """Open the parent run of one loop and export its id so stage processes nest under it."""
    mlflow = _mlflow()
    base = {"synthloop.loop": "1", **_lineage_tags(params)}
    base.update({k: str(v) for k, v in (tags or {}).items()})
    with mlflow.start_run(run_name="loop", tags=base) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.flat().items()})
        previous = os.environ.get(PARENT_ENV)
        os.environ[PARENT_ENV] = run.info.run_id
        try:
            yield StageRun(run.info.run_id)
        finally:
            if previous is None:
                os.environ.pop(PARENT_ENV, None)
            else:
                os.environ[PARENT_ENV] = previous


def dvc_lock_tags(lock: Path | str = "dvc.lock") -> dict[str, str]:
    """``dvc.<stage>.<out>`` → content hash of each stage output recorded in dvc.lock (data lineage tags)."""
    import yaml

    lock = Path(lock)
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    tags = {}
    for stage, entry in stages.items():
        for out in entry.get("outs", []):
            digest = out.get("md5") or out.get("hash") or ""
            tags[f"dvc.{stage}.{Path(out['path']).name}"] = str(digest)
    return tags
