"""Decoding and normalising: normalisation goldens, DICOM reference arrays, decompression bombs (RELIABILITY 8–15)."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from badinput import bomb_png, make_dicom
from tasks.intake import decode
from tasks.intake.discover import BadImage


def _load(data: bytes, suffix: str = ".png", size: int = 8, channels: int = 1) -> np.ndarray:
    img = decode.load_image(data, suffix, 10_000_000)
    return np.asarray(decode.normalise(img, size, channels))


def test_16bit_is_rescaled_not_clipped() -> None:
    arr = np.array([[1000, 2000], [3000, 4000]], dtype=np.uint16)
    out = np.asarray(decode.to_mode(Image.fromarray(arr), 1))
    assert out.tolist() == [[0, 85], [170, 255]]  # clipping at 255 would make every pixel 255


def test_cmyk_palette_and_alpha_convert_to_expected_pixels() -> None:
    cyan = Image.new("CMYK", (2, 2), (255, 0, 0, 0))
    assert decode.to_mode(cyan, 3).getpixel((0, 0)) == (0, 255, 255)
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255])
    pal.putpixel((1, 0), 1)
    assert [decode.to_mode(pal, 3).getpixel((x, 0)) for x in (0, 1)] == [(255, 0, 0), (0, 0, 255)]
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (200, 255))
    la.putpixel((1, 0), (200, 0))  # fully transparent → composited over black
    assert [decode.to_mode(la, 1).getpixel((x, 0)) for x in (0, 1)] == [200, 0]
    rgba = Image.new("RGBA", (1, 1), (100, 200, 50, 128))
    assert decode.to_mode(rgba, 3).getpixel((0, 0)) == pytest.approx((50, 100, 25), abs=1)


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
    out = np.asarray(decode.normalise(img, 10, 1))
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
    with pytest.raises(BadImage, match="decompression bomb"):
        decode.load_image(big, ".dcm", 10)
    with pytest.raises(BadImage, match="not a DICOM"):
        decode.load_image(b"x" * 300, ".dcm", 10_000)


def test_bomb_header_rejected_without_decoding() -> None:
    tracemalloc.start()
    with pytest.raises(BadImage, match="decompression bomb"):
        decode.load_image(bomb_png(), ".png", 50_000_000)
    with pytest.raises(BadImage, match="exceeds ingest.max_pixels"):
        decode.load_image(bomb_png(5000, 5000), ".png", 1_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000  # decoding 5000² (let alone 100000²) pixels would need far more
