"""Ingest stage run(): the bad-input corpus (RELIABILITY 8–15) quarantined, duplicates, splits, determinism.

The pieces it runs are tested in tests/intake/ (discover, decode, dedupe, split).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from badinput import CAFE_NFC, build_folder_corpus, build_metadata_corpus, png_bytes
from conftest import make_params
from tasks import ingest, phantom
from tasks.phantom_geometry import class_interval
from tasks.intake.discover import IngestError
from tasks.io import tree_hash
from tasks.validation import ValidationFailed, validate


def _phantoms(params, n: int) -> dict[str, list[Image.Image]]:
    out: dict[str, list[Image.Image]] = {"small": [], "big": []}
    for i in range(2 * n):
        k = i % 2
        img, meta = phantom.make_record(3, 0, i, class_interval(k, (105.0,), (88.0, 122.0)), params)
        out[meta["label"]].append(img)
    return out


# ------------------------------------------------------------------------------------------ run()


def test_run_on_phantom_is_stratified_deterministic_and_validated(params, tmp_path: Path) -> None:
    phantom.run(params, out_dir=params.paths.phantom)
    out = ingest.run(params, raw=params.paths.raw, out_dir=params.paths.ingest)
    tv = pd.read_csv(out.trainval / "manifest.csv")
    test = pd.read_csv(out.test / "manifest.csv")
    assert set(tv.split) == {"train", "val"} and set(test.split) == {"test"}
    counts = pd.concat([tv, test]).groupby(["split", "label"]).size().unstack()
    assert counts.loc["train"].tolist() == [4, 4] and counts.loc["test"].tolist() == [28, 28]
    assert {"left_angle", "right_angle", "angle", "caption"} <= set(tv.columns)
    assert all((out.trainval / f).is_file() for f in tv.file_name) and all((out.test / f).is_file() for f in test.file_name)
    assert tv.file_name.str.match(r"^(train|val)/(small|big)/").all()
    assert out.metrics["n_ok"] == 80 and out.metrics["n_quarantined"] == 0
    again = make_params(tmp_path / "again")
    phantom.run(again, out_dir=again.paths.phantom)
    ingest.run(again, raw=again.paths.raw, out_dir=again.paths.ingest)
    assert tree_hash(params.paths.ingest) == tree_hash(again.paths.ingest)  # byte-identical outputs


def test_bad_folder_corpus_is_quarantined_and_rest_processed(params, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    expected = build_folder_corpus(raw, _phantoms(params, 10), tmp_path / "outside")
    out = ingest.run(params, raw=raw, out_dir=params.paths.ingest)
    quarantine = pd.read_csv(out.quarantine)
    reasons = dict(zip(quarantine.source, quarantine.reason))
    for source, fragment in expected.items():
        assert fragment in reasons.get(source, ""), (source, reasons.get(source))
    assert out.metrics["n_quarantined"] == len(expected)
    manifest = pd.concat([pd.read_csv(out.trainval / "manifest.csv"), pd.read_csv(out.test / "manifest.csv")])
    assert out.metrics["n_ok"] == len(manifest) == 10 + 10 + 1 + 1  # + café (one record) + near duplicate
    assert (manifest.source == f"small/{CAFE_NFC}.png").sum() == 1
    dups = pd.read_csv(out.duplicates)
    exact = dups[dups.kind == "exact"]
    assert exact.source.tolist() == ["big/img000.png"] and exact.duplicate_of.tolist() == ["big/copy of img000.png"]
    near = dups[dups.kind == "near"]
    assert ("big/near img000.jpg" in set(near.source) | set(near.duplicate_of))
    groups = manifest.set_index("source").group
    assert groups["big/near img000.jpg"] == groups["big/copy of img000.png"]
    assert manifest.groupby("group").split.nunique().max() == 1  # near duplicates never straddle splits


def test_metadata_corpus_rejects_unsafe_paths_and_neutralises_formulas(params, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    expected = build_metadata_corpus(raw, _phantoms(params, 10), tmp_path / "outside")
    out = ingest.run(params, raw=raw, out_dir=params.paths.ingest)
    reasons = dict(pd.read_csv(out.quarantine)[["source", "reason"]].values)
    for source, fragment in expected.items():
        assert fragment in reasons[source]
    text = (out.trainval / "manifest.csv").read_text() + (out.test / "manifest.csv").read_text()
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text
    manifest = pd.concat([pd.read_csv(out.trainval / "manifest.csv"), pd.read_csv(out.test / "manifest.csv")])
    assert (manifest.source == f"images/{CAFE_NFC}.png").sum() == 1  # NFC name found the NFD file
    assert manifest.angle.min() < 0 and manifest.angle.dtype.kind == "f"  # negative numbers stay numbers
    assert set(manifest.caption.dropna()) >= {"a small hip", "a big hip"}


def test_user_split_column_is_respected(params, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    images = _phantoms(params, 4)
    rows = []
    for label, imgs in images.items():
        for i, img in enumerate(imgs):
            (raw / label).mkdir(parents=True, exist_ok=True)
            (raw / label / f"{i}.png").write_bytes(png_bytes(img))
            rows.append({"file_name": f"{label}/{i}.png", "label": label, "split": ["train", "val", "test", "oops"][i]})
    pd.DataFrame(rows).to_csv(raw / "metadata.csv", index=False)
    out = ingest.run(params, raw=raw, out_dir=params.paths.ingest)
    tv = pd.read_csv(out.trainval / "manifest.csv")
    assert dict(zip(tv.source, tv.split)) == {"small/0.png": "train", "small/1.png": "val",
                                              "big/0.png": "train", "big/1.png": "val"}
    assert "invalid split" in pd.read_csv(out.quarantine).set_index("source").reason["small/3.png"]


def test_class_mismatch_is_a_clear_error(params, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for i, img in enumerate(_phantoms(params, 3)["small"]):
        (raw / "small").mkdir(parents=True, exist_ok=True)
        (raw / "small" / f"{i}.png").write_bytes(png_bytes(img))
    with pytest.raises(IngestError, match="dataset.classes"):
        ingest.run(params, raw=raw, out_dir=params.paths.ingest)
    with pytest.raises(FileNotFoundError, match="params.paths.raw"):
        ingest.run(params, raw=tmp_path / "nope", out_dir=params.paths.ingest)


def test_gx_failure_names_failing_rows() -> None:
    df = pd.DataFrame({"file_name": ["train/small/a.png", "train/small/b.png", "../c.png"],
                       "label": ["small", "zebra", "small"], "split": ["train", "train", "val"],
                       "sha256": ["a", "b", "c"], "group": ["g1", "g2", "g3"], "width": [8, 8, 8], "height": [8, 8, 8]})
    with pytest.raises(ValidationFailed) as err:
        validate(df, "ingest_manifest", classes=("small", "big"))
    assert "train/small/b.png" in str(err.value) and "../c.png" in str(err.value)
    assert "train/small/a.png" not in str(err.value)
