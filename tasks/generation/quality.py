"""The per-class quality gate: is each class's generated set inside the real train images' manifold?

Both sets are embedded with the frozen baseline classifier (its penultimate layer, the feature space evaluate's
fidelity uses without Inception weights). Per class, the generated images of that class are compared with the
real train images of that class:

- ``fid``: the Fréchet distance between Gaussians fitted to the two feature sets (FID-like; with a few dozen real
  images per class it is biased upward and only comparable between runs of one data set);
- ``precision`` / ``recall``: k-NN manifold estimates of Kynkäänniemi et al. (2019): precision = share of
  generated images inside some real image's k-NN ball, recall = share of real images inside some generated
  image's ball.

The maths is torch-fidelity's own feature-level code (``fid_features_to_statistics``, ``prc_features_to_metric``),
the same implementation ``tasks.evaluation.fidelity`` runs on images.

Rule: a class is **out of the real manifold** when its precision is below ``predict.min_class_precision``: fewer
than that share of its generated images look like any real image of the class. A class with too few images for
the statistic (fewer than k + 1 real or generated) gets NaN and is not flagged; its ``note`` says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

#: Columns of ``class_quality.csv`` (validated by the ``class_quality`` suite).
CLASS_QUALITY_COLUMNS = ("class", "n_generated", "n_real", "fid", "precision", "recall", "out_of_manifold", "note")


@torch.no_grad()
def image_features(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Penultimate features (float64, N×D, on the CPU) of uint8 images N×C×H×W, in eval mode."""
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(f"image_features expects uint8 images N×C×H×W, got {tuple(images.shape)} {images.dtype}")
    net.eval()
    device = next(net.parameters()).device
    out = [net.features(images[i:i + batch_size].to(device).float().div_(255)).double().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, 0), dtype=torch.float64)


def feature_fidelity(generated: torch.Tensor, real: torch.Tensor, neighborhood: int) -> dict[str, float]:
    """FID-like distance and k-NN precision/recall of ``generated`` vs ``real`` features; NaN where too few rows."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    if generated.ndim != 2 or real.ndim != 2 or (len(generated) and len(real) and generated.shape[1] != real.shape[1]):
        raise ValueError(f"feature_fidelity needs two N×D feature matrices, got {tuple(generated.shape)} and "
                         f"{tuple(real.shape)}")
    out = {"fid": math.nan, "precision": math.nan, "recall": math.nan}
    if len(generated) >= 2 and len(real) >= 2:
        out["fid"] = float(fid_statistics_to_metric(fid_features_to_statistics(generated),
                                                    fid_features_to_statistics(real), False)["frechet_inception_distance"])
    if len(generated) > neighborhood and len(real) > neighborhood:
        prc = prc_features_to_metric(generated, real, prc_neighborhood=neighborhood, prc_batch_size=10000,
                                     save_cpu_ram=True, verbose=False)
        out["precision"], out["recall"] = float(prc["precision"]), float(prc["recall"])
    return out


def class_quality(gen_features: torch.Tensor, gen_labels: Sequence[str], real_features: torch.Tensor,
                  real_labels: Sequence[str], classes: Sequence[str], *, neighborhood: int,
                  min_precision: float) -> pd.DataFrame:
    """One row per class (``CLASS_QUALITY_COLUMNS``): fidelity of its generated images vs its real train images."""
    gen_labels, real_labels = np.asarray(gen_labels), np.asarray(real_labels)
    if len(gen_labels) != len(gen_features) or len(real_labels) != len(real_features):
        raise ValueError(f"labels and features differ in length: generated {len(gen_labels)} vs "
                         f"{len(gen_features)}, real {len(real_labels)} vs {len(real_features)}")
    rows = []
    for c in classes:
        g, r = gen_features[gen_labels == c], real_features[real_labels == c]
        stats = feature_fidelity(g, r, neighborhood)
        note = ""
        if math.isnan(stats["precision"]):
            note = (f"too few images for k-NN precision (k={neighborhood}: needs > {neighborhood} generated and "
                    f"real, has {len(g)} and {len(r)}); not judged")
        flagged = not math.isnan(stats["precision"]) and stats["precision"] < min_precision
        if flagged:
            note = (f"precision {stats['precision']:.3f} < predict.min_class_precision {min_precision}: the "
                    "generated images of this class lie outside the real train images' manifold")
        rows.append({"class": c, "n_generated": len(g), "n_real": len(r), **stats, "out_of_manifold": flagged,
                     "note": note})
    return pd.DataFrame(rows, columns=list(CLASS_QUALITY_COLUMNS))


def quality_metrics(table: pd.DataFrame) -> dict[str, float]:
    """metrics/predict.json entries: per-class precision/recall/FID and how many classes were flagged."""
    out: dict[str, float] = {"n_classes_out_of_manifold": int(table["out_of_manifold"].sum())}
    for row in table.itertuples(index=False):
        for key in ("fid", "precision", "recall"):
            value = getattr(row, key)
            if not math.isnan(value):  # dvc metrics and MLflow refuse NaN
                out[f"class_{key}_{row[0]}"] = round(float(value), 6)
    return out
