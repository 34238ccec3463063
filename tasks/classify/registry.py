"""A trained classifier's files and its MLflow registration (``synthloop-classifier`` with an alias)."""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.classify.models import HISTORY_FILE, save_model
from tasks.classify.train import TrainResult

REGISTERED_MODEL = "synthloop-classifier"


def save_result(folder: Path, result: TrainResult) -> None:
    """Model files + ``history.csv`` of a training run."""
    from tasks.io import atomic_write_csv

    save_model(folder, result.model, result.meta)
    atomic_write_csv(Path(folder) / HISTORY_FILE, result.history.round(6))


def register_model(folder: Path, alias: str) -> None:
    """Log the model folder to the active MLflow run and register it with ``alias`` (no-op without a run)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return
    from tasks.tracking import log_model_files

    log_model_files(Path(folder), "model", registered_name=REGISTERED_MODEL, alias=alias)
