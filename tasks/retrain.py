"""retrain: the baseline recipe on real train + reviewed synthetic images (accepted or corrected).

Rejected items and unreviewed images are never used. The synthetic share is capped at
``retrain.synthetic_ratio`` × the real train size (and ``retrain.synthetic_cap``), drawn class-balanced; each
synthetic image carries the loss weight ``retrain.synthetic_weight``. ``retrain.pretrain_on_synthetic`` trains on
synthetic first, then fine-tunes on real only. Early stopping uses the real val set only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.classify.arms import drop_memorised, reviewed_synthetic, synthetic_arm, train_arm
from tasks.classify.models import HISTORY_FILE, META_FILE, MODEL_FILE
from tasks.classify.registry import register_model, save_result
from tasks.params import Params
from tasks.stage import cli_main
from tasks.tables import memorised_files, read_corrections, read_generated, read_imagefolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainOutputs:
    model: Path
    meta: Path
    history: Path
    metrics: dict[str, float] = field(default_factory=dict)


def synthetic_for_training(params: Params, generated: Path, review: Path, n_real: int,
                           seed: int, predict: Path | None = None) -> tuple[pd.DataFrame, int]:
    """The reviewed synthetic rows this arm trains on, and how many reviewed rows were available.

    With ``predict`` (its folder), images its memorisation check flagged are dropped first (the review queue
    already leaves them out; this also catches a decision made before the check flagged the image)."""
    reviewed = reviewed_synthetic(read_generated(generated, params.classes),
                                  read_corrections(review, params.classes))
    if predict is not None:
        reviewed = drop_memorised(reviewed, memorised_files(predict, params.classes))
    return synthetic_arm(params, reviewed, n_real, seed), len(reviewed)


def run(params: Params, *, caption: Path, generated: Path, review: Path, predict: Path | None = None,
        out_dir: Path) -> RetrainOutputs:
    """Train real + reviewed synthetic with the baseline recipe and save the model (safetensors + model.json)."""
    train = read_imagefolder(caption / "train", params.classes)
    val = read_imagefolder(caption / "val", params.classes)
    synth, n_reviewed = synthetic_for_training(params, generated, review, len(train), params.seed, predict)
    log.info("retrain: %d real + %d synthetic (of %d reviewed usable)", len(train), len(synth), n_reviewed)
    result = train_arm(params, train, val, synth)
    save_result(out_dir, result)
    register_model(out_dir, alias="retrained")
    per_class = synth["label"].value_counts().reindex(params.classes, fill_value=0)
    metrics = {**result.val_metrics, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
               "n_real": len(train), "n_synthetic_used": len(synth), "n_synthetic_reviewed_usable": n_reviewed,
               **{f"n_synthetic_{c}": int(n) for c, n in per_class.items()}}
    return RetrainOutputs(out_dir / MODEL_FILE, out_dir / META_FILE, out_dir / HISTORY_FILE, metrics)


if __name__ == "__main__":
    cli_main("retrain")
