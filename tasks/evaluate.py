"""evaluate: did synthetic data help, and was the review worth it? The only stage that reads the held-out test split.

1. Arms (``evaluate.arms``), each trained with the one recipe and differing in data only: ``real``,
   ``real+augment`` (strong classic augmentation), ``real+synthetic_intended`` (prompted class, no review),
   ``real+synthetic_pseudo`` (the baseline's confident predictions), ``real+synthetic_reviewed`` (the review's
   labels: retrain's arm) and ``synthetic->real`` (pretrain on reviewed synthetic, fine-tune on real).
2. ``evaluate.repeats`` repeats over what varies between runs: classifier seed, synthetic subset and a re-drawn
   train/val split (``tasks.evaluation.plan``); per arm mean and CI, the paired difference against ``real`` with
   a paired t-test, Holm's correction over the arms, and a verdict in words (``tasks.evaluation.stats``).
3. Two curves: gain vs synthetic images used, and vs review decisions applied (``tasks.evaluation.curves``).
4. Who reviewed (``review_source``), synthetic-vs-real fidelity (torch-fidelity), review cost, predict's checks.
5. ``reports/report.md`` + self-contained ``report.html`` (``tasks.evaluation.report``), recommendation first.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.classify.arms import (drop_memorised, intended_synthetic, pseudo_synthetic, reviewed_synthetic,
                                 synthetic_arm)
from tasks.classify.models import HISTORY_FILE, load_model
from tasks.classify.train import TrainResult
from tasks.evaluation.checks import generation_checks
from tasks.evaluation.curves import curve_table
from tasks.evaluation.fidelity import fidelity_table
from tasks.evaluation.plan import Job, effort_pool, effort_steps, plan_jobs, reviewer_decisions, trainval_splits
from tasks.evaluation.runner import metric_names, run_jobs
from tasks.evaluation.sets import eval_set, score
from tasks.evaluation.source import review_source
from tasks.overrides import describe_layers
from tasks.stage import device_tags
from tasks.evaluation.answer import INTENDED, PSEUDO, REVIEWED
from tasks.evaluation.stats import REFERENCE, arm_slug, paired_differences, review_cost, summarise, versus
from tasks.io import atomic_write_csv, atomic_write_json
from tasks.params import Params
from tasks.stage import cli_main
from tasks.tables import (memorised_files, read_corrections, read_generated, read_imagefolder,
                          read_ingest_manifest, read_labelled_split, read_predictions, read_queue, resolve_under)

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


def _pool(params: Params, trainval: Path) -> pd.DataFrame:
    """The ingest trainval manifest (label, group, source) with each image's path: what repeats re-split."""
    man = read_ingest_manifest(trainval, params.classes)
    return man.assign(path=[str(resolve_under(trainval, f)) for f in man["file_name"]])


def _synthetic_pools(params: Params, gen: pd.DataFrame, corrections: pd.DataFrame, predict: Path,
                     queue: Path | None) -> tuple[dict[str, pd.DataFrame], dict[int, pd.DataFrame]]:
    """The three labelled synthetic pools (memorised images dropped from each) and the review-effort pools."""
    memorised = memorised_files(predict, params.classes)
    pools = {"intended": intended_synthetic(gen), "reviewed": reviewed_synthetic(gen, corrections),
             "pseudo": pseudo_synthetic(gen, read_predictions(predict, params.classes),
                                        params.evaluate.pseudo_threshold)}
    pools = {k: drop_memorised(v, memorised) for k, v in pools.items()}
    for name, table in pools.items():
        if table.empty:
            log.warning("evaluate: the %s synthetic pool is empty; its arms train on real images only", name)
    order = read_queue(queue)["file_name"].tolist() if queue is not None and Path(queue).is_file() else \
        corrections["file_name"].tolist()  # no queue: the order the decisions were written in
    n_reviewer = int(reviewer_decisions(corrections).sum())  # the review effort: automatic decisions cost nothing
    effort = {} if not params.evaluate.curve_repeats else {
        k: drop_memorised(effort_pool(gen, corrections, pools["intended"], order, k), memorised)
        for k in effort_steps(n_reviewer, params.evaluate.effort_fractions)}
    return pools, effort


