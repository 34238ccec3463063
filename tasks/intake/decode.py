"""Decoding and normalising: file bytes → a checked PIL image → mode L/RGB, square, with its hashes.

Only PNG/JPEG/TIFF/BMP/GIF/DICOM open, and image dimensions are read from the header and compared with
``ingest.max_pixels`` before any pixel is decoded (decompression bombs; the reason quotes that limit, also when
Pillow's own check fires: it runs with the same limit). Every failure is a ``BadImage``.

Conversion rules (each lossy choice leaves a note in the manifest's ``ingest_note``):

- multi-frame files (TIFF stacks, animated GIF/PNG, MPO, multi-frame DICOM): ``ingest.multi_frame: first`` uses
  frame 1 and notes "frame 1 of N"; ``quarantine`` refuses the file;
- 16-bit, 32-bit and float images (I;16*, I, F): rescaled by their own min/max to 8 bit (never clipped);
- LAB → sRGB through littlecms (``PIL.ImageCms``, D50 white point); CMYK, YCbCr, HSV → RGB by Pillow;
- palette, LA/RGBA (and premultiplied La/RGBa): alpha composited over black (film is dark where nothing is);
- DICOM: the frame is decoded by pydicom (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 and RLE through
  pylibjpeg and its plugins), colour (RGB; YBR converted by pydicom; PALETTE COLOR through its LUT) scaled by its
  bit depth; grayscale through its modality LUT (rescale slope/intercept), then with ``ingest.dicom_window: voi``
  its VOI LUT, else its first window centre/width (LINEAR, LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2), else the
  image's min/max, to 8 bit; ``minmax`` always uses min/max. MONOCHROME1 is inverted last.

Finally EXIF orientation is applied, then mode L or RGB (``ingest.channels``) and a resize + centre crop to
``ingest.image_size``. ``pixel_sha256`` and ``phash_hex`` hash the normalised image.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.intake.walk import BadImage
from tasks.io import sha256_bytes

RASTER_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
                   ".gif": "GIF"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
#: Only these decoders may run, whatever a file's extension claims (PIL otherwise tries ~40 formats).
ALLOWED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF")
#: pHash side: 16 → 256 bits. 64-bit hashes cannot tell distinct X-rays of one anatomy apart (measured on the
#: phantom: distinct images at distance 0), 256 bits separate them from re-encoded copies.
PHASH_SIZE = 16
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


@dataclass(frozen=True)
class Decoded:
    """A decoded image and the notes on the choices made to get it (frame used, window, ...)."""

    image: Image.Image
    notes: tuple[str, ...] = ()


def load_image(data: bytes, suffix: str, max_pixels: int, *, multi_frame: str = "first",
               dicom_window: str = "voi") -> Decoded:
    """Decode file bytes; BadImage (the quarantine reason) when the file must not or cannot be decoded."""
    if not data:
        raise BadImage("empty file")
    suffix = suffix.lower()
    is_dicom = len(data) > 132 and data[128:132] == b"DICM"
    if suffix in DICOM_SUFFIXES or (is_dicom and suffix not in RASTER_SUFFIXES):
        return _open_dicom(data, max_pixels, multi_frame, dicom_window)
    if suffix not in RASTER_SUFFIXES:
        raise BadImage(f"unsupported file type {suffix or '(no extension)'}")
    return _open_raster(data, max_pixels, multi_frame)


# ------------------------------------------------------------------------------------------------- rasters


def _bomb(size: str, max_pixels: int) -> BadImage:
    return BadImage(f"decompression bomb: {size} pixels exceed ingest.max_pixels={max_pixels}")


@contextlib.contextmanager
def _pillow_limit(max_pixels: int) -> Iterator[None]:
    # Pillow's own bomb check (in Image.open) uses a process-wide limit; for this open it is the configured one,
    # so Pillow refuses exactly what ingest.max_pixels refuses. Ingest decodes in one thread.
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _open_raster(data: bytes, max_pixels: int, multi_frame: str) -> Decoded:
    with warnings.catch_warnings(), _pillow_limit(max_pixels):
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            # Image.open reads only the header: dimensions are known before any pixel is decoded.
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            found = re.search(r"\((\d+) pixels\)", str(err))
            raise _bomb(found.group(1) if found else "more", max_pixels) from None
        except UnidentifiedImageError:
            raise BadImage("not a readable PNG/JPEG/TIFF/BMP/GIF image") from None
        except Exception as err:  # damaged headers raise SyntaxError, struct.error, OSError, ...
            raise BadImage(f"corrupt image header: {type(err).__name__}: {err}") from None
        width, height = img.size
        if width * height > max_pixels:
            raise _bomb(f"{width}x{height} = {width * height}", max_pixels)
        notes = _choose_frame(img, multi_frame)
        try:
            img.load()
        except Exception as err:  # decoders raise OSError, SyntaxError, zlib.error, ... on damaged data
            raise BadImage(f"corrupt or truncated image: {type(err).__name__}: {err}") from None
    return Decoded(img, notes)


def _choose_frame(img: Image.Image, policy: str) -> tuple[str, ...]:
    """Apply ``ingest.multi_frame`` to an opened image; the note when a frame was chosen."""
    try:
        frames = int(getattr(img, "n_frames", 1))
    except Exception as err:  # counting frames parses every frame header: damaged later frames raise here
        raise BadImage(f"corrupt multi-frame image (frames cannot be counted): {type(err).__name__}: {err}") from None
    if frames <= 1:
        return ()
    if policy == "quarantine":
        raise BadImage(f"multi-frame image ({frames} frames) and ingest.multi_frame is 'quarantine'")
    img.seek(0)
    return (f"frame 1 of {frames} used (ingest.multi_frame: first)",)


# --------------------------------------------------------------------------------------------------- DICOM


def _int_tag(ds: Any, keyword: str, default: int) -> int:
    value = ds.get(keyword, default)
    try:
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        raise BadImage(f"invalid DICOM {keyword} {str(value)!r}") from None


def dicom_to_array(ds: Any, max_pixels: int, *, multi_frame: str = "first",
                   window: str = "voi") -> tuple[np.ndarray, tuple[str, ...]]:
    """8-bit pixels of a DICOM dataset (rules in the module docstring) and the notes on what was chosen."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    rows, cols = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    if rows * cols > max_pixels:
        raise _bomb(f"{cols}x{rows} = {rows * cols}", max_pixels)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise BadImage("DICOM file has no pixel data")
    frames, notes = _int_tag(ds, "NumberOfFrames", 1), []
    if frames > 1:
        if multi_frame == "quarantine":
            raise BadImage(f"multi-frame DICOM ({frames} frames) and ingest.multi_frame is 'quarantine'")
        ds.pixel_array_options(index=0)  # decode frame 1 only, not the whole stack
        notes.append(f"frame 1 of {frames} used (ingest.multi_frame: first)")
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return _scale_bits(rgb, 8 * rgb.dtype.itemsize), (*notes, "DICOM palette colour LUT applied")
    if not photometric.startswith("MONOCHROME"):
        return _scale_bits(arr, _int_tag(ds, "BitsStored", 8 * arr.dtype.itemsize)), tuple(notes)
    values = apply_modality_lut(arr, ds).astype(np.float64)
    scaled, how = _to_8bit(values, ds, window)
    notes.append(how)
    if photometric == "MONOCHROME1":
        scaled = 255 - scaled
        notes.append("MONOCHROME1 inverted")
    return scaled, tuple(notes)


