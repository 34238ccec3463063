"""Decoding and normalising: file bytes → a checked PIL image → mode L/RGB, square, with its hashes.

Only PNG/JPEG/TIFF/BMP/DICOM open, and image dimensions are read from the header and compared with
``ingest.max_pixels`` before any pixel is decoded (decompression bombs); every failure is a ``BadImage``.

Normalisation: EXIF orientation applied; 16-bit and float images rescaled by their min/max (never clipped);
palette, CMYK, LA/RGBA (alpha composited over black) converted; DICOM through its modality LUT (rescale
slope/intercept), MONOCHROME1 inverted, then its VOI window when it has one, else min/max, to 8 bit; finally mode
L or RGB (``ingest.channels``) and a resize + centre crop to ``ingest.image_size``. ``pixel_sha256`` and
``phash_hex`` hash the normalised image.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.intake.discover import BadImage
from tasks.io import sha256_bytes

RASTER_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
#: Only these decoders may run, whatever a file's extension claims (PIL otherwise tries ~40 formats).
ALLOWED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
#: pHash side: 16 → 256 bits. 64-bit hashes cannot tell distinct X-rays of one anatomy apart (measured on the
#: phantom: distinct images at distance 0), 256 bits separate them from re-encoded copies.
PHASH_SIZE = 16


def dicom_to_array(ds: Any, max_pixels: int) -> np.ndarray:
    """8-bit pixels of a DICOM dataset: modality LUT, MONOCHROME1 inversion, VOI window else min/max."""
    from pydicom.pixels import apply_modality_lut

    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise BadImage(f"decompression bomb: {cols}x{rows} exceeds ingest.max_pixels={max_pixels}")
    if "PixelData" not in ds:
        raise BadImage("DICOM file has no pixel data")
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.startswith("MONOCHROME"):
        return arr.astype(np.uint8) if arr.dtype == np.uint8 else _minmax_to_uint8(arr.astype(np.float64))
    values = apply_modality_lut(arr, ds).astype(np.float64)
    lo, hi = values.min(), values.max()
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = (float(np.atleast_1d(ds[t].value)[0]) for t in ("WindowCenter", "WindowWidth"))
        lo, hi = centre - width / 2.0, centre + width / 2.0
        values = np.clip(values, lo, hi)  # the window is the radiologist's choice of range: clipping is intended
    scaled = _minmax_to_uint8(values, lo, hi)
    return 255 - scaled if photometric == "MONOCHROME1" else scaled


def _minmax_to_uint8(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linear map of ``[lo, hi]`` (default: the array's range) onto 0..255; a constant array maps to 0."""
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if not np.isfinite([lo, hi]).all():
        raise BadImage("image contains non-finite values")
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _open_dicom(data: bytes, max_pixels: int) -> Image.Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        arr = dicom_to_array(ds, max_pixels)
    except InvalidDicomError:
        raise BadImage("not a DICOM file") from None
    except BadImage:
        raise
    except Exception as err:  # pydicom raises many types for damaged files; the reason keeps the message
        raise BadImage(f"corrupt DICOM: {type(err).__name__}: {err}") from None
    return Image.fromarray(arr, mode="RGB" if arr.ndim == 3 else "L")


def _open_raster(data: bytes, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            # Image.open reads only the header: dimensions are known before any pixel is decoded.
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImage(f"decompression bomb: {err}") from None
        except UnidentifiedImageError:
            raise BadImage("not a readable PNG/JPEG/TIFF/BMP image") from None
        except Exception as err:  # damaged headers raise SyntaxError, struct.error, OSError, ...
            raise BadImage(f"corrupt image header: {type(err).__name__}: {err}") from None
        width, height = img.size
        if width * height > max_pixels:
            raise BadImage(f"decompression bomb: {width}x{height} exceeds ingest.max_pixels={max_pixels}")
        try:
            img.load()
        except Exception as err:  # decoders raise OSError, SyntaxError, zlib.error, ... on damaged data
            raise BadImage(f"corrupt or truncated image: {type(err).__name__}: {err}") from None
    return img


def load_image(data: bytes, suffix: str, max_pixels: int) -> Image.Image:
    """Decode file bytes into a PIL image; BadImage (the quarantine reason) when it must not or cannot be."""
    if not data:
        raise BadImage("empty file")
    suffix = suffix.lower()
    is_dicom = len(data) > 132 and data[128:132] == b"DICM"
    if suffix in DICOM_SUFFIXES or (is_dicom and suffix not in RASTER_SUFFIXES):
        return _open_dicom(data, max_pixels)
    if suffix not in RASTER_SUFFIXES:
        raise BadImage(f"unsupported file type {suffix or '(no extension)'}")
    return _open_raster(data, max_pixels)


# --------------------------------------------------------------------------------------------- normalising


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to L (channels 1) or RGB (channels 3); high bit depths rescaled, never clipped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = Image.fromarray(_minmax_to_uint8(np.asarray(img, dtype=np.float64)), mode="L")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        # Composite over black: X-ray film is dark where nothing attenuates.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba).convert("L" if img.mode.startswith("L") else "RGB")
    return img.convert("L" if channels == 1 else "RGB")


def normalise(img: Image.Image, size: int, channels: int) -> Image.Image:
    """Upright (EXIF), mode L/RGB, resized so the short side is ``size`` and centre-cropped to size×size."""
    img = ImageOps.exif_transpose(img)
    img = to_mode(img, channels)
    return ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def pixel_sha256(img: Image.Image) -> str:
    """Hash of the normalised pixels (mode and size included): identical images, whatever their file format."""
    return sha256_bytes(f"{img.mode}{img.size}".encode() + img.tobytes())


def phash_hex(img: Image.Image) -> str:
    """256-bit perceptual hash (PHASH_SIZE²) as 64 hex digits."""
    return str(imagehash.phash(img, hash_size=PHASH_SIZE))
