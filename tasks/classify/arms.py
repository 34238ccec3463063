"""The training arms of the comparison: which synthetic rows an arm trains on, and how it trains on them.

Arms differ in data only (``real+augment`` also in its augmentation policy): every arm trains with the one
recipe of ``tasks.classify.train``. Synthetic pools: ``reviewed_synthetic`` (the review's labels),
``intended_synthetic`` (the prompted class), ``pseudo_synthetic`` (the baseline's confident predictions).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from tasks.classify.train import TrainResult, train_classifier
from tasks.params import Params
from tasks.sections import Baseline
from tasks.stage import StageError

log = logging.getLogger(__name__)


def reviewed_synthetic(generated: pd.DataFrame, corrections: pd.DataFrame) -> pd.DataFrame:
    """Synthetic training rows ``file_name,label,path``: accepted or corrected items, labelled ``final_label``.

    Rejected items and generated images nobody reviewed are left out; so is a correction for an image that is not
    an ``ok`` generated image (it was filtered after review, or the manifest changed), and one whose ``sha256`` is
    not the manifest's for that file: the label was given to a different picture (the image was regenerated).
    """
    for name, df in (("generate manifest", generated), ("corrections", corrections)):
        if "sha256" not in df:
            raise StageError(f"{name} has no sha256 column: reviewed labels cannot be matched to image content")
    kept = corrections[corrections["decision"].isin(["accept", "correct"])]
    unlabeled = kept["final_label"].fillna("").eq("")
    if unlabeled.any():  # the review_corrections suite forbids this; a hand-made table may not have run it
        raise StageError(f"accepted/corrected items without final_label: {kept.loc[unlabeled, 'file_name'].tolist()[:10]}")
    table = pd.DataFrame({"file_name": kept["file_name"].to_numpy(), "label": kept["final_label"].to_numpy(),
                          "reviewed_sha256": kept["sha256"].fillna("").astype(str).to_numpy()})
    merged = table.merge(generated[["file_name", "path", "sha256"]], on="file_name", how="inner")
    dropped = len(table) - len(merged)
    if dropped:
        log.warning("%d reviewed items are not ok generated images; left out", dropped)
    same = merged["reviewed_sha256"].eq(merged["sha256"].fillna("").astype(str)) & merged["reviewed_sha256"].ne("")
    if not same.all():
        log.warning("%d reviewed items were decided on a different image than the one now at their file name "
                    "(sha256 differs from the generate manifest: regenerated); left out, review them again "
                    "(e.g. %s)", int((~same).sum()), merged.loc[~same, "file_name"].tolist()[:3])
    merged = merged[same].drop(columns=["reviewed_sha256", "sha256"])
    return merged.sort_values("file_name", kind="stable").reset_index(drop=True)


def drop_memorised(synthetic: pd.DataFrame, memorised: set[str]) -> pd.DataFrame:
    """``synthetic`` without the images predict's memorisation check flagged as copies of real train images
    (``memorised`` file names): private real images never come back into training disguised as synthetic."""
    copies = synthetic["file_name"].isin(memorised)
    if copies.any():
        log.warning("%d reviewed synthetic images are copies of real train images (predict: memorised); left out "
                    "(e.g. %s)", int(copies.sum()), synthetic.loc[copies, "file_name"].tolist()[:3])
    return synthetic[~copies].reset_index(drop=True)


def select_synthetic(synthetic: pd.DataFrame, n_real: int, ratio: float, cap: int | None,
                     seed: int) -> pd.DataFrame:
    """At most ``ratio * n_real`` (and ``cap``) synthetic rows, drawn class-balanced and reproducibly."""
    if ratio > 10:
        log.warning("retrain.synthetic_ratio %.1f is above 10:1, where published gains saturate", ratio)
    limit = math.floor(ratio * n_real)
    if cap is not None:
        limit = min(limit, cap)
    if len(synthetic) <= limit:
        return synthetic.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    # Round-robin over classes (each shuffled) keeps the classes balanced when the limit bites.
    queues = [list(rng.permutation(g.index.to_numpy())) for _, g in synthetic.groupby("label", sort=True)]
    picked: list[int] = []
    while len(picked) < limit:
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return synthetic.loc[sorted(picked)].reset_index(drop=True)



def synthetic_arm(params: Params, reviewed: pd.DataFrame, n_real: int, seed: int) -> pd.DataFrame:
    """The reviewed synthetic rows one training run uses: ``select_synthetic`` with the retrain section's limits."""
    r = params.retrain
    return select_synthetic(reviewed, n_real, r.synthetic_ratio, r.synthetic_cap, seed)


