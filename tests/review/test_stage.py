"""The review stage: completeness, metrics, validation, and the dvc repro checkpoint."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from review_fixtures import ITEMS, open_review_store, stage_kwargs

from tasks.review.prefect_input import pause_description
from tasks.review.stage import run as run_review
from tasks.review.status import review_status
from tasks.stage import StageError, WaitingForReview
from tasks.tables import CORRECTION_COLUMNS


def test_load_queue_requires_the_manifest_with_sha256(manual):
    manifest = manual.paths.generate / "manifest.csv"
    full = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    full.drop(columns="sha256").to_csv(manifest, index=False)
    with pytest.raises(StageError, match=f"{manifest}.*no sha256 column"):
        open_review_store(manual)
    full.assign(sha256=[""] + full["sha256"].tolist()[1:]).to_csv(manifest, index=False)
    with pytest.raises(StageError, match=f"{manifest} gives no sha256 for 1 queued images"):
        open_review_store(manual)
    manifest.unlink()
    with pytest.raises(StageError, match=f"{manifest} not found"):
        run_review(manual, **stage_kwargs(manual))


def test_manual_mode_incomplete_raises_waiting_for_review(manual):
    with pytest.raises(WaitingForReview) as err:
        run_review(manual, **stage_kwargs(manual))
    msg = str(err.value)
    assert f"{len(ITEMS)} of {len(ITEMS)} items wait" in msg
    assert "synthloop review" in msg and "make review" in msg and "dvc repro" in msg
    assert (manual.paths.review / "queue.csv").is_file()
    assert review_status(manual) == {"total": len(ITEMS), "decided": 0, "waiting": len(ITEMS), "beyond_budget": 0,
                                     "mode": "manual", "url": "http://127.0.0.1:8765/"}
    assert "5 of 5 items wait" in pause_description(review_status(manual))


def test_complete_review_returns_metrics_and_keeps_human_decisions(manual):
    store = open_review_store(manual)
    for i, f in enumerate(store.waiting()):
        store.decide(f, ["small", "big", "reject"][i % 3], version=0, reviewer="ann")
    out = run_review(manual, **stage_kwargs(manual))
    m = out.metrics
    assert (m["reviewed"], m["waiting"], m["human_decisions"], m["simulated"]) == (5, 0, 5, 0)
    assert m["accepted"] + m["corrected"] + m["rejected"] == 5 and m["rejected"] == 1
    assert m["seconds_per_item"] is not None and m["seconds_per_item"] >= 0
    corrections = pd.read_csv(out.corrections, dtype=str, keep_default_na=False)
    kept = corrections[corrections["decision"] != "reject"]
    assert m["intended_agreement"] == round((kept["final_label"] == kept["intended_label"]).mean(), 4)
    assert 0 < m["intended_agreement"] < 1, "the fixture mixes agreeing and disagreeing labels"
    assert list(corrections.columns) == CORRECTION_COLUMNS
    assert list(corrections["file_name"]) == list(store.items)  # queue order




def test_hand_broken_corrections_fail_validation_with_row_names(manual):
    store = open_review_store(manual)
    f = store.waiting()[0]
    store.decide(f, "big", version=0, reviewer="ann")
    path = manual.paths.review / "corrections.csv"
    broken = pd.read_csv(path, dtype=str, keep_default_na=False)
    broken.loc[broken["file_name"] == f, ["decision", "final_label"]] = ["reject", "small"]  # reject has no label
    broken.to_csv(path, index=False)
    from tasks.validation import ValidationFailed

    # the store skips the suite per save (speed); every reader — the store on open, the stage — runs it
    with pytest.raises(ValidationFailed, match=f):
        open_review_store(manual)




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
    from tasks.review.app import create_app

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
