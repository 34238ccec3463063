"""Ingest: normalisation goldens, the bad-input corpus (RELIABILITY 8–15), duplicates, splits, determinism."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from badinput import CAFE_NFC, bomb_png, build_folder_corpus, build_metadata_corpus, make_dicom, png_bytes
from conftest import make_params
from tasks import ingest, phantom
from tasks.io import tree_hash
from tasks.validation import ValidationFailed, validate


def _phantoms(params, n: int) -> dict[str, list[Image.Image]]:
    out: dict[str, list[Image.Image]] = {"small": [], "big": []}
    for i in range(2 * n):
        k = i % 2
        img, meta = phantom.make_record(3, 0, i, phantom.class_interval(k, (105.0,), (88.0, 122.0)), params)
        out[meta["label"]].append(img)
    return out


def _load(data: bytes, suffix: str = ".png", size: int = 8, channels: int = 1) -> np.ndarray:
    img = ingest.load_image(data, suffix, 10_000_000)
    return np.asarray(ingest.normalise(img, size, channels))


# ------------------------------------------------------------------------------------------ normalisation


def test_16bit_is_rescaled_not_clipped() -> None:
    arr = np.array([[1000, 2000], [3000, 4000]], dtype=np.uint16)
    out = np.asarray(ingest.to_mode(Image.fromarray(arr), 1))
    assert out.tolist() == [[0, 85], [170, 255]]  # clipping at 255 would make every pixel 255


def test_cmyk_palette_and_alpha_convert_to_expected_pixels() -> None:
    cyan = Image.new("CMYK", (2, 2), (255, 0, 0, 0))
    assert ingest.to_mode(cyan, 3).getpixel((0, 0)) == (0, 255, 255)
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255])
    pal.putpixel((1, 0), 1)
    assert [ingest.to_mode(pal, 3).getpixel((x, 0)) for x in (0, 1)] == [(255, 0, 0), (0, 0, 255)]
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (200, 255))
    la.putpixel((1, 0), (200, 0))  # fully transparent → composited over black
    assert [ingest.to_mode(la, 1).getpixel((x, 0)) for x in (0, 1)] == [200, 0]
    rgba = Image.new("RGBA", (1, 1), (100, 200, 50, 128))
    assert ingest.to_mode(rgba, 3).getpixel((0, 0)) == pytest.approx((50, 100, 25), abs=1)


@pytest.mark.parametrize("orientation, corner", [(1, (0, 0)), (6, (0, 7)), (3, (7, 7)), (8, (7, 0))])
def test_exif_rotation_comes_out_upright(orientation: int, corner: tuple[int, int]) -> None:
    img = Image.new("L", (16, 16), 0)
    img.paste(255, (0, 0, 4, 4))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: "rotate 90° clockwise to display", 3: 180°, 8: 90° counter-clockwise
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    out = _load(buf.getvalue(), size=8)
    bright = {(r, c) for r in (0, 7) for c in (0, 7) if out[r, c] > 200}
    assert bright == {corner}


def test_resize_centre_crops_to_square() -> None:
    img = Image.new("L", (40, 20), 0)
    img.paste(255, (10, 0, 30, 20))  # bright centre square, dark side bands that the crop removes
    out = np.asarray(ingest.normalise(img, 10, 1))
    assert out.shape == (10, 10) and out.min() > 240


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_matches_reference_array(photometric: str) -> None:
    stored = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100 + 50
    modality = stored * 2.0 - 1024.0  # slope 2, intercept -1024
    ref = np.round((modality - modality.min()) / np.ptp(modality) * 255).astype(np.uint8)
    ref = 255 - ref if photometric == "MONOCHROME1" else ref
    data = make_dicom(stored, photometric, slope=2.0, intercept=-1024.0)
    assert np.array_equal(_load(data, ".dcm", size=4), ref)


def test_dicom_window_applies_to_rescaled_values() -> None:
    stored = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100
    modality = stored * 2.0 - 1024.0
    lo, hi = 0.0, 1000.0  # window centre 500, width 1000, in modality units
    ref = np.round((np.clip(modality, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
    data = make_dicom(stored, slope=2.0, intercept=-1024.0, window=(500.0, 1000.0))
    got = _load(data, ".dcm", size=4)
    assert np.array_equal(got, ref)
    # Ignoring the rescale would place the window over stored values instead: a different picture.
    assert not np.array_equal(got, np.round(np.clip(stored, lo, hi) / hi * 255).astype(np.uint8))


def test_dicom_bomb_and_non_dicom_are_rejected() -> None:
    big = make_dicom(np.zeros((4, 4), dtype=np.uint16))
    with pytest.raises(ingest.BadImage, match="decompression bomb"):
        ingest.load_image(big, ".dcm", 10)
    with pytest.raises(ingest.BadImage, match="not a DICOM"):
        ingest.load_image(b"x" * 300, ".dcm", 10_000)


def test_bomb_header_rejected_without_decoding() -> None:
    tracemalloc.start()
    with pytest.raises(ingest.BadImage, match="decompression bomb"):
        ingest.load_image(bomb_png(), ".png", 50_000_000)
    with pytest.raises(ingest.BadImage, match="exceeds ingest.max_pixels"):
        ingest.load_image(bomb_png(5000, 5000), ".png", 1_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000  # decoding 5000² (let alone 100000²) pixels would need far more


@pytest.mark.parametrize("name, reason", [("../x.png", "escapes"), ("/etc/x.png", "absolute"),
                                          ("C:/x.png", "absolute"), ("a/../../x.png", "escapes"), ("", "empty")])
def test_check_relative_rejects_unsafe_names(name: str, reason: str) -> None:
    assert reason in ingest.check_relative(name)


def test_check_relative_accepts_plain_names() -> None:
    assert ingest.check_relative("images/a b/é.png") is None


# ------------------------------------------------------------------------------------------ helpers


def test_split_targets_largest_remainder_and_error() -> None:
    assert ingest.split_targets(320, {"train": 0.1, "val": 0.2, "test": 0.7}) == {"train": 32, "val": 64, "test": 224}
    assert sum(ingest.split_targets(7, {"train": 0.1, "val": 0.2, "test": 0.7}).values()) == 7
    with pytest.raises(ValueError, match="summing to 1"):
        ingest.split_targets(10, {"train": 0.5, "val": 0.2})


def test_near_duplicate_pairs_and_bad_hash() -> None:
    a = "0" * 64
    b = "0" * 63 + "7"  # 3 bits differ
    c = "f" * 64
    assert ingest.near_duplicate_pairs([a, b, c], 3) == [(0, 1, 3)]
    assert ingest.near_duplicate_pairs([a, b, c], 2) == []
    with pytest.raises(ValueError, match="hex hashes"):
        ingest.near_duplicate_pairs(["abc", a], 3)


def test_groups_never_straddle_splits() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"source": [f"s{i:03d}" for i in range(120)], "label": ["a", "b"] * 60,
                       "sha256": [f"{i:064x}" for i in range(120)]})
    df["group"] = [f"g{i // 4:03d}" for i in rng.permutation(120)]  # groups of 4
    split = ingest.assign_splits(df, {"train": 0.25, "val": 0.25, "test": 0.5}, seed=1)
    assert (df.assign(split=split).groupby("group").split.nunique() == 1).all()
    assert split.value_counts().to_dict() == pytest.approx({"test": 60, "train": 30, "val": 30}, abs=8)
    assert split.equals(ingest.assign_splits(df, {"train": 0.25, "val": 0.25, "test": 0.5}, seed=1))


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
    with pytest.raises(ingest.IngestError, match="phantom.classes"):
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
