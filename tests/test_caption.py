"""Caption: imagefolder layout, templates, prompts, formula neutralisation, GX on the way in, stage runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_params
from tasks import caption, ingest, phantom
from tasks.stage import run_stage
from tasks.validation import ValidationFailed


def _ingested(params) -> Path:
    phantom.run(params, out_dir=params.paths.phantom)
    return ingest.run(params, raw=params.paths.raw, out_dir=params.paths.ingest).trainval


def test_format_caption_fills_fields() -> None:
    row = {"file_name": "a.png", "label": "big", "angle": "110.25", "left_angle": 111.0, "right_angle": "109.5"}
    text = caption.format_caption("{thing}: {label}, {angle:.1f} ({left_angle:.0f}/{right_angle})",
                                  {**row, "thing": "hip xray"})
    assert text == "hip xray: big, 110.2 (111/109.5)"


def test_format_caption_missing_field_is_named() -> None:
    with pytest.raises(caption.CaptionError, match=r"\['angle'\].*a\.png"):
        caption.format_caption("{label} at {angle}", {"file_name": "a.png", "label": "big", "angle": ""})
    with pytest.raises(caption.CaptionError, match="not a valid format string"):
        caption.format_caption("{label", {"label": "big"})


def test_build_prompts_per_class() -> None:
    prompts = caption.build_prompts(("small", "big"), "zwx", "hip xray")
    assert prompts == {"classes": ["small", "big"],
                       "instance_prompts": {"small": "photo of zwx small hip xray", "big": "photo of zwx big hip xray"},
                       "class_prompt": "photo of a hip xray"}
    with pytest.raises(caption.CaptionError):
        caption.build_prompts((), "zwx", "hip xray")


def test_build_prompts_class_negatives_name_every_other_class() -> None:
    two = caption.build_prompts(("small", "big"), "zwx", "hip xray", class_negatives=True)
    assert two["negative_prompts"] == {"small": "photo of zwx big hip xray", "big": "photo of zwx small hip xray"}
    four = caption.build_prompts(("1", "2", "3", "4"), "zwx", "teat", class_negatives=True)
    assert four["negative_prompts"]["2"] == "photo of zwx 1 teat | photo of zwx 3 teat | photo of zwx 4 teat"
    assert "negative_prompts" not in caption.build_prompts(("only",), "zwx", "teat", class_negatives=True)


def test_build_prompts_caption_prompts_are_distinct_sorted_and_cover_every_class() -> None:
    prompts = caption.build_prompts(("small", "big"), "zwx", "hip xray",
                                    captions={"small": ["b", "a", "b"], "big": ["c"]})
    assert prompts["caption_prompts"] == {"small": ["a", "b"], "big": ["c"]}
    with pytest.raises(caption.CaptionError, match=r"\['big'\]"):
        caption.build_prompts(("small", "big"), "zwx", "hip xray", captions={"small": ["a"]})


def test_run_writes_imagefolders_for_train_and_val_only(params) -> None:
    trainval = _ingested(params)
    out = caption.run(params, trainval=trainval, out_dir=params.paths.caption)
    manifest = pd.read_csv(trainval / "manifest.csv")
    test_files = set(pd.read_csv(params.paths.ingest / "test" / "manifest.csv").sha256)
    for split, folder in (("train", out.train), ("val", out.val)):
        meta = pd.read_csv(folder / "metadata.csv")
        assert list(meta.columns[:3]) == ["file_name", "text", "label"]
        assert len(meta) == (manifest.split == split).sum()
        # HF imagefolder: file_name relative to the folder holding metadata.csv, first path part is the label.
        assert all((folder / f).is_file() and f.split("/")[0] == lab for f, lab in zip(meta.file_name, meta.label))
        assert meta.text.str.startswith("X-ray of a dog hip, left angle").all()  # user captions kept
        assert {"left_angle", "right_angle", "angle"} <= set(meta.columns)
        src = manifest.set_index("file_name").loc[[f"{split}/{f}" for f in meta.file_name]]
        assert not set(src.sha256) & test_files
        assert os.path.samefile(folder / meta.file_name[0], trainval / f"{split}/{meta.file_name[0]}")
    assert not (params.paths.caption / "test").exists()
    prompts = json.loads(out.prompts.read_text())
    assert prompts["instance_prompts"]["big"] == "photo of zwx big hip xray"
    train = pd.read_csv(out.train / "metadata.csv")
    assert prompts["caption_prompts"]["big"] == sorted(set(train.loc[train.label == "big", "text"]))
    assert prompts["negative_prompts"]["big"] == "photo of zwx small hip xray"  # class_negatives in params.yaml
    assert out.metrics["n_train"] == 8 and out.metrics["n_train_linked"] == 8


def test_template_used_when_no_user_caption_and_formulas_neutralised(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"caption": {"template": "{label} hip, {angle:.0f} deg, {thing}"}})
    trainval = _ingested(params)
    manifest = pd.read_csv(trainval / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["caption"] = ""
    manifest.loc[0, "caption"] = "=cmd|' /C calc'!A0"
    manifest.to_csv(trainval / "manifest.csv", index=False)
    out = caption.run(params, trainval=trainval, out_dir=params.paths.caption)
    text = (out.train / "metadata.csv").read_text() + (out.val / "metadata.csv").read_text()
    assert "'=cmd" in text and ",=cmd" not in text
    meta = pd.read_csv(out.train / "metadata.csv")
    templated = meta[meta.caption_source == "template"]
    assert len(templated) and templated.text.str.match(r"^(small|big) hip, \d+ deg, hip xray$").all()


def test_missing_template_field_stops_the_stage(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"caption": {"template": "{label} {breed}"}})
    trainval = _ingested(params)
    manifest = pd.read_csv(trainval / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.assign(caption="").to_csv(trainval / "manifest.csv", index=False)
    with pytest.raises(caption.CaptionError, match="breed"):
        caption.run(params, trainval=trainval, out_dir=params.paths.caption)


def test_bad_manifest_stops_caption_naming_rows(params) -> None:
    trainval = _ingested(params)
    manifest = pd.read_csv(trainval / "manifest.csv", dtype=str, keep_default_na=False)
    bad_name = manifest.file_name[2]
    manifest.loc[2, "label"] = "zebra"
    manifest.to_csv(trainval / "manifest.csv", index=False)
    with pytest.raises(ValidationFailed, match=bad_name):
        caption.run(params, trainval=trainval, out_dir=params.paths.caption)
    assert not (params.paths.caption / "prompts.json").exists()


def test_run_stage_tracks_and_writes_metrics(params) -> None:
    import mlflow

    for stage in ("phantom", "ingest", "caption"):
        run_stage(stage, params)
    metrics = json.loads((params.paths.metrics / "ingest.json").read_text())
    assert metrics["n_ok"] == 80 and metrics["n_quarantined"] == 0 and "stage_seconds" in metrics
    runs = mlflow.search_runs(experiment_names=["synthloop"])
    assert {"phantom", "ingest", "caption"} <= set(runs["tags.synthloop.stage"])
    assert (runs["metrics.n_ok"].dropna() == 80).any()
