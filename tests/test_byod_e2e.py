"""Bring your own data, end to end: the whole loop on a folder of the teat-end sample set (RGB photos, four
ordered scores; ``tasks/samples/teats.py``) configured as a user would (``dataset.source: folder``, classes read
from the folder names). No phantom is made or read, the classes come from the data, the generated images are RGB
like the data, and the loop reaches evaluate: ``dvc repro`` stops at the review checkpoint, a scripted reviewer
decides every waiting item (its intended class) through the review store, and ``dvc repro`` finishes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

from project import dvc, make_project
from tasks.samples import teats

pytestmark = pytest.mark.slow

#: What a user edits in params.yaml (README "Your own data"), plus a split that leaves a few train images per class.
BYOD = {
    "dataset": {"source": "folder", "classes": None, "ordered": True},
    "paths": {"raw": "data/byod/teats"},
    "ingest": {"channels": 3, "split": {"train": 0.5, "val": 0.2, "test": 0.3}},
    "caption": {"thing": "teat end"},
    "review": {"mode": "accept-confident", "confidence_threshold": 0.9},
}


def _decide_waiting(project, monkeypatch) -> int:
    """A scripted reviewer: every item still waiting gets its intended class (a person agreeing with the prompt)."""
    from tasks.params import load_params
    from tasks.review.store import open_store

    monkeypatch.chdir(project)  # params paths are relative to the project, as for DVC
    p = load_params()
    store = open_store(p, predictions=p.paths.predict, generated=p.paths.generate, out_dir=p.paths.review)
    choices = [(f, store.items[f]["intended_label"], store.versions.get(f, 0)) for f in store.waiting()]
    store.decide_many(choices, reviewer="scripted", source="test", note="e2e: intended class")
    return len(choices)


def test_byod_loop_uses_only_the_users_folder(tmp_path, monkeypatch):
    project = make_project(tmp_path / "proj", BYOD)
    teats.write(project / "data" / "byod" / "teats", per_class=12, size=32, seed=3)
    first = dvc(project, "repro", check=False, timeout=2400)  # minutes when idle; a loaded machine needs margin
    assert "Running stage 'review'" in first.stdout, first.stdout[-3000:] + first.stderr[-3000:]
    _decide_waiting(project, monkeypatch)
    dvc(project, "repro", timeout=1200)

    phantom = project / "data" / "phantom"
    assert [p.name for p in phantom.rglob("*")] == ["skipped.json"], "no phantom made with dataset.source folder"
    assert json.loads((project / "metrics" / "phantom.json").read_text())["skipped"] == 1.0

    prompts = json.loads((project / "data" / "caption" / "prompts.json").read_text())
    assert prompts["classes"] == list(teats.CLASSES), "classes come from the folder names, sorted"
    assert all("hip" not in p for p in prompts["instance_prompts"].values())

    trainval = pd.read_csv(project / "data" / "ingest" / "trainval" / "manifest.csv")
    pretrain = json.loads((project / "metrics" / "pretrain.json").read_text())
    assert pretrain["pool_images"] == 0 and pretrain["trainval_images"] == len(trainval)
    record = json.loads((project / "data" / "pretrain" / "pipeline.json").read_text())
    assert record["trainval_images"] == len(trainval) and record["pool_images"] == 0

    manifest = pd.read_csv(project / "data" / "generate" / "manifest.csv")
    assert set(manifest["intended_label"]) <= set(teats.CLASSES) and len(manifest) > 0
    modes = {Image.open(project / "data" / "generate" / f).mode for f in manifest["file_name"]}
    assert modes == {"RGB"}, "an RGB data set gets RGB generated images"

    evaluate = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert evaluate and (project / "reports" / "report.md").is_file()
