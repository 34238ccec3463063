"""evaluate: did synthetic data help? The only stage that reads the held-out real test split.

1. The deck's table, made honest: each backbone in ``evaluate.backbones`` × {real only, real + synthetic} ×
   {val, test}, trained once per seed in ``evaluate.seeds`` with the one training implementation (the baseline and
   retrain stage models are reused as the arms of seed ``params.seed``), reported as mean ± t-interval, and the
   paired difference (real + synthetic − real only, same seed) with its interval and a plain verdict.
2. The stage models on test: accuracy, balanced accuracy, macro-F1, per-class precision/recall, ROC AUC (OvR),
   confusion matrices.
3. Synthetic-vs-real quality with torch-fidelity (FID, KID, precision/recall; overall and per class), offline.
4. Review cost: corrections and rejections per 100 generated images.
5. ``reports/report.md`` + self-contained ``report.html`` (tasks/report.py).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tasks.classifier import HISTORY_FILE, MODEL_FILE, ClassifierNet, TrainResult, load_images, load_model, \
    predict_proba, read_corrections, read_generated, read_imagefolder, resolve_under, reviewed_synthetic, \
    select_synthetic, train_arm
from tasks.io import atomic_write_csv, atomic_write_json
from tasks.params import Params
from tasks.review import intended_agreement
from tasks.stage import StageError, cli_main
from tasks.validation import validate

log = logging.getLogger(__name__)

ARMS = ("real_only", "real_synthetic")  # arm ids (also MLflow-safe metric-key parts)
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
EXTRACTOR_NAME = "synthloop-baseline-penultimate"


@dataclass(frozen=True)
class EvaluateOutputs:
    results: Path
    summary: Path
    report_md: Path
    report_html: Path
    metrics: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ statistics


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t-distribution confidence interval ``(mean, low, high)`` of ``values``."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < 2 or not np.isfinite(x).all():
        raise ValueError(f"a confidence interval needs at least two finite values, got {x.tolist()}")
    mean = float(x.mean())
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    """Plain words for a paired-difference interval (retrained − baseline)."""
    if high < 0:
        return "synthetic data hurt"
    if low > 0:
        return "synthetic data helped"
    return "no significant difference"


def summarise(results: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Mean ± CI of each metric per backbone × arm × split over seeds."""
    rows = []
    for (backbone, arm, split), g in results.groupby(["backbone", "arm", "split"], sort=False):
        row: dict[str, Any] = {"backbone": backbone, "arm": arm, "split": split, "n_seeds": len(g)}
        for m in METRICS:
            vals = g[m].dropna()
            mean, lo, hi = t_interval(vals, confidence) if len(vals) >= 2 else (float(vals.mean()), np.nan, np.nan)
            row.update({f"{m}_mean": mean, f"{m}_low": lo, f"{m}_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(results: pd.DataFrame, confidence: float, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Per backbone × split: mean of (real_synthetic − real_only) over seeds, its CI, and the verdict."""
    wide = results.pivot_table(index=["backbone", "split", "seed"], columns="arm", values=metric).dropna()
    rows = []
    for (backbone, split), g in wide.groupby(level=["backbone", "split"], sort=False):
        diff = (g[ARMS[1]] - g[ARMS[0]]).to_numpy()
        mean, lo, hi = t_interval(diff, confidence)
        rows.append({"backbone": backbone, "split": split, "metric": metric, "n_seeds": len(diff), "diff_mean": mean,
                     "diff_low": lo, "diff_high": hi, "verdict": verdict(lo, hi)})
    return pd.DataFrame(rows)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """accuracy, balanced accuracy, macro-F1, ROC AUC (OvR; binary: of the second class) and per-class P/R."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support, \
        roc_auc_score

    k = len(classes)
    y_pred = proba.argmax(1)
    out = {"accuracy": accuracy_score(y_true, y_pred), "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
           "macro_f1": f1_score(y_true, y_pred, labels=range(k), average="macro", zero_division=0)}
    if len(np.unique(y_true)) < 2:
        out["roc_auc"] = float("nan")  # undefined with one class present
    elif k == 2:
        out["roc_auc"] = roc_auc_score(y_true, proba[:, 1])
    else:
        out["roc_auc"] = roc_auc_score(y_true, proba, multi_class="ovr", labels=list(range(k)))
    p, r, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=range(k), zero_division=0)
    out.update({f"precision_{c}": p[i] for i, c in enumerate(classes)})
    out.update({f"recall_{c}": r[i] for i, c in enumerate(classes)})
    return {key: float(v) for key, v in out.items()}


def review_cost(generated: pd.DataFrame, corrections: pd.DataFrame) -> dict[str, float]:
    """Corrections and rejections per 100 kept generated images (the human work synthetic data costs), and the
    share of kept images whose final label is the class they were generated for (the generator's fidelity)."""
    n = len(generated)
    if n == 0:
        raise ValueError("no generated images: review cost is undefined")
    counts = corrections["decision"].value_counts()
    agreement = intended_agreement(corrections)
    return {"n_generated_ok": n, "n_reviewed": len(corrections),
            **{f"n_{d}": int(counts.get(d, 0)) for d in ("accept", "correct", "reject")},
            "corrections_per_100": 100 * counts.get("correct", 0) / n,
            "rejections_per_100": 100 * counts.get("reject", 0) / n,
            "intended_agreement": float("nan") if agreement is None else agreement}


# ---------------------------------------------------------------------------------------------------- data


@dataclass
class EvalSet:
    """Images (uint8) and label indices of one evaluation split."""

    table: pd.DataFrame
    images: torch.Tensor
    y: np.ndarray


def read_test_split(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    """The held-out test manifest (only this stage may call it) as ``path,label``."""
    manifest = Path(folder) / "manifest.csv"
    if not manifest.is_file():
        raise StageError(f"{manifest} not found: run the ingest stage first (dvc repro ingest)")
    df = pd.read_csv(manifest, dtype={"file_name": str, "label": str}, keep_default_na=False)
    validate(df, "ingest_manifest", classes=classes)
    return pd.DataFrame({"path": [str(resolve_under(folder, f)) for f in df["file_name"]],
                         "label": df["label"].to_numpy(), "file_name": df["file_name"].to_numpy()})


def _eval_set(table: pd.DataFrame, params: Params) -> EvalSet:
    y = np.array([params.classes.index(lbl) for lbl in table["label"]])
    return EvalSet(table, load_images(table["path"].tolist(), params.ingest.channels, params.ingest.image_size), y)


def score(model: ClassifierNet, data: EvalSet, classes: Sequence[str]) -> tuple[dict[str, float], np.ndarray]:
    proba = predict_proba(model, data.images)
    return classification_metrics(data.y, proba, classes), proba


# ---------------------------------------------------------------------------------------------------- arms


def _stage_result(folder: Path) -> TrainResult:
    model, meta = load_model(folder)
    hist_path = folder / HISTORY_FILE
    history = pd.read_csv(hist_path) if hist_path.is_file() else pd.DataFrame()
    return TrainResult(model, history, int(meta.get("best_epoch", 0)), dict(meta.get("val_metrics", {})), meta)


def run_arms(params: Params, train: pd.DataFrame, val_set: EvalSet, test_set: EvalSet, synthetic: pd.DataFrame,
             stage_models: dict[str, TrainResult]) -> pd.DataFrame:
    """Train (or reuse) every backbone × seed × arm and score it on val and test: one row per split."""
    from tqdm import tqdm

    rows = []
    jobs = [(b, s, a) for b in params.evaluate.backbones for s in params.evaluate.seeds for a in ARMS]
    for backbone, seed, arm in tqdm(jobs, desc="evaluate arms", disable=None):
        synth = select_synthetic(synthetic, len(train), params.retrain.synthetic_ratio,
                                 params.retrain.synthetic_cap, seed) if arm == ARMS[1] else None
        reuse = backbone == params.baseline.backbone and seed == params.seed
        if reuse:
            result = stage_models[arm]
        else:
            result = train_arm(params, train, val_set.table, synth, backbone=backbone, seed=seed,
                               metric_prefix=f"{backbone}.{arm}.seed{seed}.")
        for split, data in (("val", val_set), ("test", test_set)):
            metrics, _ = score(result.model, data, params.classes)
            rows.append({"backbone": backbone, "arm": arm, "seed": seed, "split": split, "reused_stage_model": reuse,
                         "n_synthetic": 0 if synth is None else len(synth), "best_epoch": result.best_epoch,
                         **{m: metrics[m] for m in METRICS}})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------- fidelity


def _register_extractor() -> None:
    """Register the frozen-baseline feature extractor with torch-fidelity (once per process)."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if EXTRACTOR_NAME in FEATURE_EXTRACTORS_REGISTRY:
        return

    class FrozenClassifierFeatures(FeatureExtractorBase):
        """Penultimate-layer features of a saved synthloop classifier; weights path = its model.safetensors."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise StageError("the baseline feature extractor needs feature_extractor_weights_path")
            self.net, meta = load_model(Path(feature_extractor_weights_path).parent)
            self.channels, self.size = int(meta["channels"]), int(meta["image_size"])

        @staticmethod
        def get_provided_features_list():
            return ("penultimate",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "penultimate"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return (torch.rand([1, 3, 64, 64]) * 255).to(torch.uint8)

        def forward(self, x):
            x = x.float().div(255)[:, : self.channels]  # torch-fidelity hands over 3 channels; gray ones are equal
            if x.shape[-1] != self.size:
                x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear")
            return (self.net.features(x).double(),)

    torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, FrozenClassifierFeatures)


class _RGBUint8(torch.utils.data.Dataset):
    """uint8 N×C×H×W images as the 3×H×W uint8 tensors torch-fidelity expects."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def fidelity(synthetic: torch.Tensor, real: torch.Tensor, *, extractor: str, weights: Path,
             prc_neighborhood: int = 3) -> dict[str, float]:
    """FID, KID (mean, std) and precision/recall of ``synthetic`` vs ``real`` with a given extractor.

    The KID subset size shrinks to the smaller set; sets too small for a statistic give NaN for it.
    """
    import torch_fidelity

    n = min(len(synthetic), len(real))
    nan = {"fid": math.nan, "kid_mean": math.nan, "kid_std": math.nan, "precision": math.nan, "recall": math.nan}
    if n < 2:
        return nan
    layer = "penultimate" if extractor == EXTRACTOR_NAME else "2048"
    k = min(prc_neighborhood, n - 1)
    res = torch_fidelity.calculate_metrics(
        input1=_RGBUint8(synthetic), input2=_RGBUint8(real), fid=True, kid=True, prc=True,
        feature_extractor=extractor, feature_extractor_weights_path=str(weights), feature_layer_fid=layer,
        feature_layer_kid=layer, feature_layer_prc=layer, kid_subset_size=min(1000, n), prc_neighborhood=k,
        cuda=torch.cuda.is_available(), verbose=False, cache=False, save_cpu_ram=True, rng_seed=2020)
    return {"fid": float(res["frechet_inception_distance"]), "kid_mean": float(res["kernel_inception_distance_mean"]),
            "kid_std": float(res["kernel_inception_distance_std"]), "precision": float(res["precision"]),
            "recall": float(res["recall"])}


def fidelity_table(params: Params, synth: EvalSet, real: EvalSet, baseline_dir: Path) -> tuple[pd.DataFrame, str]:
    """Overall and per-class fidelity rows, and a sentence naming the extractor used."""
    weights = params.evaluate.fid.inception_weights
    if weights is not None:
        if not Path(weights).is_file():
            raise StageError(f"evaluate.fid.inception_weights {weights} is not a file")
        extractor, weights_path = "inception-v3-compat", Path(weights)
        described = f"torch-fidelity InceptionV3 (pool3, 2048-d) with local weights {Path(weights).name}"
    else:
        _register_extractor()
        extractor, weights_path = EXTRACTOR_NAME, baseline_dir / MODEL_FILE
        described = ("the frozen baseline classifier's penultimate layer (registered torch-fidelity extractor "
                     f"'{EXTRACTOR_NAME}'); values are not comparable with published Inception FIDs")
    cap = params.evaluate.fid.max_images
    rows = [{"class": "all", "n_synthetic": len(synth.y), "n_real": len(real.y),
             **fidelity(synth.images[:cap], real.images[:cap], extractor=extractor, weights=weights_path,
                        prc_neighborhood=params.evaluate.fid.prc_neighborhood)}]
    for i, c in enumerate(params.classes):
        s, r = synth.images[synth.y == i][:cap], real.images[real.y == i][:cap]
        rows.append({"class": c, "n_synthetic": len(s), "n_real": len(r),
                     **fidelity(s, r, extractor=extractor, weights=weights_path,
                                prc_neighborhood=params.evaluate.fid.prc_neighborhood)})
    return pd.DataFrame(rows), described


# -------------------------------------------------------------------------------------------------------- run


def _headline(params: Params, summary: pd.DataFrame, diffs: pd.DataFrame, stage_test: dict[str, dict[str, float]],
              fid: pd.DataFrame, cost: dict[str, float]) -> dict[str, float]:
    backbone = params.evaluate.backbones[0]
    s = summary.set_index(["backbone", "arm", "split"])
    d = diffs.set_index(["backbone", "split"]).loc[(backbone, "test")]
    overall = fid.iloc[0]
    out = {"baseline_test_balanced_accuracy_mean": s.loc[(backbone, ARMS[0], "test"), "balanced_accuracy_mean"],
           "retrained_test_balanced_accuracy_mean": s.loc[(backbone, ARMS[1], "test"), "balanced_accuracy_mean"],
           "paired_diff_test_balanced_accuracy": d["diff_mean"], "paired_diff_test_low": d["diff_low"],
           "paired_diff_test_high": d["diff_high"], "fid": overall["fid"], "kid_mean": overall["kid_mean"],
           "fid_precision": overall["precision"], "fid_recall": overall["recall"],
           "corrections_per_100": cost["corrections_per_100"], "rejections_per_100": cost["rejections_per_100"],
           "intended_agreement": cost["intended_agreement"]}
    for arm, m in stage_test.items():
        name = "baseline" if arm == ARMS[0] else "retrained"
        out.update({f"stage_{name}_test_{k}": v for k, v in m.items() if k in METRICS})
    return {k: float(v) for k, v in out.items()}


def _log_report(folder: Path) -> None:
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.log_artifacts(str(folder), "reports")


def run(params: Params, *, test: Path, caption: Path, generated: Path, review: Path, baseline: Path,
        retrain: Path, out_dir: Path) -> EvaluateOutputs:
    """Evaluate baseline vs retrained on the held-out test set over seeds; write results, summary and report."""
    from tasks import report

    classes = params.classes
    train = read_imagefolder(caption / "train", classes)
    val_set, test_set = _eval_set(read_imagefolder(caption / "val", classes), params), \
        _eval_set(read_test_split(test, classes), params)
    gen, corrections = read_generated(generated, classes), read_corrections(review, classes)
    synthetic = reviewed_synthetic(gen, corrections)
    stage_models = {ARMS[0]: _stage_result(baseline), ARMS[1]: _stage_result(retrain)}
    results = run_arms(params, train, val_set, test_set, synthetic, stage_models)
    conf = params.evaluate.confidence
    summary, diffs = summarise(results, conf), paired_differences(results, conf)
    stage_test, stage_proba = {}, {}
    for arm, res in stage_models.items():
        stage_test[arm], stage_proba[arm] = score(res.model, test_set, classes)
    used = select_synthetic(synthetic, len(train), params.retrain.synthetic_ratio, params.retrain.synthetic_cap,
                            params.seed)
    synth_set = _eval_set(used, params)
    fid, extractor = fidelity_table(params, synth_set, test_set, baseline)
    cost = review_cost(gen, corrections)
    headline = _headline(params, summary, diffs, stage_test, fid, cost)

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out_dir / "results.csv", results.round(6))
    pred = pd.DataFrame({"file_name": test_set.table["file_name"], "actual": test_set.table["label"],
                         **{("baseline" if a == ARMS[0] else "retrained"): np.asarray(classes)[p.argmax(1)]
                            for a, p in stage_proba.items()}})
    atomic_write_csv(out_dir / "test_predictions.csv", pred)
    summary_obj = {"headline": headline, "backbone": params.evaluate.backbones[0], "seeds": list(params.evaluate.seeds),
                   "confidence": conf, "arms": summary.to_dict("records"), "paired": diffs.to_dict("records"),
                   "stage_models_test": stage_test, "fidelity": fid.to_dict("records"), "fidelity_extractor": extractor,
                   "review_cost": cost, "n_test": len(test_set.y), "n_val": len(val_set.y), "n_train_real": len(train),
                   "n_synthetic_used": len(used), "n_synthetic_reviewed_usable": len(synthetic)}
    atomic_write_json(out_dir / "summary.json", summary_obj)
    md, html = report.write_report(params.paths.reports, params=params, summary=summary_obj,
                                   stage_models=stage_models, stage_proba=stage_proba, test_set=test_set,
                                   real_train=_eval_set(train, params), synth_set=synth_set)
    _log_report(params.paths.reports)
    log.info("evaluate: %s", diffs.to_string(index=False))
    return EvaluateOutputs(out_dir / "results.csv", out_dir / "summary.json", md, html, headline)


if __name__ == "__main__":
    cli_main("evaluate")
