"""evaluate: test-set isolation, every arm end to end on tiny fixtures, arms differ only in data, a broken
generator is caught ("hurt"), and the report's first screen names who reviewed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_classifier import (make_caption, make_corrections, make_generated, make_test_split,  # noqa: E402
                                 make_trainval)

from tasks import baseline, evaluate, predict, retrain  # noqa: E402
from tasks.classify import arms as arms_module  # noqa: E402
from tasks.evaluation.fidelity import EXTRACTOR_NAME  # noqa: E402
from tasks.evaluation.stats import ARMS  # noqa: E402
from tasks.params import STAGES  # noqa: E402
from tasks.stage import stage_inputs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIMULATED = "reference-labeler (simulated)"


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


def _shrunk(params, epochs: int = 2, **evaluate):
    return params.model_copy(update={
        "baseline": params.baseline.model_copy(update={"epochs": epochs}),
        "evaluate": params.evaluate.model_copy(update={"grid_per_class": 3, **evaluate})})


def _loop(p, *, n_gen: int = 12, flip: bool = False, decisions: dict | None = None):
    """Fixtures + the baseline, predict and retrain stages; returns evaluate's keyword arguments."""
    P = p.paths
    make_caption(P.caption, n_train=8, n_val=8)
    make_trainval(P.ingest / "trainval", P.caption)
    man = make_generated(P.generate, n=n_gen)
    if flip:  # a broken generator: every image shows the other class than the one it was prompted for
        man["intended_label"] = man["intended_label"].map({"small": "big", "big": "small"})
        man.to_csv(P.generate / "manifest.csv", index=False)
    corr = make_corrections(P.review, man, decisions)
    corr.assign(reviewer=SIMULATED).to_csv(P.review / "corrections.csv", index=False)
    make_test_split(P.ingest / "test", n=12)
    baseline.run(p, caption=P.caption, out_dir=P.baseline)
    predict.run(p, model=P.baseline, generated=P.generate, caption=P.caption, out_dir=P.predict)
    retrain.run(p, caption=P.caption, generated=P.generate, review=P.review, predict=P.predict, out_dir=P.retrain)
    return {"test": P.ingest / "test", "trainval": P.ingest / "trainval", "caption": P.caption,
            "generated": P.generate, "review": P.review / "corrections.csv", "queue": P.review / "queue.csv",
            "baseline": P.baseline, "retrain": P.retrain, "predict": P.predict, "out_dir": P.evaluate}


def test_every_arm_trains_and_scores_and_the_report_names_the_simulated_review(params):
    p = _shrunk(params)
    man_decisions = {"images/small/000000.png": ("reject", ""), "images/big/000001.png": ("correct", "small")}
    out = evaluate.run(p, **_loop(p, decisions=man_decisions))
    results = pd.read_csv(out.results)
    arms = results[results["group"] == "arms"]
    assert set(arms["arm"]) == set(ARMS) and len(arms) == len(ARMS) * 2 * 2  # arms × repeats × splits
    assert arms[["balanced_accuracy", "accuracy"]].notna().all().all()
    reused = arms[arms["reused_stage_model"]]
    assert {"real", "real+synthetic_reviewed"} <= set(reused["arm"]) and (reused["repeat"] == 0).all()
    assert arms.loc[arms["arm"].isin(["real", "real+augment"]), "n_synthetic"].eq(0).all()
    assert arms.loc[arms["arm"] == "real+synthetic_intended", "n_synthetic"].gt(0).all()
    # repeat 1 re-draws train/val from the trainval pool (same sizes), the test split stays
    assert arms.groupby("repeat")["n_train_real"].first().tolist() == [8, 8]
    summary = json.loads(out.summary.read_text())
    assert summary["review_source"]["kind"] == "simulated" and summary["review_cost"]["n_reject"] == 1
    m = json.loads((p.paths.evaluate / "summary.json").read_text())["headline"]
    for slug in ("real", "real_augment", "real_synthetic_pseudo", "synthetic_to_real"):
        assert {f"{slug}_test_balanced_accuracy_mean", f"{slug}_test_balanced_accuracy_low",
                f"{slug}_test_balanced_accuracy_high", f"{slug}_n_repeats"} <= set(m)
    assert "real_synthetic_reviewed_vs_real_p_holm" in m and out.metrics["review_source"].startswith("simulated")
    ratio = pd.read_csv(p.paths.evaluate / "curve_synthetic.csv")
    effort = pd.read_csv(p.paths.evaluate / "curve_review.csv")
    assert len(ratio) == 2 and ratio["n_synthetic"].tolist()[0] == 0 and ratio["gain_mean"].iloc[0] == 0
    assert effort["n_decisions"].tolist() == [0, 12] and {"gain_mean", "gain_low", "gain_high"} <= set(effort)
    md = out.report_md.read_text()
    assert "simulated" in "\n".join(md.splitlines()[:15]) and "— recommendation:" in md
    # The run's params layers (#15) and the device, with the CPU fallback said in words (#16), on the first screen.
    assert "Run: params.yaml" in "\n".join(md.splitlines()[:15])
    assert "trained on CPU (no CUDA device visible: the CPU fallback)" in md or "trained on cuda:" in md
    assert EXTRACTOR_NAME in md and "not comparable with published FID" in md
    html = out.report_html.read_text()
    assert html.count("data:image/png;base64,") == 6 and "figures/" not in html
    assert "simulated" in html[:html.index("recommendation:")]


