"""evaluate: did synthetic data help? The only stage that reads the held-out real test split.

1. The deck's table, made honest: each backbone in ``evaluate.backbones`` × {real only, real + synthetic} ×
   {val, test}, trained once per seed in ``evaluate.seeds`` with the one training implementation (the baseline and
   retrain stage models are reused as the arms of seed ``params.seed``), reported as mean ± t-interval, and the
   paired difference (real + synthetic − real only, same seed) with its interval and a plain verdict.
2. The stage models on test: accuracy, balanced accuracy, macro-F1, per-class precision/recall, ROC AUC (OvR),
   confusion matrices.
3. Synthetic-vs-real quality with torch-fidelity (FID, KID, precision/recall; overall and per class), offline.
4. Review cost: corrections and rejections per 100 generated images.
5. ``reports/report.md`` + self-contained ``report.html`` (``tasks.evaluation.report``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.classify.arms import drop_memorised, reviewed_synthetic, synthetic_arm, train_arm
from tasks.classify.models import HISTORY_FILE, load_model
from tasks.classify.train import TrainResult
from tasks.evaluation.checks import generation_checks
from tasks.evaluation.fidelity import fidelity_table
from tasks.evaluation.sets import EvalSet, eval_set, score
from tasks.evaluation.stats import ARMS, METRICS, paired_differences, review_cost, summarise
from tasks.io import atomic_write_csv, atomic_write_json
from tasks.params import Params
from tasks.stage import cli_main
from tasks.tables import (memorised_files, read_corrections, read_generated, read_imagefolder,
                          read_labelled_split)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateOutputs:
    results: Path
    summary: Path
    report_md: Path
    report_html: Path
    metrics: dict[str, float] = field(default_factory=dict)



def _stage_result(folder: Path) -> TrainResult:
    model, meta = load_model(folder)
    hist_path = folder / HISTORY_FILE
    history = pd.read_csv(hist_path) if hist_path.is_file() else pd.DataFrame()
    return TrainResult(model, history, int(meta.get("best_epoch", 0)), dict(meta.get("val_metrics", {})), meta)



def run_arms(params: Params, train: pd.DataFrame, val_set: EvalSet, test_set: EvalSet, synthetic: pd.DataFrame,
             stage_models: dict[str, TrainResult]) -> pd.DataFrame:
    """Train (or reuse) every backbone × seed × arm and score it on val and test: one row per split."""
    from tasks.progress import progress

    rows = []
    jobs = [(b, s, a) for b in params.evaluate.backbones for s in params.evaluate.seeds for a in ARMS]
    for backbone, seed, arm in progress(jobs, desc="evaluate arms", unit="model"):
        synth = synthetic_arm(params, synthetic, len(train), seed) if arm == ARMS[1] else None
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
        retrain: Path, predict: Path | None = None, out_dir: Path) -> EvaluateOutputs:
    """Evaluate baseline vs retrained on the held-out test set over seeds; write results, summary and report.

    With ``predict`` (its folder): memorised images are dropped from the synthetic arm as in retrain, and the
    report shows predict's quality gate and memorisation counts."""
    from tasks.evaluation import report

    classes = params.classes
    train = read_imagefolder(caption / "train", classes)
    val_set, test_set = eval_set(read_imagefolder(caption / "val", classes), params), \
        eval_set(read_labelled_split(test, classes), params)
    gen, corrections = read_generated(generated, classes), read_corrections(review, classes)
    synthetic = reviewed_synthetic(gen, corrections)
    if predict is not None:
        synthetic = drop_memorised(synthetic, memorised_files(predict, classes))
    stage_models = {ARMS[0]: _stage_result(baseline), ARMS[1]: _stage_result(retrain)}
    results = run_arms(params, train, val_set, test_set, synthetic, stage_models)
    conf = params.evaluate.confidence
    summary, diffs = summarise(results, conf), paired_differences(results, conf)
    stage_test, stage_proba = {}, {}
    for arm, res in stage_models.items():
        stage_test[arm], stage_proba[arm] = score(res.model, test_set, classes)
    used = synthetic_arm(params, synthetic, len(train), params.seed)
    synth_set = eval_set(used, params)
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
                   "n_synthetic_used": len(used), "n_synthetic_reviewed_usable": len(synthetic),
                   "generation_checks": None if predict is None else generation_checks(params, predict)}
    atomic_write_json(out_dir / "summary.json", summary_obj)
    md, html = report.write_report(params.paths.reports, params=params, summary=summary_obj,
                                   stage_models=stage_models, stage_proba=stage_proba, test_set=test_set,
                                   real_train=eval_set(train, params), synth_set=synth_set)
    _log_report(params.paths.reports)
    log.info("evaluate: %s", diffs.to_string(index=False))
    return EvaluateOutputs(out_dir / "results.csv", out_dir / "summary.json", md, html, headline)



if __name__ == "__main__":
    cli_main("evaluate")