def _stage_keys(params: Params, jobs: list[Job], baseline: Path, retrain: Path) -> dict[str, TrainResult]:
    """Repeat 0's real arm is the baseline stage model, its reviewed (or synthetic->real) arm the retrain one."""
    retrained_arm = "synthetic->real" if params.retrain.pretrain_on_synthetic else "real+synthetic_reviewed"
    out = {}
    for job in jobs:
        if job.repeat == 0 and job.group == "arms" and job.backbone == params.baseline.backbone:
            if job.name == REFERENCE:
                out[job.key] = _stage_result(baseline)
            elif job.name == retrained_arm:
                out[job.key] = _stage_result(retrain)
    return out


def _headline(params: Params, summary: pd.DataFrame, diffs: pd.DataFrame, stage_test: dict[str, dict[str, float]],
              fid: pd.DataFrame, cost: dict[str, float]) -> dict[str, float]:
    """Flat metrics for dvc/MLflow: per arm test balanced accuracy mean/CI and the paired difference vs real."""
    backbone, metrics = params.evaluate.backbones[0], metric_names(params)
    s = summary[(summary["backbone"] == backbone) & (summary["split"] == "test")].set_index("arm")
    d = diffs[(diffs["backbone"] == backbone) & (diffs["split"] == "test")].set_index("arm")
    out: dict[str, float] = {}
    for arm, row in s.iterrows():
        slug = arm_slug(arm)
        out[f"{slug}_n_repeats"] = row["n_repeats"]
        for m in metrics:
            out.update({f"{slug}_test_{m}_{k}": row[f"{m}_{k}"] for k in ("mean", "low", "high")})
        if arm in d.index:
            out.update({f"{slug}_vs_real_diff_{k}": d.loc[arm, f"diff_{k}"] for k in ("mean", "low", "high")})
            out.update({f"{slug}_vs_real_p": d.loc[arm, "p_value"], f"{slug}_vs_real_p_holm": d.loc[arm, "p_holm"]})
    overall = fid.iloc[0]
    out.update({"fid": overall["fid"], "kid_mean": overall["kid_mean"], "fid_precision": overall["precision"],
                "fid_recall": overall["recall"], "corrections_per_100": cost["corrections_per_100"],
                "rejections_per_100": cost["rejections_per_100"], "intended_agreement": cost["intended_agreement"]})
    for name, m in stage_test.items():
        out.update({f"stage_{name}_test_{k}": v for k, v in m.items() if k in metrics})
    return {k: float(v) for k, v in out.items()}


def _log_report(folder: Path) -> None:
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.log_artifacts(str(folder), "reports")



def _device_words() -> str:
    """Where this evaluation trained, for the report header: the CUDA device, or the CPU fallback said plainly."""
    device = device_tags()["synthloop.device"]
    return device if device != "cpu" else "CPU (no CUDA device visible: the CPU fallback)"


