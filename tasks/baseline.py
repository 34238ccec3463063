"""baseline: the real-only classifier, trained on caption train/, early-stopped on caption val/.

It is the reference every later number is compared with, and the auto-labeler of the predict stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tasks.classify.arms import train_arm
from tasks.classify.models import HISTORY_FILE, META_FILE, MODEL_FILE
from tasks.classify.registry import register_model, save_result
from tasks.params import Params
from tasks.stage import cli_main
from tasks.tables import read_imagefolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineOutputs:
    model: Path
    meta: Path
    history: Path
    metrics: dict[str, float] = field(default_factory=dict)


def run(params: Params, *, caption: Path, out_dir: Path) -> BaselineOutputs:
    """Train the real-only classifier with the ``baseline`` recipe and save it (safetensors + model.json)."""
    train = read_imagefolder(caption / "train", params.classes)
    val = read_imagefolder(caption / "val", params.classes)
    log.info("baseline: %s on %d real train images, %d val images", params.baseline.backbone, len(train), len(val))
    result = train_arm(params, train, val)
    save_result(out_dir, result)
    register_model(out_dir, alias="baseline")
    metrics = {**result.val_metrics, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
               "n_train": len(train), "n_val": len(val)}
    return BaselineOutputs(out_dir / MODEL_FILE, out_dir / META_FILE, out_dir / HISTORY_FILE, metrics)


if __name__ == "__main__":
    cli_main("baseline")
