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
    assert counts == {"imported": 2, "conflicts": 0, "unknown": 0, "image_changed": 0}
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
    assert ls.import_export(p, export_path) == {"imported": 0, "conflicts": 1, "unknown": 0, "image_changed": 0}
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
    assert counts == {"imported": 1, "conflicts": 0, "unknown": 0, "image_changed": 1}
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
