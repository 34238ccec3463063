"""evaluate: statistics, fidelity extractor, test-set isolation, and the stage end to end on tiny fixtures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_classifier import make_caption, make_corrections, make_generated, make_test_split  # noqa: E402

from tasks import baseline, evaluate, retrain  # noqa: E402
from tasks.classifier import build_model, save_model  # noqa: E402
from tasks.params import STAGES  # noqa: E402
from tasks.stage import stage_inputs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def test_t_interval_matches_scipy():
    from scipy import stats

    x = [0.61, 0.64, 0.58, 0.70, 0.66]
    mean, lo, hi = evaluate.t_interval(x, 0.95)
    ref = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert mean == pytest.approx(np.mean(x)) and (lo, hi) == pytest.approx(ref)
    with pytest.raises(ValueError, match="at least two"):
        evaluate.t_interval([0.5])


def test_verdict_and_paired_differences():
    assert evaluate.verdict(-0.2, -0.01) == "synthetic data hurt"
    assert evaluate.verdict(-0.1, 0.1) == "no significant difference"
    assert evaluate.verdict(0.01, 0.2) == "synthetic data helped"
    rows = [{"backbone": "b", "arm": arm, "seed": s, "split": "test", "balanced_accuracy": base + d}
            for s, base in enumerate([0.6, 0.7, 0.5]) for arm, d in (("real_only", 0.0), ("real_synthetic", 0.1))]
    diffs = evaluate.paired_differences(pd.DataFrame(rows), 0.95)
    # per-seed differences are all exactly +0.1: the paired CI collapses on it although the arms vary a lot
    assert diffs.loc[0, "diff_mean"] == pytest.approx(0.1) and diffs.loc[0, "diff_low"] == pytest.approx(0.1)
    assert diffs.loc[0, "verdict"] == "synthetic data helped"


def test_classification_metrics_binary_and_multiclass():
    y = np.array([0, 0, 1, 1])
    m = evaluate.classification_metrics(y, np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]]), ("a", "b"))
    assert m["accuracy"] == 0.75 and m["roc_auc"] == 1.0 and m["recall_a"] == 0.5 and m["precision_b"] == 2 / 3
    p3 = np.eye(3)[[0, 1, 2, 2]] * 0.7 + 0.1
    m3 = evaluate.classification_metrics(np.array([0, 1, 2, 1]), p3, ("a", "b", "c"))
    assert m3["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3) and 0 <= m3["roc_auc"] <= 1


def test_review_cost_per_100():
    gen = pd.DataFrame({"file_name": [str(i) for i in range(50)]})
    corr = pd.DataFrame({"decision": ["accept"] * 40 + ["correct"] * 6 + ["reject"] * 4,
                         "intended_label": ["a"] * 50, "final_label": ["a"] * 36 + ["b"] * 10 + [""] * 4})
    cost = evaluate.review_cost(gen, corr)
    assert cost["corrections_per_100"] == 12 and cost["rejections_per_100"] == 8
    assert cost["intended_agreement"] == pytest.approx(36 / 46)
    with pytest.raises(ValueError):
        evaluate.review_cost(gen.iloc[:0], corr)


def test_custom_fid_extractor_zero_for_identical_sets_larger_for_different(tmp_path):
    torch.manual_seed(0)
    model = build_model("custom_cnn", 2, 1).eval()
    save_model(tmp_path, model, {"backbone": "custom_cnn", "classes": ["a", "b"], "channels": 1, "image_size": 32,
                                 "mean": [0.5], "std": [0.5]})
    evaluate._register_extractor()
    g = torch.Generator().manual_seed(0)
    dark = (torch.rand(24, 1, 32, 32, generator=g) * 60).to(torch.uint8)
    bright = (155 + torch.rand(24, 1, 32, 32, generator=g) * 100).to(torch.uint8)
    kw = {"extractor": evaluate.EXTRACTOR_NAME, "weights": tmp_path / "model.safetensors"}
    same = evaluate.fidelity(dark, dark.clone(), **kw)
    diff = evaluate.fidelity(dark, bright, **kw)
    assert abs(same["fid"]) < 1e-3 * max(diff["fid"], 1e-9) and diff["fid"] > 0
    assert same["precision"] == 1.0 and diff["precision"] < same["precision"]
    assert np.isnan(evaluate.fidelity(dark[:1], bright[:1], **kw)["fid"])  # too small: NaN, not a crash


def _deps(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def test_only_evaluate_reads_the_test_split(params):
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        reads_test = any("${paths.ingest}/test" in d or d.startswith("${paths.ingest}/test") for d in _deps(stage))
        reads_ingest_root = any(d.rstrip("/") == "${paths.ingest}" for d in _deps(stage))
        assert not reads_ingest_root, f"{name} depends on the whole ingest folder (includes test/)"
        assert reads_test == (name == "evaluate"), name
    test_dir = params.paths.ingest / "test"
    for stage in STAGES:
        touches = [path == test_dir or test_dir in path.parents or path == params.paths.ingest
                   for path in stage_inputs(params, stage).values()]
        assert any(touches) == (stage == "evaluate"), stage


def test_run_end_to_end_writes_report_summary_and_results(params):
    P = params.paths
    p = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 2}),
                                  "evaluate": params.evaluate.model_copy(update={"seeds": (params.seed, 7),
                                                                                 "grid_per_class": 3})})
    make_caption(P.caption, n_train=8, n_val=8)
    man = make_generated(P.generate, n=12)
    make_corrections(P.review, man, {man["file_name"][0]: ("reject", ""), man["file_name"][1]: ("correct", "small")})
    make_test_split(P.ingest / "test", n=12)
    baseline.run(p, caption=P.caption, out_dir=P.baseline)
    retrain.run(p, caption=P.caption, generated=P.generate, review=P.review, out_dir=P.retrain)
    out = evaluate.run(p, test=P.ingest / "test", caption=P.caption, generated=P.generate, review=P.review,
                       baseline=P.baseline, retrain=P.retrain, out_dir=P.evaluate)
    results = pd.read_csv(out.results)
    assert len(results) == 2 * 2 * 2  # seeds × arms × splits
    assert results.loc[results["seed"] == p.seed, "reused_stage_model"].all()
    assert not results.loc[results["seed"] == 7, "reused_stage_model"].any()
    summary = json.loads(out.summary.read_text())
    assert summary["review_cost"]["n_reject"] == 1 and summary["n_synthetic_reviewed_usable"] == 11
    assert {"paired_diff_test_low", "paired_diff_test_high", "fid", "kid_mean"} <= set(out.metrics)
    md = out.report_md.read_text()
    assert "did synthetic data help" in md and summary["paired"][0]["verdict"] in md
    assert evaluate.EXTRACTOR_NAME in md
    html = out.report_html.read_text()
    assert html.count("data:image/png;base64,") == 4 and "figures/" not in html
