"""Evaluation sets: a split's images held in memory with its label indices, and scoring a model on one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from tasks.classify.data import load_images
from tasks.classify.models import ClassifierNet
from tasks.classify.train import predict_proba
from tasks.evaluation.stats import classification_metrics
from tasks.params import Params


@dataclass
class EvalSet:
    """Images (uint8) and label indices of one evaluation split."""

    table: pd.DataFrame
    images: torch.Tensor
    y: np.ndarray



def eval_set(table: pd.DataFrame, params: Params, cache: dict | None = None) -> EvalSet:
    """A split's table (``path,label``) with its images decoded (through ``cache`` when given)."""
    y = np.array([params.classes.index(lbl) for lbl in table["label"]])
    return EvalSet(table, load_images(table["path"].tolist(), params.ingest.channels, params.ingest.image_size,
                                      cache), y)


def score(model: ClassifierNet, data: EvalSet, classes: Sequence[str],
          ordered: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """Metrics (``classification_metrics``; ordinal ones for ordered classes) and the probabilities."""
    proba = predict_proba(model, data.images)
    return classification_metrics(data.y, proba, classes, ordered), proba
