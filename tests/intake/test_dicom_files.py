"""The DICOM files pydicom ships (its test_files folder, read in place: nothing copied here) each decode, or are
refused with a reason that is true for that file.

pydicom downloads some of its test files on demand (``pydicom/data/urls.json``); without network those are skipped
with a reason, never fetched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tasks.intake import decode
from tasks.intake.walk import BadImage, one_line

BUNDLED = Path(pydicom.__file__).parent / "data" / "test_files"
FILES = sorted(p.name for p in BUNDLED.glob("*.dcm"))
_NOT_DICOM = "not a DICOM file"
_NO_PIXELS = "DICOM file has no pixel data"
#: The files that must be refused, and a piece of the reason that is true for each (pydicom's README.txt there).
REFUSED = {
    "ExplVR_BigEndNoMeta.dcm": _NOT_DICOM, "ExplVR_LitEndNoMeta.dcm": _NOT_DICOM, "no_meta.dcm": _NOT_DICOM,
    "rtstruct.dcm": _NOT_DICOM,
    "UN_sequence.dcm": _NO_PIXELS, "empty_charset_LEI.dcm": _NO_PIXELS, "no_meta_group_length.dcm": _NO_PIXELS,
    "priv_SQ.dcm": _NO_PIXELS, "reportsi.dcm": _NO_PIXELS, "reportsi_with_empty_number_tags.dcm": _NO_PIXELS,
    "rtplan.dcm": _NO_PIXELS, "rtplan_truncated.dcm": _NO_PIXELS, "test-SR.dcm": _NO_PIXELS,
    "waveform_ecg.dcm": _NO_PIXELS,
    "JPEG-lossy.dcm": "misplaced marker",  # README: "Invalid SOS parameters" (JPGExtended.dcm is the fixed copy)
    "JPEG2000-embedded-sequence-delimiter.dcm": "the DICOM pixel data claims",  # README: "not a valid JPEG anymore"
    "MR_truncated.dcm": "less than expected (8130 vs 8192 bytes)",
    "badVR.dcm": "invalid DICOM NumberOfFrames '1A'",
    "meta_missing_tsyntax.dcm": "no (0002,0010) 'Transfer Syntax UID'",
    "nested_priv_SQ.dcm": "Missing required element: (0028,0100) 'Bits Allocated'",
}
#: Transfer syntaxes the decoder plugins (pylibjpeg, -libjpeg, -openjpeg, -rle) must cover among the bundled files.
COMPRESSED = {"1.2.840.10008.1.2.4.50": "JPEG baseline", "1.2.840.10008.1.2.4.51": "JPEG extended (12 bit)",
              "1.2.840.10008.1.2.4.70": "JPEG lossless", "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
              "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless", "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
              "1.2.840.10008.1.2.4.91": "JPEG 2000", "1.2.840.10008.1.2.5": "RLE lossless"}


def _header(path: Path):
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


@pytest.mark.parametrize("name", FILES)
def test_bundled_dicom_decodes_or_is_refused_truthfully(name: str) -> None:
    path = BUNDLED / name
    data = path.read_bytes()
    if name in REFUSED:
        with pytest.raises(BadImage) as err:
            decode.load_image(data, ".dcm", 50_000_000)
        reason = one_line(str(err.value))
        assert REFUSED[name] in reason
        if REFUSED[name] == _NOT_DICOM:
            assert data[128:132] != b"DICM"
        if REFUSED[name] == _NO_PIXELS:
            assert not {"PixelData", "FloatPixelData", "DoubleFloatPixelData"} & set(pydicom.dcmread(path).dir())
        return
    got = decode.load_image(data, ".dcm", 50_000_000)
    ds = _header(path)
    assert got.image.size == (int(ds.Columns), int(ds.Rows))
    assert got.image.mode == ("L" if str(ds.PhotometricInterpretation).startswith("MONOCHROME") else "RGB")
    out = np.asarray(decode.normalise(got.image, 16, 1))
    assert out.shape == (16, 16) and out.dtype == np.uint8


def test_bundled_files_cover_every_compressed_transfer_syntax() -> None:
    decoded = {str(_header(BUNDLED / n).file_meta.TransferSyntaxUID) for n in FILES if n not in REFUSED}
    missing = {uid: what for uid, what in COMPRESSED.items() if uid not in decoded}
    assert not missing, f"no bundled file decoded for {missing}"


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "OT-PAL-8-face.dcm",
                                  "emri_small_jpeg_ls_lossless.dcm", "MR2_J2KR.dcm", "color3d_jpeg_baseline.dcm"])
def test_downloadable_pydicom_files_decode_when_present(name: str) -> None:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with pydicom (it downloads it on demand; no network here)")
    got = decode.load_image(Path(path).read_bytes(), ".dcm", 50_000_000)
    assert got.image.size[0] > 0
