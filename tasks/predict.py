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

Before review, the generated set is checked against the real train images (``caption/train``, the images the
baseline learned from), both in the baseline's penultimate feature space:

- the **quality gate** per class (``tasks.generation.quality``): FID-like distance and k-NN precision/recall of the
  class's generated images vs its real train images, in ``class_quality.csv``; a class with precision below
  ``predict.min_class_precision`` is flagged out of the real manifold (review app banner, evaluate report);
- the **memorisation check** per image (``tasks.generation.memorisation``): the nearest real train image by pHash
  and by feature distance, as columns of predictions.csv; ``memorised`` images (copies, near-copies) never reach
  the review queue nor retrain, and are counted in the metrics and the report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
import pandas as pd

from tasks.classify.calibration import apply_temperature, calibration_report, fit_temperature
from tasks.classify.data import load_images
from tasks.classify.models import load_model
from tasks.classify.train import predict_proba
from tasks.generation.memorisation import (feature_threshold, image_phash, nearest_real, real_spacing,
                                          warn_if_thresholds_reach_real)
from tasks.generation.quality import class_quality, image_features, quality_metrics
from tasks.io import atomic_write_csv
from tasks.params import Params
from tasks.stage import StageError, cli_main
from tasks.tables import (RELIABILITY_FILE, read_generated, read_imagefolder, write_class_quality,
                          write_predictions)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictOutputs:
    predictions: Path
    class_quality: Path
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
    real = RealTrain.load(params, net, meta, Path(caption) / "train")
    gen_features = image_features(net, images, params.predict.batch_size)
    quality = check_class_quality(params, gen, gen_features, real)
    quality_path = write_class_quality(out_dir, quality, params.classes)
    memorised, memorisation = check_memorisation(params, gen, gen_features, real)
    table = table.merge(memorised, on="file_name", how="left", validate="one_to_one")
    path = write_predictions(out_dir, table, params.classes)
    metrics = {"n_predicted": len(table), "agreement_rate": float(table["agrees"].mean()),
               "mean_confidence": float(table["confidence"].mean()), "n_disagree": int((~table["agrees"]).sum()),
               "mean_confidence_calibrated": float(table["confidence_calibrated"].mean()), **calibration,
               **quality_metrics(quality), **memorisation}
    log.info("predict: %d images, agreement %.3f, %d memorised, %d classes out of the real manifold", len(table),
             metrics["agreement_rate"], metrics["n_memorised"], metrics["n_classes_out_of_manifold"])
    return PredictOutputs(path, quality_path, metrics)


@dataclass(frozen=True)
class RealTrain:
    """The real train images the generated set is checked against: names, labels, features, pHashes."""

    names: list[str]
    labels: list[str]
    features: torch.Tensor
    phashes: list[str]

    @classmethod
    def load(cls, params: Params, net: object, meta: dict, folder: Path) -> "RealTrain":
        table = read_imagefolder(folder, params.classes)  # an empty split fails its GX suite here
        images = load_images(table["path"].tolist(), int(meta["channels"]), int(meta["image_size"]))
        names = [Path(p).relative_to(Path(folder).resolve()).as_posix() for p in table["path"]]
        return cls(names, table["label"].tolist(), image_features(net, images, params.predict.batch_size),
                   _phashes(params, table["path"]))


def _phashes(params: Params, paths: Sequence[str]) -> list[str]:
    """Each file's pHash after ingest's normalisation (the generated and the real side hash alike)."""
    out = []
    for p in paths:
        with Image.open(p) as img:
            out.append(image_phash(img, params.ingest.image_size, params.ingest.channels))
    return out


def check_class_quality(params: Params, gen: pd.DataFrame, gen_features: torch.Tensor,
                        real: RealTrain) -> pd.DataFrame:
    """The per-class quality gate table (``class_quality.csv``); flagged classes are logged as warnings."""
    q = params.predict
    table = class_quality(gen_features, gen["intended_label"].tolist(), real.features, real.labels, params.classes,
                          neighborhood=q.prc_neighborhood, min_precision=q.min_class_precision)
    for row in table[table["out_of_manifold"]].itertuples(index=False):
        log.warning("quality gate: class %r is out of the real manifold: %s", row[0], row.note)
    return table


def check_memorisation(params: Params, gen: pd.DataFrame, gen_features: torch.Tensor,
                       real: RealTrain) -> tuple[pd.DataFrame, dict[str, float]]:
    """Memorisation columns (``file_name`` + ``MEMORISATION_COLUMNS``) per generated image, and their metrics."""
    q = params.predict
    gen_hashes = _phashes(params, gen["path"])
    real_features = real.features.numpy()
    spacing = real_spacing(real.phashes, real_features)
    max_feature = feature_threshold(spacing, q.memorisation_feature_ratio)
    warn_if_thresholds_reach_real(spacing, q.memorisation_phash_distance, max_feature)
    table = nearest_real(gen_hashes, gen_features.numpy(), real.names, real.phashes, real_features,
                         phash_distance=q.memorisation_phash_distance, feature_distance=max_feature)
    table.insert(0, "file_name", gen["file_name"].to_numpy())
    flagged = table["memorised"]
    if flagged.any():
        log.warning("memorisation check: %d generated images are copies or near-copies of real train images "
                    "(kept out of review and retrain), e.g. %s", int(flagged.sum()),
                    table.loc[flagged, ["file_name", "nearest_real"]].head(3).to_dict("records"))
    per_class = table.assign(label=gen["intended_label"].to_numpy()).loc[flagged, "label"].value_counts()
    metrics = {"n_memorised": int(flagged.sum()),
               "n_memorised_by_phash": int((table["phash_distance"] <= q.memorisation_phash_distance).sum()),
               "n_memorised_by_feature": int((table["feature_distance"] <= max_feature).sum()),
               "memorisation_feature_threshold": round(max_feature, 6),
               "min_phash_distance": int(table["phash_distance"].min()),
               "min_feature_distance": round(float(table["feature_distance"].min()), 6),
               **{f"n_memorised_{c}": int(per_class.get(c, 0)) for c in params.classes},
               **{k: round(v, 6) for k, v in spacing.items() if not np.isnan(v)}}
    return table, metrics


if __name__ == "__main__":
    cli_main("predict")
