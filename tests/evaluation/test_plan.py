"""evaluate's plan: re-drawn group-aware splits, the review-effort pools, job fingerprints, who reviewed."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.evaluation import plan
from tasks.evaluation.curves import curve_table
from tasks.evaluation.source import SIMULATED_TEXT, review_source
from tasks.stage import StageError


def _pool(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame({"file_name": [f"f{i}" for i in range(n)], "label": ["a", "b"] * (n // 2),
                         "group": [f"g{i // 2}" for i in range(n)],  # pairs of near duplicates (same label? no)
                         "source": [f"s{i}" for i in range(n)], "path": [f"/x/{i}.png" for i in range(n)]})


def test_trainval_splits_keep_groups_together_and_repeat_zero_is_the_stage_split(params):
    pool = _pool()
    pool["group"] = [f"g{i // 4}" for i in range(len(pool))]
    stage_train, stage_val = pool.iloc[:10].assign(weight=1.0), pool.iloc[10:].assign(weight=1.0)
    assert plan.trainval_splits(params, stage_train, stage_val, pool, 0)[0] is stage_train
    train, val = plan.trainval_splits(params, stage_train, stage_val, pool, 1)
    groups = dict(zip(pool["path"], pool["group"]))
    assert not {groups[p] for p in train["path"]} & {groups[p] for p in val["path"]}
    assert len(train) + len(val) == len(pool) and abs(len(train) - 10) <= 4
    again, _ = plan.trainval_splits(params, stage_train, stage_val, pool, 1)
    other, _ = plan.trainval_splits(params, stage_train, stage_val, pool, 2)
    assert again["path"].tolist() == train["path"].tolist() and other["path"].tolist() != train["path"].tolist()
    one = pool.assign(group=pool["label"])  # one group per class: a re-split cannot give val both classes
    with pytest.raises(StageError, match="lacks a class"):
        plan.trainval_splits(params, stage_train, stage_val, one, 1)


def test_effort_pool_applies_the_first_k_decisions_in_queue_order():
    gen = pd.DataFrame({"file_name": ["a", "b", "c"], "path": ["/a", "/b", "/c"], "sha256": ["1", "2", "3"],
                        "intended_label": ["x", "x", "y"]})
    intended = gen.rename(columns={"intended_label": "label"})[["file_name", "label", "path"]]
    corr = pd.DataFrame({"file_name": ["a", "b", "c"], "sha256": ["1", "2", "3"], "final_label": ["y", "", "x"],
                         "decision": ["correct", "reject", "correct"]})
    order = ["c", "b", "a"]
    assert plan.effort_pool(gen, corr, intended, order, 0).equals(intended)
    one = plan.effort_pool(gen, corr, intended, order, 1).set_index("file_name")["label"].to_dict()
    assert one == {"a": "x", "b": "x", "c": "x"}  # c corrected to x; a, b still as intended
    two = plan.effort_pool(gen, corr, intended, order, 2).set_index("file_name")["label"].to_dict()
    assert two == {"a": "x", "c": "x"}  # b rejected
    assert plan.effort_pool(gen, corr, intended, order, 3).set_index("file_name")["label"].to_dict() == \
        {"a": "y", "c": "x"}
    assert plan.effort_steps(12, (0, 0.25, 0.5, 1)) == [0, 3, 6, 12] and plan.effort_steps(2, (0, 0.1)) == [0]


def test_effort_counts_reviewer_decisions_only_and_keeps_automatic_ones_at_every_point():
    """A budgeted review: 2 decisions by a reviewer, 2 beyond-budget drops and 1 accept-confident (automatic)."""
    names = ["a", "b", "c", "d", "e"]
    gen = pd.DataFrame({"file_name": names, "path": [f"/{n}" for n in names], "sha256": list("12345"),
                        "intended_label": ["x", "x", "y", "y", "x"]})
    intended = gen.rename(columns={"intended_label": "label"})[["file_name", "label", "path"]]
    corr = pd.DataFrame({"file_name": names, "sha256": list("12345"), "final_label": ["y", "x", "", "", "x"],
                         "decision": ["correct", "accept", "reject", "reject", "accept"],
                         "reviewer": ["ann", "script (simulated)", "auto:beyond-budget", "auto:beyond-budget",
                                      "auto:accept-confident"]})
    assert plan.reviewer_decisions(corr).tolist() == [True, True, False, False, False]
    order = ["b", "a", "e", "c", "d"]
    labels = lambda k: plan.effort_pool(gen, corr, intended, order, k).set_index("file_name")["label"].to_dict()
    assert labels(0) == {"a": "x", "b": "x", "e": "x"}  # drops and the auto-accept apply; a, b as intended
    assert labels(1) == {"a": "x", "b": "x", "e": "x"}  # b accepted as x
    assert labels(2) == {"a": "y", "b": "x", "e": "x"}  # a corrected: the reviewed arm's pool
    from tasks.classify.arms import reviewed_synthetic
    assert labels(2) == reviewed_synthetic(gen, corr).set_index("file_name")["label"].to_dict()


def test_job_key_is_the_data_and_seed_fingerprint():
    t = pd.DataFrame({"path": ["/a", "/b"], "label": ["x", "y"], "weight": 1.0})
    job = plan.Job("arms", "real", "custom_cnn", 0, 1, t, t, None, False, False)
    twin = plan.Job("ratio", "reviewed x0", "custom_cnn", 0, 1, t.copy(), t, None, False, False)
    assert job.key == twin.key
    assert job.key != plan.Job("arms", "real", "custom_cnn", 0, 2, t, t, None, False, False).key
    assert job.key != plan.Job("arms", "real+augment", "custom_cnn", 0, 1, t, t, None, False, True).key
    flipped = t.assign(label=["y", "x"])
    assert job.key != plan.Job("arms", "x", "custom_cnn", 0, 1, t, t, flipped, False, False).key


@pytest.mark.parametrize(("reviewers", "mode", "kind", "text"), [
    (["reference-labeler (simulated)"] * 3, "reference", "simulated", SIMULATED_TEXT),
    (["ann", "bob", "ann"], "manual", "human", "3 decisions by 2 people"),
    (["ann", "auto:beyond-budget"], "manual", "human", "1 decisions by 1 person (plus 1 automatic)"),
    (["auto:accept-confident"] * 2, "accept-confident", "automatic", "accept-confident at threshold 0.95 (no human)"),
])
def test_review_source_says_who_reviewed(reviewers, mode, kind, text):
    got = review_source(pd.DataFrame({"reviewer": reviewers}), mode, 0.95)
    assert got["kind"] == kind and got["text"] == text and got["n_decisions"] == len(reviewers)
    mixed = review_source(pd.DataFrame({"reviewer": ["ann", "reference-labeler (simulated)"]}), "manual", 0.95)
    assert mixed["kind"] == "simulated" and mixed["text"].startswith("simulated") and "1 by 1 people" in mixed["text"]


def test_a_scripted_reviewer_is_simulated_and_named_never_the_reference_labeler_or_a_person():
    script = ["labelstudio:scripted-oracle (simulated)"] * 4
    got = review_source(pd.DataFrame({"reviewer": script}), "accept-confident", 0.9)
    assert got["kind"] == "simulated" and got["n_human"] == 0 and got["n_simulated"] == 4
    assert got["text"] == ("simulated — scripted reviewer labelstudio:scripted-oracle, not a person; "
                           "a human reviewer's result will differ")
    both = review_source(pd.DataFrame({"reviewer": [*script, "reference-labeler (simulated)"]}), "reference", 0.9)
    assert "scripted-oracle and the reference labeler" in both["text"] and "reference labeler;" not in both["text"]


def test_curve_table_is_the_gain_over_real_per_repeat():
    rows = []
    for r, base in enumerate([0.6, 0.7]):
        rows.append({"group": "arms", "arm": "real", "backbone": "b", "repeat": r, "split": "test", "x": float("nan"),
                     "balanced_accuracy": base})
        for x, gain in ((0.0, 0.0), (8.0, 0.1), (16.0, 0.2 + 0.02 * r)):
            rows.append({"group": "ratio", "arm": f"p{x}", "backbone": "b", "repeat": r, "split": "test", "x": x,
                         "balanced_accuracy": base + gain})
    table = curve_table(pd.DataFrame(rows), "ratio", 0.95)
    assert table.shape == (3, 7) and table["n_synthetic"].tolist() == [0, 8, 16]
    assert table["gain_mean"].tolist() == pytest.approx([0, 0.1, 0.21]) and table["n_repeats"].eq(2).all()


def test_dvc_plots_show_renders_both_curves(tmp_path):
    """dvc.yaml's two curve plots, pointed at curve_table's CSVs, render with `dvc plots show`."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    rows = []
    for r, base in enumerate([0.6, 0.7]):
        rows.append({"group": "arms", "arm": "real", "backbone": "b", "repeat": r, "split": "test",
                     "x": float("nan"), "balanced_accuracy": base})
        rows += [{"group": g, "arm": f"{g}{x}", "backbone": "b", "repeat": r, "split": "test", "x": float(x),
                  "balanced_accuracy": base + x / 1000} for g in ("ratio", "effort") for x in (0, 16, 64)]
    (tmp_path / "ev").mkdir()
    curve_table(pd.DataFrame(rows), "ratio", 0.95).to_csv(tmp_path / "ev" / "curve_synthetic.csv", index=False)
    curve_table(pd.DataFrame(rows), "effort", 0.95).to_csv(tmp_path / "ev" / "curve_review.csv", index=False)
    repo = Path(__file__).resolve().parents[2]
    plots = [p for p in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"] if next(iter(p)).startswith("gain_")]
    assert len(plots) == 2
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}).replace("${paths.evaluate}", "ev"))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    out = subprocess.run([*dvc, "plots", "show", "--json"], cwd=tmp_path, check=True, capture_output=True, text=True)
    import json

    data = json.loads(out.stdout)["data"]
    assert {k: len(v[0]["content"]["data"]["values"]) for k, v in data.items()} == \
        {"gain_vs_synthetic_images": 3, "gain_vs_review_decisions": 3}