def run(params: Params, *, test: Path, trainval: Path, caption: Path, generated: Path, review: Path,
        queue: Path | None = None, baseline: Path, retrain: Path, predict: Path, out_dir: Path) -> EvaluateOutputs:
    """Train and score every arm × repeat (and the curves) on the held-out test set; write results, summary,
    curves, ``metrics`` and the report. ``review``: corrections.csv (or its folder); ``queue``: queue.csv."""
    from tasks.evaluation import report

    classes, e = params.classes, params.evaluate
    stage_train, stage_val = (read_imagefolder(caption / s, classes) for s in ("train", "val"))
    pool = _pool(params, trainval)
    gen, corrections = read_generated(generated, classes), read_corrections(review, classes)
    pools, effort = _synthetic_pools(params, gen, corrections, predict, queue)
    splits = [trainval_splits(params, stage_train, stage_val, pool, r) for r in range(e.repeats)]
    jobs = plan_jobs(params, splits, pools, effort)
    stage_models = {"baseline": _stage_result(baseline), "retrained": _stage_result(retrain)}
    cache: dict = {}
    test_table = read_labelled_split(test, classes)
    results = run_jobs(params, jobs, test_table, cache, _stage_keys(params, jobs, baseline, retrain))
    arms = results[results["group"] == "arms"]
    summary, diffs = summarise(arms, e.confidence, metric_names(params)), paired_differences(arms, e.confidence)
    curves = {g: curve_table(results, g, e.confidence) for g in ("ratio", "effort") if e.curve_repeats}
    test_set = eval_set(test_table, params, cache)
    stage_test, stage_proba = {}, {}
    for name, res in stage_models.items():
        stage_test[name], stage_proba[name] = score(res.model, test_set, classes, params.ordered)
    synth_set = eval_set(synthetic_arm(params, pools["reviewed"], len(stage_train), params.seed), params, cache)
    fid, extractor = fidelity_table(params, synth_set, test_set, baseline)
    cost, source = review_cost(gen, corrections), review_source(corrections, params.review.mode,
                                                               params.review.confidence_threshold)
    headline = _headline(params, summary, diffs, stage_test, fid, cost)

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(out_dir / "results.csv", results.drop(columns="key").round(6))
    for group, table in curves.items():
        atomic_write_csv(out_dir / f"curve_{'synthetic' if group == 'ratio' else 'review'}.csv", table.round(6))
    pred = pd.DataFrame({"file_name": test_table["file_name"], "actual": test_table["label"],
                         **{name: np.asarray(classes)[p.argmax(1)] for name, p in stage_proba.items()}})
    atomic_write_csv(out_dir / "test_predictions.csv", pred)
    summary_obj = {"headline": headline, "review_source": source, "backbone": e.backbones[0],
                   "params_layers": describe_layers(), "device": _device_words(),
                   "arms_run": list(e.arms), "repeats": e.repeats, "curve_repeats": e.curve_repeats,
                   "confidence": e.confidence, "ordered": params.ordered, "metrics": list(metric_names(params)),
                   "arms": summary.to_dict("records"), "paired": diffs.to_dict("records"),
                   "review_value": versus(arms, e.confidence, REVIEWED, (INTENDED, PSEUDO), e.backbones[0]),
                   "curves": {g: t.to_dict("records") for g, t in curves.items()},
                   "pool_sizes": {k: len(v) for k, v in pools.items()},
                   "n_trainings": int(results.loc[~results["reused_stage_model"].astype(bool), "key"].nunique()),
                   "stage_models_test": stage_test, "fidelity": fid.to_dict("records"), "fidelity_extractor": extractor,
                   "fid_inception": e.fid.inception_weights is not None,
                   "review_cost": cost, "n_test": len(test_set.y), "n_val": len(stage_val),
                   "n_train_real": len(stage_train), "n_synthetic_used": len(synth_set.y),
                   "n_synthetic_reviewed_usable": len(pools["reviewed"]),
                   "generation_checks": generation_checks(params, predict)}
    atomic_write_json(out_dir / "summary.json", summary_obj)
    md, html = report.write_report(params.paths.reports, params=params, summary=summary_obj,
                                   stage_models=stage_models, stage_proba=stage_proba, test_set=test_set,
                                   real_train=eval_set(stage_train, params, cache), synth_set=synth_set)
    _log_report(params.paths.reports)
    log.info("evaluate:\n%s", diffs[diffs["split"] == "test"].to_string(index=False))
    metrics = {"review_source": source["text"], **headline}
    return EvaluateOutputs(out_dir / "results.csv", out_dir / "summary.json", md, html, metrics)


if __name__ == "__main__":
    cli_main("evaluate")
