"""Builds the bad-input corpus (RELIABILITY.md items 8–15) in a temporary folder; nothing is checked in.

``build_folder_corpus`` makes a folder-per-class tree of good phantom images plus every kind of bad file;
``build_metadata_corpus`` makes a ``metadata.csv`` tree with unsafe paths, unicode names and formula cells.
Each returns what the ingest stage is expected to do with the bad entries (source → reason fragment).
"""

from __future__ import annotations

import io
import os
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CAFE_NFC = unicodedata.normalize("NFC", "café")
CAFE_NFD = unicodedata.normalize("NFD", "café")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width``×``height`` pixels (decoding it would need ~10 GB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + chunk(b"IEND", b""))


def make_dicom(arr: np.ndarray, photometric: str = "MONOCHROME2", slope: float = 1.0, intercept: float = 0.0,
               window: tuple[float, float] | None = None, voi_function: str | None = None) -> bytes:
    """An uncompressed 16-bit DICOM file (bytes) with the given stored pixels and modality rescale.

    A 3-d ``arr`` (frames, rows, columns) makes a multi-frame file."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["synthloop-test"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("test.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape[-2:]
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = arr.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_folder_corpus(root: Path, good: dict[str, list[Image.Image]], outside: Path) -> dict[str, str]:
    """Folder-per-class corpus under ``root``: the ``good`` images plus bad files; return source → reason.

    ``outside`` is a folder outside ``root`` for the escaping symlink's target. ``good`` needs ≥ 3 images per
    class; the first image of each class gets an exact and a near duplicate.
    """
    for label, images in good.items():
        for i, img in enumerate(images):
            _write(root / label / f"img{i:03d}.png", png_bytes(img))
    small, big = good["small"][0], good["big"][0]
    valid_png, valid_jpeg = png_bytes(small), jpeg_bytes(big)
    _write(root / "small" / "truncated.png", valid_png[: len(valid_png) // 2])
    _write(root / "big" / "corrupt.jpg", valid_jpeg[:200] + b"\x00garbage" * 50)
    _write(root / "small" / "notes.png", b"this is a text file, not an image\n")
    _write(root / "big" / "empty.png", b"")
    _write(root / "small" / "bomb.png", bomb_png())
    _write(root / "zebra" / "stripes.png", png_bytes(big))
    _write(root / "loose.png", png_bytes(big))
    _write(root / "small" / "readme.txt", b"notes")
    _write(root / ".DS_Store", b"\0\0")
    _write(outside / "secret.png", png_bytes(small))
    os.symlink(outside / "secret.png", root / "small" / "link.png")
    # Same name twice on disk (NFC and NFD bytes): must be one record.
    cafe = png_bytes(good["small"][1].transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    _write(root / "small" / f"{CAFE_NFC}.png", cafe)
    _write(root / "small" / f"{CAFE_NFD}.png", cafe)
    _write(root / "big" / "copy of img000.png", png_bytes(big))  # exact duplicate (same pixels)
    _write(root / "big" / "near img000.jpg", valid_jpeg)  # near duplicate (lossy re-encode)
    return {
        "small/truncated.png": "truncated",
        "big/corrupt.jpg": "corrupt",
        "small/notes.png": "not a readable",
        "big/empty.png": "empty file",
        "small/bomb.png": "decompression bomb",
        "zebra/stripes.png": "unknown label",
        "loose.png": "not inside a class folder",
        "small/readme.txt": "unsupported file type",
        "small/link.png": "symlink leaves the data root",
        f"small/{CAFE_NFD}.png": "unicode normalisation",
        ".DS_Store": "hidden file",
    }


def build_metadata_corpus(root: Path, good: dict[str, list[Image.Image]], outside: Path) -> dict[str, str]:
    """``metadata.csv`` corpus: unsafe paths, NFC/NFD names, formula cells; return source → reason."""
    rows = []
    for label, images in good.items():
        for i, img in enumerate(images):
            name = f"images/{label}-{i:03d}.png"
            _write(root / name, png_bytes(img))
            rows.append({"file_name": name, "label": label, "caption": f"a {label} hip", "angle": -1.5 - i})
    _write(root / "images" / f"{CAFE_NFD}.png", png_bytes(good["big"][1].rotate(180)))
    _write(outside / "secret.png", png_bytes(good["small"][0]))
    rows += [
        {"file_name": f"images/{CAFE_NFC}.png", "label": "big", "caption": "=HYPERLINK(\"http://x\")", "angle": 1},
        {"file_name": "../secret.png", "label": "small", "caption": "", "angle": 2},
        {"file_name": str(outside / "secret.png"), "label": "small", "caption": "", "angle": 3},
        {"file_name": "images/missing.png", "label": "small", "caption": "", "angle": 4},
    ]
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return {
        "../secret.png": "escapes the data root",
        str(outside / "secret.png"): "absolute path",
        "images/missing.png": "file not found",
    }
