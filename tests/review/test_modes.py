"""Automatic reviewers of review.mode: accept-confident and the (simulated) reference labeler."""

from __future__ import annotations

import sys
import types

import pytest
from conftest import make_params
from review_fixtures import audit_of, decisions, ITEMS, stage_kwargs, write_review_inputs

from tasks.review.modes import AUTO_REVIEWER, REFERENCE_REVIEWER
from tasks.review.stage import run as run_review
from tasks.stage import StageError, WaitingForReview


def test_accept_confident_accepts_only_confident_agreeing_items(tmp_path):
    p = make_params(tmp_path, {"review": {"mode": "accept-confident", "confidence_threshold": 0.95}})
    preds = write_review_inputs(p)
    with pytest.raises(WaitingForReview, match="3 of 5 items wait"):
        run_review(p, **stage_kwargs(p))
    corrections = decisions(p.paths.review / "corrections.csv")
    expected = set(preds.loc[(preds["confidence"] >= 0.95) & preds["agrees"], "file_name"])
    assert set(corrections["file_name"]) == expected and len(expected) == 2  # 0.97 disagreeing item waits
    assert set(corrections["reviewer"]) == {AUTO_REVIEWER} and set(corrections["decision"]) == {"accept"}
    assert {e["reviewer"] for e in audit_of(p)} == {AUTO_REVIEWER}


def test_reference_mode_decides_everything_and_is_marked_simulated(tmp_path, monkeypatch):
    p = make_params(tmp_path, {"review": {"mode": "reference"}})
    write_review_inputs(p)
    seen = []

    def fake_reference_labels(images, params):
        seen.extend(images)
        return ["reject"] + ["big"] * (len(images) - 1)

    monkeypatch.setitem(sys.modules, "tasks.review.reference",
                        types.SimpleNamespace(reference_labels=fake_reference_labels))
    out = run_review(p, **stage_kwargs(p))
    assert len(seen) == len(ITEMS) and all(im.size == (32, 32) for im in seen)
    corrections = decisions(out.corrections)
    assert set(corrections["reviewer"]) == {REFERENCE_REVIEWER}
    assert out.metrics["simulated"] == 1 and out.metrics["simulated_decisions"] == len(ITEMS)
    assert out.metrics["waiting"] == 0 and out.metrics["rejected"] == 1
    assert out.metrics["accepted"] + out.metrics["corrected"] == len(ITEMS) - 1
    first = corrections.iloc[0]  # the queue's first item got "reject"
    assert first["decision"] == "reject" and first["final_label"] == ""


def test_reference_labeler_count_mismatch_is_an_error(tmp_path, monkeypatch):
    p = make_params(tmp_path)
    write_review_inputs(p)
    monkeypatch.setitem(sys.modules, "tasks.review.reference",
                        types.SimpleNamespace(reference_labels=lambda images, params: ["big"]))
    with pytest.raises(StageError, match="returned 1 labels for 5"):
        run_review(p, **stage_kwargs(p))
