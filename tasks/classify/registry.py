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
    """Log the model folder to the active MLflow run as a pyfunc model (tasks/classify/mlflow_model.py), register
    it as ``synthloop-classifier`` and point ``alias`` at the new version (no-op without a run)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return
    from tasks.classify.mlflow_model import log_classifier

    info = log_classifier(Path(folder), example_image=_example_png(Path(folder)), registered_name=REGISTERED_MODEL)
    mlflow.MlflowClient().set_registered_model_alias(REGISTERED_MODEL, alias, info.registered_model_version)


def _example_png(folder: Path) -> bytes:
    """A mid-grey image of the model's input size and mode: the input example stored with the model."""
    import io
    import json

    from PIL import Image

    from tasks.classify.models import META_FILE

    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    size = int(meta["image_size"])
    buf = io.BytesIO()
    Image.new("L" if int(meta["channels"]) == 1 else "RGB", (size, size), 128).save(buf, format="PNG")
    return buf.getvalue()