def intended_synthetic(generated: pd.DataFrame) -> pd.DataFrame:
    """Every ``ok`` generated image labelled with the class it was prompted for: no review, no classifier."""
    table = pd.DataFrame({"file_name": generated["file_name"].to_numpy(),
                          "label": generated["intended_label"].to_numpy(), "path": generated["path"].to_numpy()})
    return table.sort_values("file_name", kind="stable").reset_index(drop=True)


def pseudo_synthetic(generated: pd.DataFrame, predictions: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """``ok`` generated images labelled by the baseline's prediction when its confidence (calibrated when predict
    calibrated it) is at least ``threshold``: self-training without a person."""
    column = "confidence_calibrated" if "confidence_calibrated" in predictions else "confidence"
    preds = predictions[["file_name", "pred_label", column]].rename(columns={column: "conf"})
    merged = generated[["file_name", "path"]].merge(preds, on="file_name", how="inner")
    missing = len(generated) - len(merged)
    if missing:
        log.warning("%d ok generated images have no prediction (predict ran on another manifest); left out "
                    "of the pseudo-label arm", missing)
    kept = merged[pd.to_numeric(merged["conf"], errors="coerce") >= threshold]
    table = pd.DataFrame({"file_name": kept["file_name"].to_numpy(), "label": kept["pred_label"].to_numpy(),
                          "path": kept["path"].to_numpy()})
    return table.sort_values("file_name", kind="stable").reset_index(drop=True)


def strong_recipe(cfg: Baseline) -> Baseline:
    """The recipe with the strong classic augmentation policy (the ``real+augment`` control arm)."""
    a = cfg.augment
    return cfg.model_copy(update={"augment": a.model_copy(update={"policy": a.strong_policy, "mix": a.strong_mix})})


def train_arm(params: Params, real_train: pd.DataFrame, val: pd.DataFrame, synthetic: pd.DataFrame | None = None,
              *, pretrain: bool | None = None, strong_augment: bool = False, backbone: str | None = None,
              seed: int | None = None, metric_prefix: str = "", image_cache: dict | None = None) -> TrainResult:
    """One arm of the comparison with the baseline recipe: real only (``synthetic`` None/empty) or real +
    synthetic (weighted ``retrain.synthetic_weight``; or, ``pretrain`` — default ``retrain.pretrain_on_synthetic``
    — pretrained on synthetic, then fine-tuned on real). ``strong_augment``: the strong policy (real+augment)."""
    cfg = params.baseline if backbone is None else params.baseline.model_copy(update={"backbone": backbone})
    if strong_augment:
        cfg = strong_recipe(cfg)
    seed = params.seed if seed is None else seed
    pretrain = params.retrain.pretrain_on_synthetic if pretrain is None else pretrain
    common = {"classes": params.classes, "channels": params.ingest.channels,
              "image_size": params.ingest.image_size, "seed": seed, "image_cache": image_cache}
    if synthetic is None or synthetic.empty:
        return train_classifier(cfg, real_train, val, metric_prefix=metric_prefix, **common)
    synth = synthetic.assign(weight=params.retrain.synthetic_weight, source="synthetic")
    if not pretrain:
        mixed = pd.concat([real_train, synth[real_train.columns.intersection(synth.columns)]], ignore_index=True)
        return train_classifier(cfg, mixed, val, metric_prefix=metric_prefix, **common)
    pre = train_classifier(cfg, synth, val, epochs=params.retrain.pretrain_epochs,
                           metric_prefix=f"{metric_prefix}pretrain_", missing_classes_ok=True, **common)
    result = train_classifier(cfg, real_train, val, init_state=pre.model.state_dict(),
                              metric_prefix=metric_prefix, **common)
    result.meta.update(pretrained_on_synthetic=len(synth), n_train_synthetic=len(synth))
    return result
