"""evaluate: test-set isolation, and the stage end to end on tiny fixtures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_classifier import make_caption, make_corrections, make_generated, make_test_split  # noqa: E402

from tasks import baseline, evaluate, retrain  # noqa: E402
from tasks.evaluation.fidelity import EXTRACTOR_NAME  # noqa: E402
from tasks.params import STAGES  # noqa: E402
from tasks.stage import stage_inputs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


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
    assert EXTRACTOR_NAME in md
    html = out.report_html.read_text()
    assert html.count("data:image/png;base64,") == 4 and "figures/" not in html
