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
    img = decode.load_image(data, suffix, 10_000_000).image
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
    c, w = 500.0, 1000.0  # window in modality units; DICOM PS3.3 C.11.2.1.2.1 LINEAR
    ref = np.round(np.clip((modality - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255).astype(np.uint8)
    data = make_dicom(stored, slope=2.0, intercept=-1024.0, window=(c, w))
    got = _load(data, ".dcm", size=4)
    assert np.array_equal(got, ref)
    # Ignoring the rescale would place the window over stored values instead: a different picture.
    assert not np.array_equal(got, np.round(np.clip(stored, 0, 1000) / 1000 * 255).astype(np.uint8))


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
    with pytest.raises(BadImage, match="exceed ingest.max_pixels=1000000"):
        decode.load_image(bomb_png(5000, 5000), ".png", 1_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20_000_000  # decoding 5000² (let alone 100000²) pixels would need far more


# ------------------------------------------------------------------------- odd modes, frames, bombs (#17 item 5)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_lab_tiff_converts_through_littlecms_not_a_crash() -> None:
    lab = Image.merge("LAB", [Image.new("L", (4, 4), v) for v in (255, 128, 128)])  # L*=100, neutral: white
    got = decode.load_image(_encode(lab, "TIFF"), ".tif", 10_000)
    assert got.image.mode == "LAB"
    rgb = decode.to_mode(got.image, 3)
    assert min(rgb.getpixel((0, 0))) >= 250  # white, not the raw channel bytes
    assert decode.conversion_notes(got.image) == ("LAB converted to sRGB (littlecms)",)
    dark = Image.merge("LAB", [Image.new("L", (1, 1), v) for v in (0, 128, 128)])
    assert decode.to_mode(dark, 1).getpixel((0, 0)) <= 5


@pytest.mark.parametrize("mode", ["YCbCr", "CMYK", "HSV", "1", "P", "PA", "LA", "La", "RGBa", "RGBX", "I;16B",
                                  "I;16L", "I", "F"])
def test_every_pillow_mode_converts_to_l_and_rgb(mode: str) -> None:
    img = Image.new(mode, (3, 2))
    for channels, want in ((1, "L"), (3, "RGB")):
        assert decode.to_mode(img, channels).mode == want


def test_unconvertible_mode_names_the_mode() -> None:
    class Odd:  # stands in for a Pillow image whose mode has no conversion
        mode, info = "BGR;15", {}

        def convert(self, mode):
            raise ValueError(f"conversion from BGR;15 to {mode} not supported")

    with pytest.raises(BadImage, match="image mode BGR;15 cannot be converted to L"):
        decode.to_mode(Odd(), 1)


def test_float_with_nan_is_refused() -> None:
    img = Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32))
    with pytest.raises(BadImage, match="non-finite"):
        decode.to_mode(img, 1)


@pytest.mark.parametrize("fmt, kw", [("TIFF", {}), ("GIF", {}), ("PNG", {})])
def test_multi_frame_first_or_quarantine(fmt: str, kw: dict) -> None:
    frames = [Image.new("L", (8, 8), v) for v in (10, 120, 240)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], **kw)
    got = decode.load_image(data, "." + fmt.lower(), 10_000)
    assert got.notes == ("frame 1 of 3 used (ingest.multi_frame: first)",)
    assert decode.to_mode(got.image, 1).getpixel((0, 0)) == pytest.approx(10, abs=2)
    with pytest.raises(BadImage, match="multi-frame image \\(3 frames\\) and ingest.multi_frame is 'quarantine'"):
        decode.load_image(data, "." + fmt.lower(), 10_000, multi_frame="quarantine")


