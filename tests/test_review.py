"""Review stage: queue order, modes, completeness, the decision store (atomicity, versions, audit), checkpoints."""

from __future__ import annotations

import contextvars
import json
import sys
import threading
import time
import types
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from review_fixtures import ITEMS, predictions_frame, regenerate, stage_kwargs, write_review_inputs

import tasks.io
from conftest import make_params
from tasks import review
from tasks.review_input import pause_description, review_status
from tasks.stage import StageError, WaitingForReview


@pytest.fixture
def manual(tmp_path):
    p = make_params(tmp_path, {"review": {"mode": "manual"}})
    write_review_inputs(p)
    return p


def _store(p) -> review.ReviewStore:
    return review.open_store(p, **stage_kwargs(p))


def _audit(p) -> list[dict]:
    return review.read_audit(p.paths.review / "audit.jsonl")


# ------------------------------------------------------------------------------------------------- queue
def test_build_queue_puts_disagreement_first_then_low_margin():
    queue = review.build_queue(predictions_frame())
    assert list(queue["position"]) == list(range(len(ITEMS)))
    assert queue.loc[0, "agrees"] == False  # noqa: E712  (the only disagreement comes first)
    agreeing = queue[queue["agrees"]]
    assert list(agreeing["margin"]) == sorted(agreeing["margin"])
    assert list(queue["review_rank"]) == sorted(queue["review_rank"])


def test_build_queue_without_rank_uses_the_same_rule():
    ranked = review.build_queue(predictions_frame())
    unranked = review.build_queue(predictions_frame().drop(columns="review_rank"))
    assert list(unranked["file_name"]) == list(ranked["file_name"])


def test_build_queue_drops_images_generate_flagged():
    preds = predictions_frame()
    flagged = preds.loc[0, "file_name"]
    manifest = pd.DataFrame({"file_name": preds["file_name"], "status": ["black"] + ["ok"] * (len(preds) - 1)})
    queue = review.build_queue(preds, manifest)
    assert flagged not in set(queue["file_name"]) and len(queue) == len(preds) - 1


def test_build_queue_carries_each_image_sha256_and_unknown_is_empty(tmp_path):
    preds = predictions_frame()
    manifest = pd.DataFrame({"file_name": preds["file_name"][1:], "status": "ok",
                             "sha256": [f"{i:064x}" for i in range(1, len(preds))]})
    queue = review.build_queue(preds, manifest).set_index("file_name")["sha256"]
    assert queue[preds.loc[1, "file_name"]] == f"{1:064x}"
    assert queue[preds.loc[0, "file_name"]] == ""  # not in the manifest: unknown content
    assert set(review.build_queue(preds)["sha256"]) == {""}
    with pytest.raises(StageError, match="no sha256"):  # the store refuses to tie decisions to unknown content
        review.ReviewStore(tmp_path, review.build_queue(preds), ("small", "big"))


def test_load_queue_requires_the_manifest_with_sha256(manual):
    manifest = manual.paths.generate / "manifest.csv"
    full = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    full.drop(columns="sha256").to_csv(manifest, index=False)
    with pytest.raises(StageError, match=f"{manifest}.*no sha256 column"):
        _store(manual)
    full.assign(sha256=[""] + full["sha256"].tolist()[1:]).to_csv(manifest, index=False)
    with pytest.raises(StageError, match=f"{manifest} gives no sha256 for 1 queued images"):
        _store(manual)
    manifest.unlink()
    with pytest.raises(StageError, match=f"{manifest} not found"):
        review.run(manual, **stage_kwargs(manual))


def test_build_queue_missing_columns_is_a_clear_error():
    with pytest.raises(StageError, match="margin"):
        review.build_queue(predictions_frame().drop(columns="margin"))


def test_classify_decision_maps_labels():
    assert review.classify_decision("big", "big") == ("accept", "big")
    assert review.classify_decision("big", "small") == ("correct", "small")
    assert review.classify_decision("big", "reject") == ("reject", "")


