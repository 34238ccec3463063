"""The decision store: versions and 409s, undo, atomic saves, decisions tied to image content."""

from __future__ import annotations

import pandas as pd
import pytest
from review_fixtures import audit_of, decide_all, decisions, ITEMS, open_review_store, regenerate, stage_kwargs

import tasks.io
from tasks.review.stage import review_metrics, run as run_review
from tasks.review.status import review_status
from tasks.review.store import Conflict, ImageChanged, ReviewError
from tasks.stage import WaitingForReview


def test_stale_save_is_refused_and_both_attempts_are_audited(manual):
    ann, bob = open_review_store(manual), open_review_store(manual)  # two reviewers, two processes' view of the same folder
    f = ann.waiting()[0]
    ann.decide(f, "small", version=0, reviewer="ann")
    bob = open_review_store(manual)  # bob re-opens but still submits the version he saw before ann saved
    with pytest.raises(Conflict):
        bob.decide(f, "big", version=0, reviewer="bob")
    entries = [e for e in audit_of(manual) if e["file_name"] == f]
    assert [(e["reviewer"], e["outcome"]) for e in entries] == [("ann", "saved"), ("bob", "conflict")]
    assert entries[1]["new"] == {"label": "big"} and entries[1]["version_seen"] == 0
    assert decisions(manual.paths.review / "corrections.csv").iloc[0]["final_label"] == "small"


def test_undo_restores_previous_state_as_a_new_audit_entry(manual):
    store = open_review_store(manual)
    f = store.waiting()[0]
    store.decide(f, "small", version=0, reviewer="ann")
    store.decide(f, "reject", version=1, reviewer="ann")
    view = store.undo(f, version=2, reviewer="ann")
    assert (view["status"], view["final_label"], view["version"]) == ("correct", "small", 3)
    view = store.undo(f, version=3, reviewer="ann")  # undoing an undo redoes the reject
    assert view["status"] == "reject"
    assert [e["action"] for e in audit_of(manual)] == ["decide", "decide", "undo", "undo"]
    store2 = open_review_store(manual)
    assert store2.versions[f] == 4 and store2.item_view(f)["status"] == "reject"


def test_undo_without_history_is_an_error(manual):
    store = open_review_store(manual)
    with pytest.raises(ReviewError, match="nothing to undo"):
        store.undo(store.waiting()[0], version=0, reviewer="ann")


def test_bad_label_item_or_reviewer_changes_nothing(manual):
    store = open_review_store(manual)
    f = store.waiting()[0]
    for kwargs, match in [(dict(file_name=f, label="huge", reviewer="ann"), "unknown label"),
                          (dict(file_name="images/nope.png", label="big", reviewer="ann"), "not in the review"),
                          (dict(file_name=f, label="big", reviewer=" "), "reviewer is required"),
                          (dict(file_name=f, label="big", reviewer="a\nb"), "one line")]:
        with pytest.raises(ReviewError, match=match):
            store.decide(kwargs.pop("file_name"), kwargs.pop("label"), version=0, **kwargs)
    assert not (manual.paths.review / "corrections.csv").exists() and audit_of(manual) == []


def test_crash_during_save_leaves_old_corrections_intact(manual, monkeypatch):
    store = open_review_store(manual)
    first, second = store.waiting()[:2]
    store.decide(first, "big", version=0, reviewer="ann")
    path = manual.paths.review / "corrections.csv"
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated kill during os.replace")

    monkeypatch.setattr(tasks.io.os, "replace", crash)
    with pytest.raises(OSError, match="simulated kill"):
        store.decide(second, "small", version=0, reviewer="ann")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert list(pd.read_csv(path)["file_name"]) == [first]
    assert store.item_view(second)["status"] == "waiting" and store.versions.get(second, 0) == 0
    assert not list(manual.paths.review.glob(".synthloop-tmp-*"))
    assert audit_of(manual)[-1]["outcome"] == "failed"
    store.decide(second, "small", version=0, reviewer="ann")  # the same save succeeds afterwards
    assert len(pd.read_csv(path)) == 2


def test_decisions_record_the_sha256_of_the_image_decided(manual):
    store = open_review_store(manual)
    f = store.waiting()[0]
    store.decide(f, "big", version=0, reviewer="ann")
    manifest = pd.read_csv(manual.paths.generate / "manifest.csv").set_index("file_name")["sha256"]
    row = decisions(manual.paths.review / "corrections.csv").iloc[0]
    assert row["sha256"] == manifest[f] == store.item_view(f)["sha256"]
    assert audit_of(manual)[0]["new"]["sha256"] == manifest[f]
    queue = pd.read_csv(manual.paths.review / "queue.csv", dtype=str).set_index("file_name")["sha256"]
    assert queue.to_dict() == manifest.to_dict()


