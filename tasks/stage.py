"""The thin entry point every stage shares: ``python -m tasks.<stage>`` → ``cli_main("<stage>")``.

It loads params.yaml, works out the stage's inputs and output folder from ``params.paths`` (the same paths
dvc.yaml's deps and outs use — tested), opens the MLflow stage run, calls the stage's ``run()``, and writes the
returned metrics to ``metrics/<stage>.json`` and MLflow. No CLI flag repeats a params key.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from tasks.io import atomic_write_json
from tasks.params import STAGES, Params, ParamsError, load_params
from tasks.validation import ValidationFailed

log = logging.getLogger(__name__)

#: Exit status of a stage that stopped on purpose and waits for a person (the review checkpoint).
EXIT_WAITING = 3


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on; the message says what and how."""


class WaitingForReview(StageError):
    """The loop stops at the review checkpoint until a person has reviewed (not a crash)."""


#: Stages whose work is torch on a device: with a GPU they queue for it (flows/gpu.py) and get one device each.
#: Every other stage (phantom, ingest, caption, review) is CPU-only and never waits for a GPU. Declared once here.
ACCELERATOR_STAGES = frozenset({"pretrain", "dreambooth", "generate", "baseline", "predict", "retrain", "evaluate"})


def needs_accelerator(stage: str) -> bool:
    """True for a stage that should run on the accelerator when there is one (``ACCELERATOR_STAGES``)."""
    if stage not in STAGES:
        raise StageError(f"unknown stage {stage!r}; stages are: {', '.join(STAGES)}")
    return stage in ACCELERATOR_STAGES


def device_tags() -> dict[str, str]:
    """Where this stage process computed, for its MLflow run: the CUDA device (and the slot's
    ``CUDA_VISIBLE_DEVICES``) or ``cpu``. Called after ``run()``: a stage that never imported torch used no GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    device = "cpu"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    return {"synthloop.device": device, "synthloop.cuda_visible_devices": visible if visible is not None else "unset"}


def stage_inputs(params: Params, stage: str) -> dict[str, Path]:
    """Input paths of ``stage`` as keyword arguments of its ``run()``; dvc.yaml deps list the same paths."""
    p = params.paths
    table: dict[str, dict[str, Path]] = {
        "phantom": {},
        "ingest": {"raw": p.raw},
        "caption": {"trainval": p.ingest / "trainval"},
        # The base learns the data set's own images (never the test split) and, when there is one, the pool.
        "pretrain": {"trainval": p.ingest / "trainval", **({"pool": pool} if (pool := params.pretrain_pool()) else {})},
        "dreambooth": {"base": p.pretrain, "caption": p.caption},
        "generate": {"model": p.dreambooth / "model", "prompts": p.caption / "prompts.json"},
        "baseline": {"caption": p.caption},
        # caption/val: calibration; caption/train: the quality gate and memorisation check
        "predict": {"model": p.baseline, "generated": p.generate, "caption": p.caption},
        "review": {"predictions": p.predict, "generated": p.generate},
        # Only the decisions feed training: queue.csv or audit.jsonl changing must not trigger a retrain.
        # predict: its memorisation flags (copies of real train images are never trained on) and quality gate.
        "retrain": {"caption": p.caption, "generated": p.generate, "review": p.review / "corrections.csv",
                    "predict": p.predict},
        # trainval: the pool its repeats re-split; queue.csv: the order of the review-effort curve.
        "evaluate": {"test": p.ingest / "test", "trainval": p.ingest / "trainval", "caption": p.caption,
                     "generated": p.generate, "review": p.review / "corrections.csv",
                     "queue": p.review / "queue.csv", "baseline": p.baseline, "retrain": p.retrain,
                     "predict": p.predict},
    }
    return table[stage]


def stage_module(stage: str) -> str:
    """The module whose ``run()`` is ``stage``: ``tasks/<stage>.py``, or ``tasks/<stage>/stage.py`` for a stage that
    is a wing of its own (review: its store, app and Label Studio bridge live beside it)."""
    return f"tasks.{stage}.stage" if Path(__file__).with_name(stage).is_dir() else f"tasks.{stage}"


def stage_output(params: Params, stage: str) -> Path:
    return getattr(params.paths, stage)


def write_metrics(params: Params, stage: str, metrics: dict[str, Any]) -> Path:
    path = params.paths.metrics / f"{stage}.json"
    atomic_write_json(path, metrics)
    return path


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("alembic", "urllib3", "httpx", "PIL", "matplotlib", "filelock", "fsspec", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(stage: str, params: Params) -> Any:
    """Run one stage with tracking and metrics; return its Outputs."""
    from tasks.io import tree_hash
    from tasks.tracking import stage_run

    if stage not in STAGES:
        raise StageError(f"unknown stage {stage!r}; stages are: {', '.join(STAGES)}")
    module = importlib.import_module(stage_module(stage))
    inputs = stage_inputs(params, stage)
    if os.environ.get("RANK", "0") != "0":
        # Under `accelerate launch` (its torchrun sets RANK) every process runs this entry point; only rank 0, the
        # main process, opens the MLflow run and writes metrics/<stage>.json, so a stage run is recorded once.
        return module.run(params, **inputs, out_dir=stage_output(params, stage))
    hashes = {k: tree_hash(v) if v.is_dir() else "" for k, v in inputs.items() if v.exists()}
    start = time.perf_counter()
    with stage_run(stage, params, hashes) as run:
        outputs = module.run(params, **inputs, out_dir=stage_output(params, stage))
        run.set_tags(device_tags())
        metrics = dict(getattr(outputs, "metrics", {}) or {})
        metrics["stage_seconds"] = round(time.perf_counter() - start, 3)
        run.log_metrics(metrics)
        write_metrics(params, stage, metrics)
    log.info("stage %s done in %.1f s", stage, metrics["stage_seconds"])
    return outputs


def cli_main(stage: str, argv: list[str] | None = None) -> None:
    """Entry point of ``python -m tasks.<stage>``: exit 0 on success, 3 when waiting for review, 1 on error."""
    from tasks.overrides import record_resolved

    configure_logging()
    try:
        # record_resolved: params.resolved.yaml is what DVC checks beside params.yaml (profile, overrides).
        run_stage(stage, record_resolved())
    except WaitingForReview as err:
        log.warning("%s", err)
        exit_now(EXIT_WAITING)
    except (StageError, ParamsError, ValidationFailed, FileNotFoundError) as err:
        log.error("stage %s failed: %s\n  fix the cause, then resume with: dvc repro %s  (or: synthloop run)",
                  stage, err, stage)
        exit_now(1)
    exit_now(0)


def exit_now(code: int) -> NoReturn:
    """End the stage process with ``code`` once everything it wrote is out: the atexit handlers run (log handlers
    flushed, temporary folders removed, child processes joined), then the process exits without the interpreter's
    module-by-module teardown, which takes ~1 s with torch, great-expectations and MLflow loaded — once per stage
    of every loop. Every file the stages write is closed (and fsynced) by then (tasks/io.py)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