def _scale_bits(arr: np.ndarray, bits: int) -> np.ndarray:
    """Colour samples of ``bits`` bits (integers) linearly onto 0..255; floats by their min/max."""
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        return _minmax_to_uint8(arr.astype(np.float64))
    hi = float(2 ** min(max(bits, 1), 8 * arr.dtype.itemsize) - 1)
    return np.round(np.clip(arr.astype(np.float64), 0, hi) / hi * 255.0).astype(np.uint8)


def _to_8bit(values: np.ndarray, ds: Any, window: str) -> tuple[np.ndarray, str]:
    """Modality values → 8 bit by the VOI LUT, the first window, or min/max (``ingest.dicom_window``)."""
    if window == "voi" and ds.get("VOILUTSequence"):
        from pydicom.pixels import apply_voi

        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi(np.rint(values).astype(np.int64), ds, index=0).astype(np.float64)
        return _minmax_to_uint8(out, 0.0, float(2**bits - 1)), "DICOM VOI LUT applied"
    if window == "voi" and "WindowCenter" in ds and "WindowWidth" in ds:
        centre, width = (float(np.atleast_1d(ds[t].value)[0]) for t in ("WindowCenter", "WindowWidth"))
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        unit = apply_window(values, centre, width, function)
        if unit is not None:
            return np.round(unit * 255.0).astype(np.uint8), f"DICOM window {function} C={centre:g} W={width:g}"
        return _minmax_to_uint8(values), f"DICOM window width {width:g} invalid for {function}: min/max used"
    return _minmax_to_uint8(values), "DICOM min/max to 8 bit"


