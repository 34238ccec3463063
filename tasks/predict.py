"""predict: the baseline labels every kept (``ok``) generated image, and orders them for review.

Per image: a probability per class, the predicted label, confidence (top-1 probability), margin (top-1 − top-2),
entropy (nats) and whether the prediction agrees with the prompt's intended class. ``review_rank`` puts the items
a person should look at first on top: disagreements first, then the least certain (smallest margin), ties broken
by file name so the order is reproducible.

Calibration (``predict.calibration: temperature``): one temperature fitted by NLL on the real val split
(``tasks.classify.calibration``) rescales every image's probabilities; predictions.csv keeps the raw columns and
adds ``confidence_calibrated``, ``margin_calibrated`` and ``entropy_calibrated``; ``reliability.csv`` holds the
reliability diagram of the val split before and after, metrics the temperature and the ECE before/after. The
review order and accept-confident use the calibrated numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.classify.calibration import apply_temperature, calibration_report, fit_temperature
from tasks.classify.data import load_images
from tasks.classify.models import load_model
from tasks.classify.train import predict_proba
from tasks.io import atomic_write_csv
from tasks.params import Params
from tasks.stage import StageError, cli_main
from tasks.tables import RELIABILITY_FILE, read_generated, read_imagefolder, write_predictions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictOutputs:
    predictions: Path
    metrics: dict[str, float] = field(default_factory=dict)


def uncertainty(proba: np.ndarray) -> pd.DataFrame:
    """confidence, margin and entropy of each row of an N×K probability matrix."""
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"expected an N×K probability matrix with K >= 2, got shape {proba.shape}")
    top = np.sort(proba, axis=1)[:, ::-1]
    entropy = -np.sum(np.where(proba > 0, proba * np.log(np.clip(proba, 1e-300, None)), 0.0), axis=1)
    return pd.DataFrame({"confidence": top[:, 0], "margin": top[:, 0] - top[:, 1], "entropy": entropy})


def review_order(table: pd.DataFrame) -> pd.Series:
    """1-based review rank: disagreements first, then ascending (calibrated, when present) margin, then file_name."""
    margin = "margin_calibrated" if "margin_calibrated" in table else "margin"
    order = table.sort_values(["agrees", margin, "file_name"], kind="stable").index
    return pd.Series(np.arange(1, len(table) + 1), index=order).reindex(table.index)


def prediction_table(generated: pd.DataFrame, proba: np.ndarray, classes: Sequence[str],
                     temperature: float = 1.0) -> pd.DataFrame:
    """The predictions.csv table for ``generated`` (``file_name,intended_label``) and its probabilities; the
    ``*_calibrated`` columns are the uncertainty of the probabilities rescaled by ``temperature``."""
    if len(generated) != len(proba):
        raise ValueError(f"{len(generated)} images but {len(proba)} probability rows")
    pred = np.asarray(classes)[proba.argmax(1)]
    df = pd.DataFrame({"file_name": generated["file_name"].to_numpy(),
                       "intended_label": generated["intended_label"].to_numpy(), "pred_label": pred})
    calibrated = uncertainty(apply_temperature(proba, temperature)).add_suffix("_calibrated")
    df = pd.concat([df, uncertainty(proba), calibrated], axis=1)
    df["agrees"] = df["pred_label"] == df["intended_label"]
    for i, c in enumerate(classes):
        df[f"p_{c}"] = proba[:, i]
    df["review_rank"] = review_order(df)
    return df.sort_values("review_rank").reset_index(drop=True)


def calibrate(params: Params, net: object, meta: dict, caption: Path, out_dir: Path) -> tuple[float, dict]:
    """Fit the temperature on the real val split (``caption/val``); write ``reliability.csv``; return (T, metrics).

    ``predict.calibration: none`` keeps T = 1 (the raw softmax) and still measures the ECE on val.
    """
    val = read_imagefolder(Path(caption) / "val", params.classes)  # an empty split fails its GX suite here
    images = load_images(val["path"].tolist(), int(meta["channels"]), int(meta["image_size"]))
    proba = predict_proba(net, images, params.predict.batch_size)
    labels = val["label"].map({c: i for i, c in enumerate(params.classes)}).to_numpy()
    temperature = fit_temperature(proba, labels) if params.predict.calibration == "temperature" else 1.0
    metrics, table = calibration_report(proba, labels, temperature, params.predict.calibration_bins)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_csv(Path(out_dir) / RELIABILITY_FILE, table)
    log.info("calibration on %d val images: T=%.3f, ECE %.3f -> %.3f", len(labels), temperature,
             metrics["ece_raw"], metrics["ece_calibrated"])
    return temperature, metrics


def run(params: Params, *, model: Path, generated: Path, caption: Path, out_dir: Path) -> PredictOutputs:
    """Label every ok generated image with the baseline (calibrated on caption/val) and write predictions.csv."""
    net, meta = load_model(model)
    if list(meta["classes"]) != list(params.classes):
        raise StageError(f"baseline model classes {meta['classes']} differ from params classes {list(params.classes)}"
                         ": re-run the baseline stage")
    gen = read_generated(generated, params.classes)
    if gen.empty:
        raise StageError(f"no ok generated images in {generated}/manifest.csv: nothing to label")
    temperature, calibration = calibrate(params, net, meta, caption, out_dir)
    images = load_images(gen["path"].tolist(), int(meta["channels"]), int(meta["image_size"]))
    table = prediction_table(gen, predict_proba(net, images, params.predict.batch_size), params.classes,
                             temperature)
    path = write_predictions(out_dir, table, params.classes)
    metrics = {"n_predicted": len(table), "agreement_rate": float(table["agrees"].mean()),
               "mean_confidence": float(table["confidence"].mean()), "n_disagree": int((~table["agrees"]).sum()),
               "mean_confidence_calibrated": float(table["confidence_calibrated"].mean()), **calibration}
    log.info("predict: %d images, agreement %.3f", len(table), metrics["agreement_rate"])
    return PredictOutputs(path, metrics)


if __name__ == "__main__":
    cli_main("predict")