def test_regenerated_image_invalidates_its_decision_and_waits_again(manual, caplog):
    store = open_review_store(manual)
    decide_all(store)
    f = list(store.items)[1]
    old = dict(store.decisions[f])
    new_sha = regenerate(manual.paths.generate, f)  # new pixels at the same file name
    with pytest.raises(WaitingForReview, match="1 of 5 items wait"):
        run_review(manual, **stage_kwargs(manual))
    assert "1 review decisions were made on a different image" in caplog.text
    reopened = open_review_store(manual)
    assert reopened.waiting() == [f] and reopened.stale_decisions == 0  # invalidated once, by run()
    assert reopened.item_view(f)["status"] == "waiting" and reopened.versions[f] == 2
    corrections = decisions(manual.paths.review / "corrections.csv")
    assert f not in set(corrections["file_name"]) and len(corrections) == len(ITEMS) - 1
    assert set(corrections["file_name"]) == set(store.items) - {f}  # the others keep their decisions
    entry = audit_of(manual)[-1]
    assert (entry["action"], entry["outcome"], entry["file_name"], entry["new"]) == ("invalidate", "saved", f, None)
    assert entry["old"]["final_label"] == old["final_label"] and entry["old"]["sha256"] == old["sha256"]
    assert old["sha256"][:12] in entry["note"] and new_sha[:12] in entry["note"] and "changed" in entry["note"]
    with pytest.raises(Conflict):  # a page still showing the old image saves with the old version
        reopened.decide(f, "big", version=1, reviewer="bob")
    with pytest.raises(ReviewError, match="different image"):  # undo must not bring the old label back
        reopened.undo(f, version=2, reviewer="ann")
    assert review_status(manual)["waiting"] == 1


def test_stale_decisions_metric_counts_invalidations_of_this_open(manual):
    decide_all(open_review_store(manual))
    f = list(open_review_store(manual).items)[0]
    regenerate(manual.paths.generate, f)
    assert review_metrics(open_review_store(manual), manual)["stale_decisions"] == 1
    assert review_metrics(open_review_store(manual), manual)["stale_decisions"] == 0  # already invalidated


def test_save_naming_the_old_image_content_is_refused(manual):
    store = open_review_store(manual)
    f = store.waiting()[0]
    seen = store.item_view(f)["sha256"]
    regenerate(manual.paths.generate, f)  # undecided: its version stays 0, only the content tells
    fresh = open_review_store(manual)
    with pytest.raises(ImageChanged, match="different image now"):
        fresh.decide(f, "big", version=0, reviewer="ann", sha256=seen)
    assert fresh.item_view(f)["status"] == "waiting" and audit_of(manual)[-1]["outcome"] == "conflict"
    fresh.decide(f, "big", version=0, reviewer="ann", sha256=fresh.item_view(f)["sha256"])
    assert fresh.item_view(f)["status"] == "accept"


def test_legacy_corrections_without_sha256_are_all_invalidated(manual):
    store = open_review_store(manual)
    decide_all(store)
    path = manual.paths.review / "corrections.csv"
    legacy = pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns="sha256")
    legacy.to_csv(path, index=False)  # written before decisions carried content hashes
    reopened = open_review_store(manual)
    assert reopened.stale_decisions == len(ITEMS) and len(reopened.waiting()) == len(ITEMS)
    assert decisions(path).empty
    assert [e["action"] for e in audit_of(manual)][-len(ITEMS):] == ["invalidate"] * len(ITEMS)
    assert all("(none) then" in e["note"] for e in audit_of(manual)[-len(ITEMS):])


def test_orphaned_decision_keeps_its_sha256_and_counts_again_when_the_image_returns(manual):
    store = open_review_store(manual)
    decide_all(store)
    preds_path = manual.paths.predict / "predictions.csv"
    preds = pd.read_csv(preds_path)
    gone = preds.loc[0, "file_name"]
    preds.iloc[1:].to_csv(preds_path, index=False)  # e.g. num_images lowered: no longer predicted or queued
    smaller = open_review_store(manual)
    assert smaller.stale_decisions == 0
    assert review_metrics(smaller, manual)["orphaned_decisions"] == 1
    kept = decisions(manual.paths.review / "corrections.csv").set_index("file_name")
    assert kept.loc[gone, "sha256"] == store.items[gone]["sha256"]
    preds.to_csv(preds_path, index=False)  # the same image comes back
    back = open_review_store(manual)
    assert back.stale_decisions == 0 and back.waiting() == []


def test_corrections_suite_requires_sha256_column_and_hex_values(manual):
    from tasks.validation import ValidationFailed, validate

    store = open_review_store(manual)
    decide_all(store)
    df = pd.read_csv(manual.paths.review / "corrections.csv", dtype=str, keep_default_na=False).astype({"version": int})
    validate(df.assign(sha256=[""] + df["sha256"].tolist()[1:]), "review_corrections", classes=manual.classes)
    with pytest.raises(ValidationFailed, match=f"match_regex on 'sha256': failing rows: {df.loc[0, 'file_name']}"):
        validate(df.assign(sha256=["xyz"] + df["sha256"].tolist()[1:]), "review_corrections", classes=manual.classes)
    with pytest.raises(ValidationFailed, match="expect_column_to_exist on 'sha256'"):
        validate(df.drop(columns="sha256"), "review_corrections", classes=manual.classes)