def apply_window(x: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray | None:
    """DICOM VOI window (PS3.3 C.11.2.1.2) onto [0, 1]; None when ``width`` is invalid for ``function``."""
    if function == "SIGMOID":
        return None if width <= 0 else 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    if function == "LINEAR_EXACT":
        return None if width <= 0 else np.clip((x - centre) / width + 0.5, 0.0, 1.0)
    if width < 1:
        return None
    if width == 1:  # the standard's LINEAR formula degenerates to a threshold at c - 0.5
        return (x > centre - 0.5).astype(np.float64)
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _minmax_to_uint8(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linear map of ``[lo, hi]`` (default: the array's range) onto 0..255; a constant array maps to 0."""
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if not np.isfinite([lo, hi]).all():
        raise BadImage("image contains non-finite values")
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((np.clip(values, lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _open_dicom(data: bytes, max_pixels: int, multi_frame: str, window: str) -> Decoded:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        # pydicom's Pillow decoder plugin opens embedded JPEG/JPEG 2000 frames: same bomb limit as rasters.
        with warnings.catch_warnings(), _pillow_limit(max_pixels):
            warnings.simplefilter("ignore")  # pydicom warns on every odd-but-readable value; the outcome decides
            ds = pydicom.dcmread(io.BytesIO(data))
            arr, notes = dicom_to_array(ds, max_pixels, multi_frame=multi_frame, window=window)
    except InvalidDicomError:
        raise BadImage("not a DICOM file (no 'DICM' file header; datasets without file meta are not read)") from None
    except BadImage:
        raise
    except Exception as err:  # pydicom raises many types for damaged files; the reason keeps the message
        claimed = re.search(r"Image size \((\d+) pixels\) exceeds limit", str(err))
        if claimed:  # a frame's own header claims more pixels than allowed: say so with the configured limit
            raise BadImage(f"decompression bomb: the DICOM pixel data claims {claimed.group(1)} pixels, over "
                           f"ingest.max_pixels={max_pixels} (corrupt or hostile frame header)") from None
        raise BadImage(f"corrupt DICOM: {type(err).__name__}: {err}") from None
    return Decoded(Image.fromarray(arr, mode="RGB" if arr.ndim == 3 else "L"), notes)


# --------------------------------------------------------------------------------------------- normalising


def conversion_notes(img: Image.Image) -> tuple[str, ...]:
    """The notes ``to_mode`` leaves for ``img``'s mode: the lossy or policy-laden conversions only."""
    if img.mode in HIGH_DEPTH_MODES:
        return (f"{img.mode} rescaled by min/max to 8 bit",)
    if img.mode == "LAB":
        return ("LAB converted to sRGB (littlecms)",)
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return ("transparency composited over black",)
    return ()


def _lab_to_rgb(img: Image.Image) -> Image.Image:
    try:
        from PIL import ImageCms

        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                            "LAB", "RGB")
        return ImageCms.applyTransform(img, transform)
    except (ImportError, OSError, ValueError) as err:  # Pillow built without littlecms, or a profile error
        raise BadImage(f"LAB image cannot be converted (littlecms unavailable: {err})") from None


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to L (channels 1) or RGB (channels 3); high bit depths rescaled, never clipped."""
    mode, target = img.mode, "L" if channels == 1 else "RGB"
    try:
        if mode in HIGH_DEPTH_MODES:
            img = Image.fromarray(_minmax_to_uint8(np.asarray(img, dtype=np.float64)), mode="L")
        elif mode == "LAB":
            img = _lab_to_rgb(img)
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("P", "PA"):
            img = img.convert("RGBA")
        elif mode in ("La", "RGBa"):  # premultiplied alpha: un-premultiply first
            img = img.convert(mode.upper())
        if img.mode in ("LA", "RGBA"):
            # Composite over black: X-ray film is dark where nothing attenuates.
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(background, rgba).convert("L" if img.mode == "LA" else "RGB")
        return img.convert(target)
    except BadImage:
        raise
    except ValueError as err:  # Pillow: "conversion from X to Y not supported"
        raise BadImage(f"image mode {mode} cannot be converted to {target}: {err}") from None


def normalise(img: Image.Image, size: int, channels: int) -> Image.Image:
    """Upright (EXIF), mode L/RGB, resized so the short side is ``size`` and centre-cropped to size×size."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as err:  # a damaged EXIF block raises from deep inside Pillow
        raise BadImage(f"unreadable EXIF orientation: {type(err).__name__}: {err}") from None
    img = to_mode(img, channels)
    return ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def pixel_sha256(img: Image.Image) -> str:
    """Hash of the normalised pixels (mode and size included): identical images, whatever their file format."""
    return sha256_bytes(f"{img.mode}{img.size}".encode() + img.tobytes())


def phash_hex(img: Image.Image) -> str:
    """256-bit perceptual hash (PHASH_SIZE²) as 64 hex digits."""
    return str(imagehash.phash(img, hash_size=PHASH_SIZE))
