"""Ingest stage run(): the bad-input corpus (RELIABILITY 8–15) quarantined, duplicates, splits, determinism.

The pieces it runs are tested in tests/intake/ (discover, decode, dedupe, split).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from badinput import CAFE_NFC, build_folder_corpus, build_metadata_corpus, make_dicom, png_bytes
from conftest import make_params
from hostile_corpus import MAX_PIXELS, build_hostile_corpus, encode, pattern
from tasks import io as sio
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


# ------------------------------------------------------------------------------ hostile corpus (#17 item 5)


def _outcomes(out) -> dict[str, tuple[str, str]]:
    """source → (ok | quarantine | duplicate, note or reason) for everything one ingest run reported."""
    manifest = pd.concat([pd.read_csv(out.trainval / "manifest.csv", dtype=str, keep_default_na=False),
                          pd.read_csv(out.test / "manifest.csv", dtype=str, keep_default_na=False)])
    quarantine = pd.read_csv(out.quarantine, dtype=str, keep_default_na=False)
    dups = pd.read_csv(out.duplicates, dtype=str, keep_default_na=False)
    found = {s: ("ok", n) for s, n in zip(manifest.source, manifest.ingest_note)}
    found |= {s: ("duplicate", "") for s in dups.loc[dups.kind == "exact", "source"]}
    for s, r in zip(quarantine.source, quarantine.reason):
        assert s not in found, f"{s} reported twice"
        found[s] = ("quarantine", r)
    return found


@pytest.mark.timeout(120)  # a FIFO opened for reading blocks forever: a hang fails here instead
def test_hostile_corpus_every_entry_accounted_no_crash_no_hang(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"ingest": {"max_pixels": MAX_PIXELS}})
    raw = tmp_path / "raw"
    expected = build_hostile_corpus(raw, tmp_path / "outside")
    assert sum(o.kind != "ok" or bool(o.fragment) for o in expected.values()) >= 40  # hostile or odd entries
    out = ingest.run(params, raw=raw, out_dir=params.paths.ingest)
    found = _outcomes(out)
    assert set(found) == set(expected), (sorted(set(expected) - set(found)), sorted(set(found) - set(expected)))
    for source, want in expected.items():
        kind, text = found[source]
        assert kind == want.kind and want.fragment in text, (source, want, found[source])
    m = out.metrics
    assert m["n_input"] == len(expected) == m["n_ok"] + m["n_quarantined"] + m["n_duplicates"]
    assert "89478485" not in out.quarantine.read_text()  # Pillow's limit is never quoted, the configured one is
    lines = out.quarantine.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + m["n_quarantined"]  # one line per entry: no reason or name breaks a row


def test_input_hash_reads_only_regular_files_inside_the_root(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "raw"
    build_hostile_corpus(raw, tmp_path / "outside")
    read: list[Path] = []
    real_sha = sio.sha256_file
    monkeypatch.setattr(sio, "sha256_file", lambda p: read.append(Path(p)) or real_sha(p))
    first = sio.tree_hash(raw)  # the stage's input hash (tasks.stage.run_stage): must neither hang nor crash
    assert read and all(not p.is_symlink() and p.is_file() for p in read)
    assert all(p.resolve().is_relative_to(raw.resolve()) for p in read)
    assert sio.tree_hash(raw) == first
    os.symlink("/etc/hostname", raw / "small" / "another.png")  # a new link changes the hash (by its text)
    assert sio.tree_hash(raw) != first


def test_multi_frame_quarantine_policy(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"ingest": {"multi_frame": "quarantine"}})
    raw = tmp_path / "raw"
    for label, offset in (("small", 0), ("big", 50)):
        for i in range(10):
            (raw / label).mkdir(parents=True, exist_ok=True)
            (raw / label / f"{i}.png").write_bytes(png_bytes(Image.fromarray(pattern(offset + i))))
    frames = [Image.fromarray(pattern(90 + k)) for k in range(3)]
    (raw / "small" / "stack.tif").write_bytes(encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]))
    (raw / "big" / "multi.dcm").write_bytes(make_dicom(np.stack([pattern(95 + k).astype(np.uint16) for k in range(2)])))
    out = ingest.run(params, raw=raw, out_dir=params.paths.ingest)
    reasons = dict(pd.read_csv(out.quarantine)[["source", "reason"]].values)
    assert reasons == {"small/stack.tif": "multi-frame image (3 frames) and ingest.multi_frame is 'quarantine'",
                       "big/multi.dcm": "multi-frame DICOM (2 frames) and ingest.multi_frame is 'quarantine'"}


def test_metadata_tree_accounts_for_unlisted_special_and_repeated_entries(tmp_path: Path) -> None:
    params = make_params(tmp_path)
    raw = tmp_path / "raw"
    rows = []
    for label, offset in (("small", 0), ("big", 50)):
        for i in range(10):
            name = f"img/{label}-{i}.png"
            (raw / "img").mkdir(parents=True, exist_ok=True)
            (raw / name).write_bytes(png_bytes(Image.fromarray(pattern(offset + i))))
            rows.append({"file_name": name, "label": label})
    (raw / ".private").mkdir()
    (raw / ".private" / "wanted.png").write_bytes(png_bytes(Image.fromarray(pattern(99))))
    (raw / ".private" / "other.png").write_bytes(png_bytes(Image.fromarray(pattern(98))))
    (raw / "img" / "extra.png").write_bytes(png_bytes(Image.fromarray(pattern(97))))
    (raw / ".DS_Store").write_bytes(b"x")
    os.mkfifo(raw / "img" / "pipe.png")
    os.symlink("missing.png", raw / "img" / "dangling.png")
    rows += [{"file_name": ".private/wanted.png", "label": "big"}, {"file_name": "img/pipe.png", "label": "small"},
             {"file_name": "img/dangling.png", "label": "small"}, {"file_name": "img/small-0.png", "label": "small"}]
    pd.DataFrame(rows).to_csv(raw / "metadata.csv", index=False)
    out = ingest.run(params, raw=raw, out_dir=params.paths.ingest)
    reasons = dict(pd.read_csv(out.quarantine)[["source", "reason"]].values)
    assert reasons == {".DS_Store": "hidden file (name starts with '.')",
                       "img/extra.png": "not listed in metadata.csv",
                       "img/pipe.png": "not a regular file (named pipe): not opened",
                       "img/dangling.png": "dangling symlink (its target does not exist)",
                       "img/small-0.png": "listed more than once in metadata.csv",
                       ".private/other.png": "not listed in metadata.csv"}
    assert out.metrics["n_ok"] == 21  # a file listed inside a dot-folder is wanted: that folder is searched
    assert out.metrics["n_input"] == len(rows) + 3 == out.metrics["n_ok"] + out.metrics["n_quarantined"]


def test_accounting_mismatch_raises() -> None:
    ingest.check_accounting(5, 3, 1, 1)
    with pytest.raises(IngestError, match="5 entries found but 3 ok \\+ 1 quarantined \\+ 0 duplicates = 4"):
        ingest.check_accounting(5, 3, 1, 0)


def test_unreadable_metadata_csv_is_a_clear_error(params, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "metadata.csv").write_bytes(b"file_name,label\n\xff\xfe broken,\x00\n")
    with pytest.raises(IngestError, match="metadata.csv cannot be read as a UTF-8 CSV"):
        ingest.run(params, raw=raw, out_dir=params.paths.ingest)


def test_quarantine_table_is_one_line_per_entry_and_the_suite_refuses_line_breaks() -> None:
    rows = [{"source": os.fsdecode(b"a/x\xff\n.png"), "reason": "Unable to decode:\n  plugin: bad\n"},
            {"source": "a/b.png", "reason": "empty file"}]
    table = ingest.quarantine_table(rows)
    assert table.to_dict("records") == [{"source": "a/b.png", "reason": "empty file"},
                                        {"source": "a/x\\xff\\n.png", "reason": "Unable to decode: | plugin: bad"}]
    with pytest.raises(ValidationFailed, match="ingest_quarantine"):
        validate(pd.DataFrame({"source": ["a.png"], "reason": ["two\nlines"]}), "ingest_quarantine", classes=())