@pytest.mark.slow
def test_arms_differ_only_in_data(params, monkeypatch):
    p = _shrunk(params, epochs=1, curve_repeats=0)
    kwargs = _loop(p)
    calls = []
    real_train = arms_module.train_classifier

    def spy(cfg, train, val, **kw):
        calls.append((cfg, {k: v for k, v in kw.items() if k not in ("image_cache", "metric_prefix")}, len(train)))
        return real_train(cfg, train, val, **kw)

    monkeypatch.setattr(arms_module, "train_classifier", spy)
    evaluate.run(p, **kwargs)
    plain = [c for c in calls if c[0].augment.policy == "none"]
    strong = [c for c in calls if c[0].augment.policy != "none"]
    assert len(strong) == 2 and all(c[0].augment.policy == p.baseline.augment.strong_policy for c in strong)
    assert plain and all(c[0] == p.baseline for c in plain)  # one recipe for every other arm
    assert strong[0][0].model_copy(update={"augment": p.baseline.augment}) == p.baseline
    for repeat_seed in (p.seed, p.seed + 1):
        same = [c[1] for c in calls if c[1]["seed"] == repeat_seed and "init_state" not in c[1]
                and "epochs" not in c[1]]
        assert same and all(kw == same[0] for kw in same)


@pytest.mark.slow
def test_wrong_synthetic_labels_make_the_intended_arm_hurt(params):
    p = _shrunk(params, epochs=15, arms=("real", "real+synthetic_intended"), repeats=5, curve_repeats=0)
    # 4 wrongly labelled synthetic images per real one (not params.yaml's ratio): the harm must be unmistakable
    p = p.model_copy(update={"retrain": p.retrain.model_copy(update={"synthetic_ratio": 4.0})})
    out = evaluate.run(p, **_loop(p, n_gen=32, flip=True))
    paired = pd.DataFrame(json.loads(out.summary.read_text())["paired"])
    row = paired[(paired["split"] == "test") & (paired["arm"] == "real+synthetic_intended")].iloc[0]
    assert row["diff_mean"] < 0 and row["verdict"] == "hurt", row.to_dict()
    assert "recommendation: keep real" in out.report_md.read_text()


def test_evaluate_refuses_a_trainval_pool_too_small_to_resplit(params):
    p = _shrunk(params, epochs=1, curve_repeats=0, arms=("real",))
    kwargs = _loop(p)
    man = pd.read_csv(kwargs["trainval"] / "manifest.csv")
    man.loc[man["label"] == "small", "group"] = "one"  # every small image one near-duplicate group
    man.to_csv(kwargs["trainval"] / "manifest.csv", index=False)
    with pytest.raises(Exception, match="lacks a class"):
        evaluate.run(p, **kwargs)