def test_seconds_per_item_median_of_gaps_without_breaks_or_automatic_reviewers():
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def e(seconds, who="ann", source="app"):
        return {"outcome": "saved", "source": source, "action": "decide", "reviewer": who,
                "time": (t0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")}

    entries = [e(0), e(2), e(6), e(1000), e(0, "bob"), e(3, "bob"), e(1, "auto", source="stage")]
    assert review.seconds_per_item(entries) == 3.0  # gaps 2, 4, 3; the 994 s break is dropped
    assert review.seconds_per_item([e(0)]) is None


# ------------------------------------------------------------------------------------------------- modes
def test_manual_mode_incomplete_raises_waiting_for_review(manual):
    with pytest.raises(WaitingForReview) as err:
        review.run(manual, **stage_kwargs(manual))
    msg = str(err.value)
    assert f"{len(ITEMS)} of {len(ITEMS)} items wait" in msg
    assert "synthloop review" in msg and "make review" in msg and "dvc repro" in msg
    assert (manual.paths.review / "queue.csv").is_file()
    assert review_status(manual) == {"total": len(ITEMS), "decided": 0, "waiting": len(ITEMS), "mode": "manual",
                                     "url": "http://127.0.0.1:8765/"}
    assert "5 of 5 items wait" in pause_description(review_status(manual))


def test_accept_confident_accepts_only_confident_agreeing_items(tmp_path):
    p = make_params(tmp_path, {"review": {"mode": "accept-confident", "confidence_threshold": 0.95}})
    preds = write_review_inputs(p)
    with pytest.raises(WaitingForReview, match="3 of 5 items wait"):
        review.run(p, **stage_kwargs(p))
    corrections = review.read_corrections(p.paths.review / "corrections.csv")
    expected = set(preds.loc[(preds["confidence"] >= 0.95) & preds["agrees"], "file_name"])
    assert set(corrections["file_name"]) == expected and len(expected) == 2  # 0.97 disagreeing item waits
    assert set(corrections["reviewer"]) == {review.AUTO_REVIEWER} and set(corrections["decision"]) == {"accept"}
    assert {e["reviewer"] for e in _audit(p)} == {review.AUTO_REVIEWER}


def test_reference_mode_decides_everything_and_is_marked_simulated(tmp_path, monkeypatch):
    p = make_params(tmp_path, {"review": {"mode": "reference"}})
    write_review_inputs(p)
    seen = []

    def fake_reference_labels(images, params):
        seen.extend(images)
        return ["reject"] + ["big"] * (len(images) - 1)

    monkeypatch.setitem(sys.modules, "tasks.reference",
                        types.SimpleNamespace(reference_labels=fake_reference_labels))
    out = review.run(p, **stage_kwargs(p))
    assert len(seen) == len(ITEMS) and all(im.size == (32, 32) for im in seen)
    corrections = review.read_corrections(out.corrections)
    assert set(corrections["reviewer"]) == {review.REFERENCE_REVIEWER}
    assert out.metrics["simulated"] == 1 and out.metrics["simulated_decisions"] == len(ITEMS)
    assert out.metrics["waiting"] == 0 and out.metrics["rejected"] == 1
    assert out.metrics["accepted"] + out.metrics["corrected"] == len(ITEMS) - 1
    first = corrections.iloc[0]  # the queue's first item got "reject"
    assert first["decision"] == "reject" and first["final_label"] == ""


def test_reference_labeler_count_mismatch_is_an_error(tmp_path, monkeypatch):
    p = make_params(tmp_path)
    write_review_inputs(p)
    monkeypatch.setitem(sys.modules, "tasks.reference",
                        types.SimpleNamespace(reference_labels=lambda images, params: ["big"]))
    with pytest.raises(StageError, match="returned 1 labels for 5"):
        review.run(p, **stage_kwargs(p))


def test_complete_review_returns_metrics_and_keeps_human_decisions(manual):
    store = _store(manual)
    for i, f in enumerate(store.waiting()):
        store.decide(f, ["small", "big", "reject"][i % 3], version=0, reviewer="ann")
    out = review.run(manual, **stage_kwargs(manual))
    m = out.metrics
    assert (m["reviewed"], m["waiting"], m["human_decisions"], m["simulated"]) == (5, 0, 5, 0)
    assert m["accepted"] + m["corrected"] + m["rejected"] == 5 and m["rejected"] == 1
    assert m["seconds_per_item"] is not None and m["seconds_per_item"] >= 0
    corrections = pd.read_csv(out.corrections, dtype=str, keep_default_na=False)
    kept = corrections[corrections["decision"] != "reject"]
    assert m["intended_agreement"] == round((kept["final_label"] == kept["intended_label"]).mean(), 4)
    assert 0 < m["intended_agreement"] < 1, "the fixture mixes agreeing and disagreeing labels"
    assert list(corrections.columns) == review.CORRECTION_COLUMNS
    assert list(corrections["file_name"]) == list(store.items)  # queue order


# ------------------------------------------------------------------------------------------------- store
def test_stale_save_is_refused_and_both_attempts_are_audited(manual):
    ann, bob = _store(manual), _store(manual)  # two reviewers, two processes' view of the same folder
    f = ann.waiting()[0]
    ann.decide(f, "small", version=0, reviewer="ann")
    bob = _store(manual)  # bob re-opens but still submits the version he saw before ann saved
    with pytest.raises(review.Conflict):
        bob.decide(f, "big", version=0, reviewer="bob")
    entries = [e for e in _audit(manual) if e["file_name"] == f]
    assert [(e["reviewer"], e["outcome"]) for e in entries] == [("ann", "saved"), ("bob", "conflict")]
    assert entries[1]["new"] == {"label": "big"} and entries[1]["version_seen"] == 0
    assert review.read_corrections(manual.paths.review / "corrections.csv").iloc[0]["final_label"] == "small"


def test_undo_restores_previous_state_as_a_new_audit_entry(manual):
    store = _store(manual)
    f = store.waiting()[0]
    store.decide(f, "small", version=0, reviewer="ann")
    store.decide(f, "reject", version=1, reviewer="ann")
    view = store.undo(f, version=2, reviewer="ann")
    assert (view["status"], view["final_label"], view["version"]) == ("correct", "small", 3)
    view = store.undo(f, version=3, reviewer="ann")  # undoing an undo redoes the reject
    assert view["status"] == "reject"
    assert [e["action"] for e in _audit(manual)] == ["decide", "decide", "undo", "undo"]
    store2 = _store(manual)
    assert store2.versions[f] == 4 and store2.item_view(f)["status"] == "reject"


def test_undo_without_history_is_an_error(manual):
    store = _store(manual)
    with pytest.raises(review.ReviewError, match="nothing to undo"):
        store.undo(store.waiting()[0], version=0, reviewer="ann")


def test_bad_label_item_or_reviewer_changes_nothing(manual):
    store = _store(manual)
    f = store.waiting()[0]
    for kwargs, match in [(dict(file_name=f, label="huge", reviewer="ann"), "unknown label"),
                          (dict(file_name="images/nope.png", label="big", reviewer="ann"), "not in the review"),
                          (dict(file_name=f, label="big", reviewer=" "), "reviewer is required"),
                          (dict(file_name=f, label="big", reviewer="a\nb"), "one line")]:
        with pytest.raises(review.ReviewError, match=match):
            store.decide(kwargs.pop("file_name"), kwargs.pop("label"), version=0, **kwargs)
    assert not (manual.paths.review / "corrections.csv").exists() and _audit(manual) == []


def test_crash_during_save_leaves_old_corrections_intact(manual, monkeypatch):
    store = _store(manual)
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
    assert _audit(manual)[-1]["outcome"] == "failed"
    store.decide(second, "small", version=0, reviewer="ann")  # the same save succeeds afterwards
    assert len(pd.read_csv(path)) == 2


def test_torn_audit_line_is_skipped_and_next_append_starts_a_new_line(manual):
    store = _store(manual)
    f = store.waiting()[0]
    store.decide(f, "big", version=0, reviewer="ann")
    audit = manual.paths.review / "audit.jsonl"
    with audit.open("a") as fh:
        fh.write('{"torn": ')  # a kill mid-append
    store = _store(manual)
    assert store.versions[f] == 1
    store.decide(f, "small", version=1, reviewer="ann")
    entries = _audit(manual)
    assert [e["version"] for e in entries] == [1, 2]
    assert audit.read_text().startswith(json.dumps(entries[0], sort_keys=True))  # never rewritten


def test_hand_broken_corrections_fail_validation_with_row_names(manual):
    store = _store(manual)
    f = store.waiting()[0]
    store.decide(f, "big", version=0, reviewer="ann")
    store.decisions[f] = {**store.decisions[f], "decision": "accept", "final_label": "small"}  # accept ≠ pred
    from tasks.validation import ValidationFailed

    with pytest.raises(ValidationFailed, match=f):
        store._write(store.decisions)


# ------------------------------------------------------------------------------------------------- Prefect
@pytest.mark.slow
def test_prefect_pause_is_resumed_by_the_review_app_with_input(manual):
    """The flow pauses with ReviewInput; deciding the last item in the app resumes it (persistent API server)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import pause_flow_run
    from prefect.runtime import flow_run as current_run
    from prefect.testing.utilities import prefect_test_harness
    from starlette.testclient import TestClient

    from tasks.review_app import create_app
    from tasks.review_input import ReviewInput, resume_callback

    box: dict = {}

    @flow
    def checkpoint():
        box["id"] = current_run.id
        status = review_status(manual)
        answer = pause_flow_run(wait_for_input=ReviewInput.with_initial_data(
            description=pause_description(status), reviewer=""), timeout=90, poll_interval=1)
        return answer.reviewer, answer.action

    def review_in_app():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "id" in box:
                with get_client(sync_client=True) as client:
                    if client.read_flow_run(box["id"]).state.is_paused():
                        break
            time.sleep(0.5)
        app = create_app(manual, on_complete=resume_callback(box["id"]))
        client = TestClient(app, base_url="http://127.0.0.1:8765")
        token = client.get("/").text.split('name="csrf-token" content="')[1].split('"')[0]
        for item in client.get("/api/items").json()["items"]:
            r = client.post("/api/decide", headers={"X-CSRF-Token": token},
                            json={"file_name": item["file_name"], "label": item["pred_label"], "version": 0,
                                  "reviewer": "ann"})
            box.setdefault("codes", []).append(r.status_code)

    with pytest.raises(WaitingForReview):  # the stage stops at the checkpoint first, as in the flow
        review.run(manual, **stage_kwargs(manual))
    with prefect_test_harness(server_startup_timeout=60):
        ctx = contextvars.copy_context()  # the harness's API URL lives in a context variable
        worker = threading.Thread(target=ctx.run, args=(review_in_app,), daemon=True)
        worker.start()
        result = checkpoint()
        worker.join(timeout=30)
    assert box["codes"] == [200] * len(ITEMS)
    assert result == ("ann", "done")


# ------------------------------------------------------------------------------------------------- DVC
STUB = '''
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from review_fixtures import predictions_frame, write_generated
from tasks.params import load_params

stage = sys.argv[1]
params = load_params()
with open("runs.log", "a") as fh:
    fh.write(stage + "\\n")
df = predictions_frame(classes=params.classes)
if stage == "generate":
    write_generated(params.paths.generate, df)
elif stage == "predict":
    params.paths.predict.mkdir(parents=True, exist_ok=True)
    df.to_csv(params.paths.predict / "predictions.csv", index=False)
else:
    params.paths.retrain.mkdir(parents=True, exist_ok=True)
    Path(params.paths.retrain, "used.csv").write_text(Path(params.paths.review, "corrections.csv").read_text())
'''


@pytest.mark.slow
def test_dvc_repro_stops_at_checkpoint_and_resumes_from_review_without_rerunning_earlier_stages(tmp_path):
    """The real review block of dvc.yaml between stub upstream/downstream stages."""
    import yaml
    from project import dvc, make_project
    from starlette.testclient import TestClient

    from conftest import REPO
    from tasks.params import load_params
    from tasks.review_app import create_app

    proj = make_project(tmp_path / "proj", {"review": {"mode": "manual"}})
    (proj / "stub.py").write_text(STUB)
    real = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stages = {
        "generate": {"cmd": "python stub.py generate", "deps": ["stub.py"],
                     "outs": [{"${paths.generate}": {"persist": True}}]},
        "predict": {"cmd": "python stub.py predict", "deps": ["stub.py", "${paths.generate}"],
                    "outs": ["${paths.predict}"]},
        "review": real["review"],
        "retrain": {"cmd": "python stub.py retrain", "deps": ["stub.py", "${paths.review}/corrections.csv"],
                    "outs": ["${paths.retrain}"]},
    }
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    runs = lambda: (proj / "runs.log").read_text().split()  # noqa: E731

    stopped = dvc(proj, "repro", check=False)
    assert stopped.returncode != 0
    assert "5 of 5 items wait" in stopped.stdout + stopped.stderr and "synthloop review" in stopped.stderr
    assert runs() == ["generate", "predict"]

    params = load_params(proj / "params.yaml")
    params = params.model_copy(update={"paths": params.paths.resolve(proj)})
    client = TestClient(create_app(params), base_url="http://127.0.0.1:8765")
    token = client.get("/").text.split('name="csrf-token" content="')[1].split('"')[0]

    def decide(label_of):
        for it in client.get("/api/items").json()["items"]:
            r = client.post("/api/decide", headers={"X-CSRF-Token": token}, json={
                "file_name": it["file_name"], "label": label_of(it), "version": it["version"], "reviewer": "ann"})
            assert r.status_code == 200

    decide(lambda it: it["pred_label"])
    resumed = dvc(proj, "repro")
    assert runs() == ["generate", "predict", "retrain"]  # review ran (no stub log), then retrain only
    assert "Running stage 'review'" in resumed.stdout
    assert (proj / "data/retrain/used.csv").read_text() == (proj / "data/review/corrections.csv").read_text()

    decide(lambda it: "reject")  # a person changes their mind later, in the app
    status = dvc(proj, "status", "--json")
    changed = json.loads(status.stdout)
    assert "review" in changed and "generate" not in changed and "predict" not in changed
    assert "modified" in json.dumps(changed["review"]) and "corrections.csv" in json.dumps(changed["review"])
    again = dvc(proj, "repro")
    assert "Running stage 'review'" in again.stdout and "Running stage 'predict'" not in again.stdout
    assert runs() == ["generate", "predict", "retrain", "retrain"]
    used = (proj / "data/retrain/used.csv").read_text()
    assert used.count(",reject,") == len(ITEMS)  # retrain saw exactly the person's latest decisions
    assert dvc(proj, "status", "--json").stdout.strip() in ("{}", "")


# ------------------------------------------------------------------------------------------------- content
def _decide_all(store, labels=("small", "big", "reject")):
    for i, f in enumerate(store.waiting()):
        store.decide(f, labels[i % len(labels)], version=0, reviewer="ann")


def test_decisions_record_the_sha256_of_the_image_decided(manual):
    store = _store(manual)
    f = store.waiting()[0]
    store.decide(f, "big", version=0, reviewer="ann")
    manifest = pd.read_csv(manual.paths.generate / "manifest.csv").set_index("file_name")["sha256"]
    row = review.read_corrections(manual.paths.review / "corrections.csv").iloc[0]
    assert row["sha256"] == manifest[f] == store.item_view(f)["sha256"]
    assert _audit(manual)[0]["new"]["sha256"] == manifest[f]
    queue = pd.read_csv(manual.paths.review / "queue.csv", dtype=str).set_index("file_name")["sha256"]
    assert queue.to_dict() == manifest.to_dict()


def test_regenerated_image_invalidates_its_decision_and_waits_again(manual, caplog):
    store = _store(manual)
    _decide_all(store)
    f = list(store.items)[1]
    old = dict(store.decisions[f])
    new_sha = regenerate(manual.paths.generate, f)  # new pixels at the same file name
    with pytest.raises(WaitingForReview, match="1 of 5 items wait"):
        review.run(manual, **stage_kwargs(manual))
    assert "1 review decisions were made on a different image" in caplog.text
    reopened = _store(manual)
    assert reopened.waiting() == [f] and reopened.stale_decisions == 0  # invalidated once, by run()
    assert reopened.item_view(f)["status"] == "waiting" and reopened.versions[f] == 2
    corrections = review.read_corrections(manual.paths.review / "corrections.csv")
    assert f not in set(corrections["file_name"]) and len(corrections) == len(ITEMS) - 1
    assert set(corrections["file_name"]) == set(store.items) - {f}  # the others keep their decisions
    entry = _audit(manual)[-1]
    assert (entry["action"], entry["outcome"], entry["file_name"], entry["new"]) == ("invalidate", "saved", f, None)
    assert entry["old"]["final_label"] == old["final_label"] and entry["old"]["sha256"] == old["sha256"]
    assert old["sha256"][:12] in entry["note"] and new_sha[:12] in entry["note"] and "changed" in entry["note"]
    with pytest.raises(review.Conflict):  # a page still showing the old image saves with the old version
        reopened.decide(f, "big", version=1, reviewer="bob")
    with pytest.raises(review.ReviewError, match="different image"):  # undo must not bring the old label back
        reopened.undo(f, version=2, reviewer="ann")
    assert review_status(manual)["waiting"] == 1


def test_stale_decisions_metric_counts_invalidations_of_this_open(manual):
    _decide_all(_store(manual))
    f = list(_store(manual).items)[0]
    regenerate(manual.paths.generate, f)
    assert review.review_metrics(_store(manual), manual)["stale_decisions"] == 1
    assert review.review_metrics(_store(manual), manual)["stale_decisions"] == 0  # already invalidated


def test_save_naming_the_old_image_content_is_refused(manual):
    store = _store(manual)
    f = store.waiting()[0]
    seen = store.item_view(f)["sha256"]
    regenerate(manual.paths.generate, f)  # undecided: its version stays 0, only the content tells
    fresh = _store(manual)
    with pytest.raises(review.ImageChanged, match="different image now"):
        fresh.decide(f, "big", version=0, reviewer="ann", sha256=seen)
    assert fresh.item_view(f)["status"] == "waiting" and _audit(manual)[-1]["outcome"] == "conflict"
    fresh.decide(f, "big", version=0, reviewer="ann", sha256=fresh.item_view(f)["sha256"])
    assert fresh.item_view(f)["status"] == "accept"


def test_legacy_corrections_without_sha256_are_all_invalidated(manual):
    store = _store(manual)
    _decide_all(store)
    path = manual.paths.review / "corrections.csv"
    legacy = pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns="sha256")
    legacy.to_csv(path, index=False)  # written before decisions carried content hashes
    reopened = _store(manual)
    assert reopened.stale_decisions == len(ITEMS) and len(reopened.waiting()) == len(ITEMS)
    assert review.read_corrections(path).empty
    assert [e["action"] for e in _audit(manual)][-len(ITEMS):] == ["invalidate"] * len(ITEMS)
    assert all("(none) then" in e["note"] for e in _audit(manual)[-len(ITEMS):])


def test_orphaned_decision_keeps_its_sha256_and_counts_again_when_the_image_returns(manual):
    store = _store(manual)
    _decide_all(store)
    preds_path = manual.paths.predict / "predictions.csv"
    preds = pd.read_csv(preds_path)
    gone = preds.loc[0, "file_name"]
    preds.iloc[1:].to_csv(preds_path, index=False)  # e.g. num_images lowered: no longer predicted or queued
    smaller = _store(manual)
    assert smaller.stale_decisions == 0
    assert review.review_metrics(smaller, manual)["orphaned_decisions"] == 1
    kept = review.read_corrections(manual.paths.review / "corrections.csv").set_index("file_name")
    assert kept.loc[gone, "sha256"] == store.items[gone]["sha256"]
    preds.to_csv(preds_path, index=False)  # the same image comes back
    back = _store(manual)
    assert back.stale_decisions == 0 and back.waiting() == []


def test_review_status_counts_only_decisions_on_the_queued_content(manual):
    _decide_all(_store(manual))
    assert review_status(manual)["waiting"] == 0
    path = manual.paths.review / "corrections.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[0, "sha256"] = "0" * 64  # made on another image; the store has not re-opened yet
    df.loc[1, "sha256"] = ""
    df.to_csv(path, index=False)
    assert review_status(manual)["waiting"] == 2


def test_corrections_suite_requires_sha256_column_and_hex_values(manual):
    from tasks.validation import ValidationFailed, validate

    store = _store(manual)
    _decide_all(store)
    df = pd.read_csv(manual.paths.review / "corrections.csv", dtype=str, keep_default_na=False).astype({"version": int})
    validate(df.assign(sha256=[""] + df["sha256"].tolist()[1:]), "review_corrections", classes=manual.classes)
    with pytest.raises(ValidationFailed, match=f"match_regex on 'sha256': failing rows: {df.loc[0, 'file_name']}"):
        validate(df.assign(sha256=["xyz"] + df["sha256"].tolist()[1:]), "review_corrections", classes=manual.classes)
    with pytest.raises(ValidationFailed, match="expect_column_to_exist on 'sha256'"):
        validate(df.drop(columns="sha256"), "review_corrections", classes=manual.classes)
