"""Label Studio round trip: export tasks with predictions (documented pre-annotation format), import an export."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from review_fixtures import ITEMS, decisions, regenerate, write_review_inputs

from conftest import make_params
from tasks.review import labelstudio as ls
from tasks.review.audit import read_audit
from tasks.review.store import open_store


@pytest.fixture
def p(tmp_path):
    params = make_params(tmp_path, {"review": {"mode": "manual"}})
    write_review_inputs(params)
    return params


def _annotate(task: dict, choice: str, user, when: str, cancelled: bool = False) -> dict:
    """What Label Studio's JSON export adds to a task once someone annotated it (guide/task_format)."""
    annotation = {"id": len(task.get("annotations", [])) + 1, "completed_by": user, "was_cancelled": cancelled,
                  "created_at": when, "updated_at": when, "lead_time": 3.2,
                  "result": [{"id": "r1", "from_name": "label", "to_name": "image", "type": "choices",
                              "origin": "manual", "value": {"choices": [choice]}}]}
    return {**task, "id": 7, "annotations": [*task.get("annotations", []), annotation]}


def _counts(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "conflict_items"}


def test_export_has_predictions_scores_urls_and_a_choices_config(p, tmp_path):
    tasks_path, config_path = ls.export_queue(p, tmp_path / "ls", base_url="http://files.local/gen")
    tasks = json.loads(tasks_path.read_text())
    assert len(tasks) == len(ITEMS)
    first = tasks[0]
    assert first["data"]["image"] == "http://files.local/gen/" + first["data"]["file_name"]
    manifest = pd.read_csv(p.paths.generate / "manifest.csv").set_index("file_name")["sha256"]
    assert all(t["data"]["sha256"] == manifest[t["data"]["file_name"]] for t in tasks)  # the content exported
    pred = first["predictions"][0]
    assert pred["score"] == first["data"]["confidence"] == 0.97
    assert pred["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                               "value": {"choices": [first["data"]["pred_label"]]}}]
    root = ET.fromstring(config_path.read_text())
    choices = root.find("Choices")
    assert choices.get("name") == "label" and choices.get("toName") == root.find("Image").get("name") == "image"
    assert [c.get("value") for c in choices.findall("Choice")] == ["small", "big", "reject"]


def test_default_image_urls_point_at_the_review_server(p, tmp_path):
    tasks = json.loads(ls.export_queue(p, tmp_path / "ls")[0].read_text())
    assert tasks[0]["data"]["image"].startswith("http://127.0.0.1:8765/image/images/")


def test_labeling_config_escapes_class_names():
    xml = ls.labeling_config(["a\"<b>", "c"])
    assert [c.get("value") for c in ET.fromstring(xml).iter("Choice")] == ["a\"<b>", "c", "reject"]


def test_round_trip_imports_latest_annotation_as_corrections_with_audit(p, tmp_path):
    tasks = json.loads(ls.export_queue(p, tmp_path / "ls")[0].read_text())
    exported = [
        _annotate(_annotate(tasks[0], "big", 3, "2024-05-01T10:00:00Z"), "small", 3, "2024-05-01T10:05:00Z"),
        _annotate(tasks[1], "reject", {"id": 4, "email": "vet@clinic.example"}, "2024-05-01T10:01:00Z"),
        _annotate(tasks[2], "small", 3, "2024-05-01T10:02:00Z", cancelled=True),  # skipped → not decided
        tasks[3],  # never annotated
    ]
    export_path = tmp_path / "export.json"
    export_path.write_text(json.dumps(exported))
    counts = ls.import_export(p, export_path)
    assert _counts(counts) == {"imported": 2, "updated": 0, "unchanged": 0, "conflicts": 0, "unknown": 0,
                               "image_changed": 0}
    corrections = decisions(p.paths.review / "corrections.csv").set_index("file_name")
    f0, f1 = tasks[0]["data"]["file_name"], tasks[1]["data"]["file_name"]
    assert corrections.loc[f0, ["final_label", "decision", "reviewer"]].tolist() == ["small", "correct",
                                                                                     "labelstudio:3"]
    assert corrections.loc[f1, ["final_label", "decision", "reviewer"]].tolist() == [
        "", "reject", "labelstudio:vet@clinic.example"]
    assert len(corrections) == 2
    audit = read_audit(p.paths.review / "audit.jsonl")
    assert {(e["file_name"], e["source"], e["outcome"]) for e in audit} == {(f0, "labelstudio", "saved"),
                                                                           (f1, "labelstudio", "saved")}


def test_import_of_an_item_changed_since_export_is_a_logged_conflict(p, tmp_path):
    tasks = json.loads(ls.export_queue(p, tmp_path / "ls")[0].read_text())
    f0 = tasks[0]["data"]["file_name"]
    open_store(p, predictions=p.paths.predict, generated=p.paths.generate, out_dir=p.paths.review).decide(
        f0, "big", version=0, reviewer="ann")  # decided in the app after the export
    export_path = tmp_path / "export.json"
    export_path.write_text(json.dumps([_annotate(tasks[0], "small", 3, "2024-05-01T10:00:00Z")]))
    assert _counts(ls.import_export(p, export_path)) == {"imported": 0, "updated": 0, "unchanged": 0,
                                                         "conflicts": 1, "unknown": 0, "image_changed": 0}
    assert decisions(p.paths.review / "corrections.csv").iloc[0]["reviewer"] == "ann"
    assert [(e["reviewer"], e["outcome"]) for e in read_audit(p.paths.review / "audit.jsonl")] == [
        ("ann", "saved"), ("labelstudio:3", "conflict")]


def test_import_of_a_result_for_a_regenerated_image_is_refused_and_audited(p, tmp_path, caplog):
    tasks = json.loads(ls.export_queue(p, tmp_path / "ls")[0].read_text())
    f0, f1 = tasks[0]["data"]["file_name"], tasks[1]["data"]["file_name"]
    new_sha = regenerate(p.paths.generate, f0)  # generate re-ran after the export: new pixels, same file name
    export_path = tmp_path / "export.json"
    export_path.write_text(json.dumps([_annotate(tasks[0], "small", 3, "2024-05-01T10:00:00Z"),
                                       _annotate(tasks[1], "big", 3, "2024-05-01T10:01:00Z")]))
    counts = ls.import_export(p, export_path)
    assert _counts(counts) == {"imported": 1, "updated": 0, "unchanged": 0, "conflicts": 0, "unknown": 0,
                               "image_changed": 1}
    assert "1 Label Studio results refused: the image changed" in caplog.text and f0 in caplog.text
    corrections = decisions(p.paths.review / "corrections.csv")
    assert corrections["file_name"].tolist() == [f1]  # the other image's result is applied
    refused = [e for e in read_audit(p.paths.review / "audit.jsonl") if e["file_name"] == f0]
    assert [(e["outcome"], e["source"]) for e in refused] == [("conflict", "labelstudio")]
    assert tasks[0]["data"]["sha256"][:12] in refused[0]["note"] and new_sha[:12] in refused[0]["note"]


def test_import_of_an_export_without_sha256_is_refused(p, tmp_path):
    tasks = json.loads(ls.export_queue(p, tmp_path / "ls")[0].read_text())
    legacy = {**tasks[0], "data": {k: v for k, v in tasks[0]["data"].items() if k != "sha256"}}
    export_path = tmp_path / "export.json"
    export_path.write_text(json.dumps([_annotate(legacy, "small", 3, "2024-05-01T10:00:00Z")]))
    assert ls.import_export(p, export_path)["image_changed"] == 1
    assert decisions(p.paths.review / "corrections.csv").empty


@pytest.mark.parametrize("bad, match", [
    ({"data": {}}, "list of tasks"),
    ([{"annotations": []}], "not a task object"),
    ([{"data": {"image": "x"}}], "data.file_name missing"),
    ([{"data": {"file_name": "a.png"}, "annotations": [
        {"result": [{"type": "choices", "from_name": "label", "value": {"choices": ["a", "b"]}}]}]}],
     "exactly one choice"),
])
def test_parse_export_rejects_malformed_files(bad, match):
    with pytest.raises(ls.LabelStudioFormatError, match=match):
        ls.parse_export(bad)


def test_import_of_non_json_is_a_clear_error(p, tmp_path):
    path = tmp_path / "export.json"
    path.write_text("not json")
    with pytest.raises(ls.LabelStudioFormatError, match="not JSON"):
        ls.import_export(p, path)


def _write(tmp_path, tasks, name="export.json"):
    path = tmp_path / name
    path.write_text(json.dumps(tasks))
    return path


def _change(task: dict, choice: str, when: str) -> dict:
    """What Label Studio exports after someone edits the task's annotation: same id, new result and updated_at."""
    annotation = {**task["annotations"][-1], "updated_at": when, "lead_time": 9.5,
                  "result": [{**task["annotations"][-1]["result"][0], "value": {"choices": [choice]}}]}
    return {**task, "annotations": [*task["annotations"][:-1], annotation]}


def test_reimport_skips_unchanged_silently_and_applies_a_change_made_in_label_studio(p, tmp_path, caplog):
    tasks = json.loads(ls.export_queue(p, tmp_path / "ls")[0].read_text())
    first = [_annotate(tasks[0], "big", 3, "2024-05-01T10:00:00Z"), _annotate(tasks[1], "small", 3,
                                                                              "2024-05-01T10:01:00Z")]
    assert _counts(ls.import_export(p, _write(tmp_path, first)))["imported"] == 2
    n_audit = len(read_audit(p.paths.review / "audit.jsonl"))
    caplog.clear()
    again = ls.import_export(p, _write(tmp_path, first))  # the same export once more: nothing happens
    assert _counts(again) == {"imported": 0, "updated": 0, "unchanged": 2, "conflicts": 0, "unknown": 0,
                              "image_changed": 0}
    assert len(read_audit(p.paths.review / "audit.jsonl")) == n_audit
    assert not [r for r in caplog.records if r.levelno >= 30]

    edited = [_change(first[0], "small", "2024-05-02T09:00:00Z"), first[1]]  # corrected in Label Studio later
    counts = ls.import_export(p, _write(tmp_path, edited))
    assert (counts["updated"], counts["unchanged"], counts["conflicts"]) == (1, 1, 0)
    f0 = tasks[0]["data"]["file_name"]
    assert decisions(p.paths.review / "corrections.csv").set_index("file_name").loc[f0, "final_label"] == "small"
    entry = read_audit(p.paths.review / "audit.jsonl")[-1]
    assert entry["file_name"] == f0 and entry["outcome"] == "saved" and entry["source"] == "labelstudio"
    assert entry["context"]["annotation"]["lead_time"] == 9.5  # seconds per item survive the import
    assert entry["context"]["annotation"]["updated_at"] == "2024-05-02T09:00:00Z"
    assert entry["context"]["annotation"]["completed_by"] == 3


def test_a_change_in_both_places_is_a_shown_conflict_and_the_app_decision_stands(p, tmp_path, caplog):
    tasks = json.loads(ls.export_queue(p, tmp_path / "ls")[0].read_text())
    first = [_annotate(tasks[0], "big", 3, "2024-05-01T10:00:00Z")]
    ls.import_export(p, _write(tmp_path, first))
    f0 = tasks[0]["data"]["file_name"]
    store = open_store(p, predictions=p.paths.predict, generated=p.paths.generate, out_dir=p.paths.review)
    store.decide(f0, "reject", version=store.versions[f0], reviewer="ann")  # changed in the app ...
    edited = [_change(first[0], "small", "2024-05-02T09:00:00Z")]  # ... and in Label Studio
    counts = ls.import_export(p, _write(tmp_path, edited))
    assert (counts["conflicts"], counts["updated"]) == (1, 0)
    assert counts["conflict_items"] == [{"file_name": f0, "labelstudio": "small", "by": "labelstudio:3",
                                         "synthloop": "reject", "synthloop_by": "ann"}]
    assert f"conflict: {f0} is small in Label Studio" in caplog.text
    assert decisions(p.paths.review / "corrections.csv").set_index("file_name").loc[f0, "decision"] == "reject"
    last = read_audit(p.paths.review / "audit.jsonl")[-1]
    assert (last["outcome"], last["source"], last["new"]["label"]) == ("conflict", "labelstudio", "small")
    # The app's change alone (Label Studio unchanged since the last import) is no conflict: skipped silently.
    assert _counts(ls.import_export(p, _write(tmp_path, first)))["unchanged"] == 1
    assert ls.import_export(p, _write(tmp_path, edited))["conflicts"] == 1  # shown again until resolved
    store = open_store(p, predictions=p.paths.predict, generated=p.paths.generate, out_dir=p.paths.review)
    store.decide(f0, "small", version=store.versions[f0], reviewer="ann")  # resolved: the app agrees now
    assert _counts(ls.import_export(p, _write(tmp_path, edited)))["unchanged"] == 1


def test_annotator_ids_map_to_names(p, tmp_path):
    tasks = json.loads(ls.export_queue(p, tmp_path / "ls")[0].read_text())
    path = _write(tmp_path, [_annotate(tasks[0], "big", 3, "2024-05-01T10:00:00Z")])
    ls.import_export(p, path, annotators={"3": "ann@clinic.example"})
    assert decisions(p.paths.review / "corrections.csv").iloc[0]["reviewer"] == "labelstudio:ann@clinic.example"


def test_json_min_export_gets_a_one_line_message_naming_the_format_to_choose(p, tmp_path, monkeypatch, capsys):
    json_min = [{"image": "http://127.0.0.1:8765/image/images/small/000000.png", "file_name": "images/x.png",
                 "id": 7, "label": "small", "annotator": 3, "annotation_id": 1, "lead_time": 3.2}]
    path = _write(tmp_path, json_min)
    with pytest.raises(ls.LabelStudioFormatError, match=r"JSON-MIN export .* choose Export → JSON"):
        ls.import_export(p, path)
    monkeypatch.setattr(ls, "load_params", lambda: p)
    with pytest.raises(SystemExit) as stop:
        ls.main(["import", str(path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "JSON-MIN" in err and "Export → JSON" in err


def test_import_result_line_is_not_buried_under_validation_logs(p, tmp_path, caplog):
    tasks = json.loads(ls.export_queue(p, tmp_path / "ls")[0].read_text())
    path = _write(tmp_path, [_annotate(tasks[0], "big", 3, "2024-05-01T10:00:00Z")])
    caplog.set_level("INFO")
    ls.import_export(p, path)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= 20]
    assert lines == ["Label Studio import: 1 new, 0 updated, 0 unchanged, 0 conflicts (changed in both places), "
                     "0 image changed, 0 not in the queue; median lead_time 3.2 s per item"]