def test_bomb_messages_quote_the_configured_limit_on_both_pillow_paths() -> None:
    # 10^10 px > 2 x limit: Pillow's DecompressionBombError; 25 M px in (limit, 2 x limit]: Pillow's warning.
    for (w, h), limit in (((100_000, 100_000), 50_000_000), ((5000, 5000), 20_000_000)):
        with pytest.raises(BadImage) as err:
            decode.load_image(bomb_png(w, h), ".png", limit)
        assert str(err.value) == f"decompression bomb: {w * h} pixels exceed ingest.max_pixels={limit}"
    # A limit above Pillow's default (89,478,485 px) is honoured, not undercut by Pillow's own check: this header
    # passes, and the (tiny, fake) pixel data is what fails.
    with pytest.raises(BadImage, match="truncated"):
        decode.load_image(bomb_png(9500, 9500), ".png", 200_000_000)  # 90.25 M px
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's process-wide limit is restored after every open


def test_dicom_multi_frame_decodes_only_frame_one_or_quarantines() -> None:
    stack = np.stack([np.full((4, 4), v, dtype=np.uint16) for v in (0, 500, 1000)])
    stack[0, 0, 0] = 100  # frame 1 is not constant
    data = make_dicom(stack)
    got = decode.load_image(data, ".dcm", 10_000)
    assert "frame 1 of 3 used" in got.notes[0]
    assert np.asarray(got.image)[0, 0] == 255 and np.asarray(got.image)[1, 1] == 0  # frame 1's own min/max
    with pytest.raises(BadImage, match="multi-frame DICOM \\(3 frames\\)"):
        decode.load_image(data, ".dcm", 10_000, multi_frame="quarantine")


@pytest.mark.parametrize("function, width, expected", [
    ("LINEAR", 100.0, [0.0, 0.5 + 0.5 / 99, 1.0]),
    ("LINEAR_EXACT", 100.0, [0.0, 0.5, 1.0]),
    ("SIGMOID", 100.0, [1 / (1 + np.exp(4.0)), 0.5, 1 / (1 + np.exp(-4.0))]),
])
def test_window_functions_follow_ps3_3(function: str, width: float, expected: list[float]) -> None:
    x = np.array([-50.0, 50.0, 150.0] if function == "SIGMOID" else [-100.0, 50.0, 250.0])
    got = decode.apply_window(x, 50.0, width, function)
    assert got == pytest.approx(expected, abs=1e-9)


def test_invalid_window_width_falls_back_to_minmax_and_says_so() -> None:
    assert decode.apply_window(np.zeros(2), 0.0, 0.5, "LINEAR") is None
    data = make_dicom(np.arange(16, dtype=np.uint16).reshape(4, 4), window=(8.0, 0.0))
    got = decode.load_image(data, ".dcm", 10_000)
    assert got.notes == ("DICOM window width 0 invalid for LINEAR: min/max used",)
    assert np.asarray(got.image).max() == 255 and np.asarray(got.image).min() == 0


def test_dicom_window_minmax_policy_ignores_the_window() -> None:
    data = make_dicom(np.arange(16, dtype=np.uint16).reshape(4, 4) * 100, window=(200.0, 100.0))
    voi = np.asarray(decode.load_image(data, ".dcm", 10_000).image)
    minmax = decode.load_image(data, ".dcm", 10_000, dicom_window="minmax")
    assert minmax.notes == ("DICOM min/max to 8 bit",)
    assert (voi == 255).sum() > 8 and np.unique(np.asarray(minmax.image)).size == 16


def test_dicom_voi_lut_sequence_is_applied() -> None:
    from pydicom import dcmread
    from pydicom.dataset import Dataset

    ds = dcmread(io.BytesIO(make_dicom(np.array([[0, 1], [2, 3]], dtype=np.uint16))))
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries, first mapped value 0, 8 bits
    item.LUTData = [255, 0, 128, 64]  # a deliberately non-monotonic LUT: min/max could not produce this
    ds.VOILUTSequence = [item]
    arr, notes = decode.dicom_to_array(ds, 10_000)
    assert arr.tolist() == [[255, 0], [128, 64]] and notes == ("DICOM VOI LUT applied",)
