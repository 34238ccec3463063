"""Stage ``ingest``: raw labeled images → normalised PNGs, a validated manifest and a deterministic split.

Input (``raw``): either one folder per class (``raw/<label>/**/<image>``) or a folder holding ``metadata.csv``
with ``file_name,label[,caption][,split][,group][,...extra]`` (file_name relative to that folder). Extra columns
(e.g. angles) and captions are carried into the manifest; a ``group`` column (e.g. an animal id) keeps records
together in one split, like near duplicates.

Every file is checked before it is decoded: paths must stay inside the data root (no ``..``, absolute paths or
symlinks leading out), only PNG/JPEG/TIFF/BMP/DICOM open, and image dimensions are read from the header and
compared with ``ingest.max_pixels`` before any pixel is decoded (decompression bombs). A file that fails a check
is quarantined with its reason in ``quarantine.csv``; the rest is processed and the stage still succeeds.

Normalisation: EXIF orientation applied; 16-bit and float images rescaled by their min/max (never clipped);
palette, CMYK, LA/RGBA (alpha composited over black) converted; DICOM through its modality LUT (rescale
slope/intercept), MONOCHROME1 inverted, then its VOI window when it has one, else min/max, to 8 bit; finally mode
L or RGB (``ingest.channels``) and a resize + centre crop to ``ingest.image_size``.

Exact duplicates (sha256 of the normalised pixels) keep their first copy; the others are reported in
``duplicates.csv`` with near duplicates (perceptual-hash distance ≤ ``ingest.near_duplicate_distance``). Exact and
near duplicates are grouped (union-find) and a stratified split assigns whole groups, so near duplicates never
straddle train/val/test. Same input and params → byte-identical outputs.
"""

from __future__ import annotations

import io
import logging
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from tasks.io import atomic_write_bytes, atomic_write_csv, clean_stale_temp, restore_numeric, sha256_bytes
from tasks.params import Params
from tasks.stage import StageError, cli_main
from tasks.validation import validate

log = logging.getLogger(__name__)

RASTER_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
#: Only these decoders may run, whatever a file's extension claims (PIL otherwise tries ~40 formats).
ALLOWED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
SPLITS = ("train", "val", "test")
METADATA = "metadata.csv"
#: Manifest columns the stage computes; user metadata columns of the same name are replaced.
MANIFEST_COLUMNS = ["file_name", "label", "split", "source", "sha256", "phash", "group", "width", "height",
                    "caption"]
#: pHash side: 16 → 256 bits. 64-bit hashes cannot tell distinct X-rays of one anatomy apart (measured on the
#: phantom: distinct images at distance 0), 256 bits separate them from re-encoded copies.
PHASH_SIZE = 16
_SAFE_CLASS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_. -]*$")


class IngestError(StageError):
    """The input cannot be ingested as a whole (missing folder, class mismatch, nothing usable)."""


class BadImage(ValueError):
    """One file cannot be used; the message is the quarantine reason."""


@dataclass(frozen=True)
class IngestOutputs:
    trainval: Path
    test: Path
    quarantine: Path
    duplicates: Path
    metrics: dict[str, float]


@dataclass
class Record:
    """One input image as found on disk, before decoding."""

    source: str  # path relative to the data root, NFC, posix
    path: Path
    label: str
    disk_name: str  # the name as found (NFD stays NFD): what a person looks for on disk
    meta: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- discovery


def nfc(text: str) -> str:
    """Unicode NFC form: macOS writes NFD names, Linux keeps whatever bytes it was given."""
    return unicodedata.normalize("NFC", text)


def check_relative(name: str) -> str | None:
    """Reason why a metadata ``file_name`` is not a safe relative path inside the root, else None."""
    if not name or not name.strip():
        return "empty file_name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or Path(name).is_absolute():
        return "absolute path not allowed"
    if any(part == ".." for part in re.split(r"[\\/]", name)):
        return "path escapes the data root (..)"
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def resolve_in_root(root: Path, name: str) -> Path:
    """File ``name`` under ``root``, matching NFC/NFD variants; BadImage when unsafe or missing."""
    reason = check_relative(name)
    if reason:
        raise BadImage(reason)
    for variant in dict.fromkeys((name, nfc(name), unicodedata.normalize("NFD", name))):
        candidate = root / variant
        if candidate.is_symlink() or candidate.exists():
            break
    else:
        raise BadImage("file not found")
    if not _inside(candidate, root):
        raise BadImage("symlink leaves the data root")
    if not candidate.is_file():
        raise BadImage("not a regular file")
    return candidate


def _walk(root: Path) -> Iterable[Path]:
    """Every non-hidden path under ``root`` in sorted order; symlinked folders are reported, not followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for d in dirnames:
            if (base / d).is_symlink():
                yield base / d
        for f in sorted(filenames):
            if not f.startswith("."):
                yield base / f


def discover_folders(root: Path) -> tuple[list[Record], list[dict[str, str]]]:
    """Records of a folder-per-class tree, and quarantine rows for files that cannot be records."""
    records, bad = [], []
    for path in _walk(root):
        source = nfc(path.relative_to(root).as_posix())
        if not _inside(path, root):
            bad.append({"source": source, "reason": "symlink leaves the data root"})
        elif path.is_dir():
            log.warning("ingest: symlinked folder %s inside the root is not followed", source)
        elif "/" not in source:
            bad.append({"source": source, "reason": "not inside a class folder"})
        else:
            disk = path.relative_to(root).as_posix()
            records.append(Record(source, path, nfc(source.split("/", 1)[0]), disk))
    return records, bad


def discover_metadata(root: Path) -> tuple[list[Record], list[dict[str, str]]]:
    """Records listed in ``root/metadata.csv``; rows with unsafe or missing files become quarantine rows."""
    df = pd.read_csv(root / METADATA, dtype=str, keep_default_na=False)
    missing = {"file_name", "label"} - set(df.columns)
    if missing:
        raise IngestError(f"{root / METADATA} lacks column(s) {sorted(missing)}; expected file_name,label[,...]")
    records, bad = [], []
    for row in df.to_dict("records"):
        name = row.pop("file_name")
        try:
            path = resolve_in_root(root, name)
        except BadImage as err:
            bad.append({"source": nfc(name), "reason": str(err)})
            continue
        label = nfc(row.pop("label").strip())
        disk = path.relative_to(root).as_posix()
        records.append(Record(nfc(disk), path, label, disk, row))
    return records, bad


def dedupe_names(records: list[Record]) -> tuple[list[Record], list[dict[str, str]]]:
    """One record per NFC-normalised source name (an NFC and an NFD copy of a name are the same record)."""
    seen: dict[str, Record] = {}
    bad = []
    # The copy whose on-disk name already is NFC wins; the order is the same on every file system.
    for rec in sorted(records, key=lambda r: (r.source, r.disk_name != r.source, r.disk_name)):
        if rec.source in seen:
            bad.append({"source": rec.disk_name, "reason": f"same name as {rec.source} after unicode normalisation"})
        else:
            seen[rec.source] = rec
    return list(seen.values()), bad


def discover(root: Path) -> tuple[list[Record], list[dict[str, str]]]:
    """Records of ``root`` (metadata.csv if present, else folder-per-class) and early quarantine rows."""
    if not root.is_dir():
        raise FileNotFoundError(f"ingest input folder {root} does not exist (params.paths.raw)")
    records, bad = discover_metadata(root) if (root / METADATA).is_file() else discover_folders(root)
    records, dup_names = dedupe_names(records)
    return records, bad + dup_names


# --------------------------------------------------------------------------------------------- decoding


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


# --------------------------------------------------------------------------------------------- duplicates


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving); ``roots()`` gives each element's set representative."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # smallest index represents: deterministic

    def roots(self) -> list[int]:
        return [self.find(i) for i in range(len(self.parent))]


def near_duplicate_pairs(hashes: list[str], max_distance: int, block: int = 512) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j for every pair of equal-length hex hashes within ``max_distance`` bits."""
    if len({len(h) for h in hashes}) > 1 or any(len(h) % 16 for h in hashes):
        raise ValueError("near_duplicate_pairs expects hex hashes of one length, a multiple of 64 bits")
    # Each hash as a row of uint64 words; the distance is the popcount of the XOR summed over words.
    values = np.array([[int(h[k:k + 16], 16) for k in range(0, len(h), 16)] for h in hashes], dtype=np.uint64)
    pairs = []
    for start in range(0, len(values), block):  # blocks keep the distance matrix small for big inputs
        xor = values[start:start + block, None, :] ^ values[None, :, :]
        dist = np.bitwise_count(xor).sum(axis=-1)
        for i, j in zip(*np.nonzero(dist <= max_distance)):
            if start + i < j:
                pairs.append((int(start + i), int(j), int(dist[i, j])))
    return pairs


def group_duplicates(df: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Add ``group`` (g00000…) uniting near duplicates and records sharing a user ``group_key``.

    Exact duplicates must already be dropped. Groups are numbered by their smallest sha256, so numbering does
    not depend on file order.
    """
    uf = UnionFind(len(df))
    for i, j, _ in near_duplicate_pairs(df["phash"].tolist(), max_distance):
        uf.union(i, j)
    keys = df["group_key"].tolist() if "group_key" in df else [""] * len(df)
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key:
            uf.union(first.setdefault(key, i), i)
    roots = pd.Series(uf.roots(), index=df.index)
    order = df.groupby(roots.values)["sha256"].min().sort_values()
    number = {root: f"g{k:05d}" for k, root in enumerate(order.index)}
    return df.assign(group=[number[r] for r in roots])


def drop_exact_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, str]]]:
    """Keep the first record per pixel hash; return (kept, duplicate report rows, quarantine rows).

    Identical pixels under different labels cannot both be right: every copy is quarantined.
    """
    df = df.sort_values("source", kind="stable")
    labels = df.groupby("sha256")["label"].nunique()
    conflicting = df["sha256"].map(labels) > 1
    bad = [{"source": s, "reason": "identical image found under different labels"}
           for s in df.loc[conflicting, "source"]]
    df = df[~conflicting]
    dup = df.duplicated("sha256", keep="first")
    first = df.drop_duplicates("sha256").set_index("sha256")["source"]
    report = pd.DataFrame({"source": df.loc[dup, "source"], "duplicate_of": df.loc[dup, "sha256"].map(first),
                           "kind": "exact", "distance": 0})
    return df[~dup].reset_index(drop=True), report, bad


def near_duplicate_report(df: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Rows ``source, duplicate_of, kind=near, distance`` for every near-duplicate pair."""
    pairs = near_duplicate_pairs(df["phash"].tolist(), max_distance)
    src = df["source"].tolist()
    return pd.DataFrame([{"source": src[j], "duplicate_of": src[i], "kind": "near", "distance": d}
                         for i, j, d in pairs], columns=["source", "duplicate_of", "kind", "distance"])


# --------------------------------------------------------------------------------------------- splitting


def split_targets(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder split of ``n`` items into integer counts proportional to ``fractions``."""
    if n < 0 or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"need n ≥ 0 and fractions summing to 1, got n={n}, {fractions}")
    raw = {k: n * f for k, f in fractions.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (counts[k] - raw[k], list(raw).index(k)))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def assign_splits(df: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Stratified (by label) split of whole groups: each group lands in one split; deterministic by ``seed``.

    Groups of a stratum are shuffled, then each goes to the split furthest below its target count.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5B17,)))
    # A group's stratum is the label of its first record (mixed-label near duplicates are rare).
    group_label = df.sort_values("source").groupby("group")["label"].first()
    all_sizes = df.groupby("group").size()
    chosen: dict[str, str] = {}
    for label in sorted(group_label.unique()):
        groups = sorted(group_label.index[group_label == label])
        sizes = all_sizes[groups]
        target = split_targets(int(sizes.sum()), fractions)
        filled = dict.fromkeys(fractions, 0)
        for g in rng.permutation(np.array(groups, dtype=object)):
            name = max(fractions, key=lambda s: (target[s] - filled[s], -list(fractions).index(s)))
            filled[name] += int(sizes[g])
            chosen[g] = name
    return df["group"].map(chosen)


# --------------------------------------------------------------------------------------------- the stage


def _slug(source: str) -> str:
    stem = Path(source).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", nfc(stem)).strip("._")[:60] or "img"


def _check_classes(found: set[str], classes: tuple[str, ...]) -> None:
    bad = [c for c in classes if not _SAFE_CLASS.match(c)]
    if bad:
        raise IngestError(f"class names {bad} are not safe folder names (letters, digits, _ . - and spaces)")
    missing = [c for c in classes if c not in found]
    if missing:
        raise IngestError(
            f"classes {missing} of params (phantom.classes = {list(classes)}) have no usable images; the data "
            f"has labels {sorted(found)}. Set phantom.classes in params.yaml to the classes of your data.")


def process_record(rec: Record, params: Params) -> tuple[dict[str, Any], bytes]:
    """Decode, normalise and hash one record; return its manifest row (without split/group) and PNG bytes."""
    cfg = params.ingest
    data = rec.path.read_bytes()
    img = load_image(data, rec.path.suffix, cfg.max_pixels)
    orig_w, orig_h = img.size
    out = normalise(img, cfg.image_size, cfg.channels)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False)
    extra = {k: v for k, v in rec.meta.items() if k not in MANIFEST_COLUMNS}
    row = {"label": rec.label, "source": rec.source, "sha256": pixel_sha256(out), "phash": phash_hex(out),
           "width": out.width, "height": out.height, "orig_width": orig_w, "orig_height": orig_h,
           "caption": rec.meta.get("caption", ""), "user_split": rec.meta.get("split", "").strip(),
           "group_key": rec.meta.get("group", "").strip(), **extra}
    return row, buf.getvalue()


def _decode_all(records: list[Record], params: Params) -> tuple[pd.DataFrame, dict[str, bytes], list[dict]]:
    rows, pngs, bad = [], {}, []
    known = set(params.classes)
    for rec in tqdm(records, desc="ingest", leave=False):
        if rec.label not in known:
            bad.append({"source": rec.source, "reason": f"unknown label {rec.label!r}"})
            continue
        try:
            row, png = process_record(rec, params)
        except BadImage as err:
            bad.append({"source": rec.source, "reason": str(err)})
            continue
        rows.append(row)
        pngs[rec.source] = png
    return pd.DataFrame(rows), pngs, bad


def _apply_splits(df: pd.DataFrame, params: Params) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Use the input's ``split`` column when it gives one, else the seeded group split."""
    if not df["user_split"].astype(bool).any():
        fractions = params.ingest.split.model_dump()
        return df.assign(split=assign_splits(df, fractions, params.seed)), []
    valid = df["user_split"].isin(SPLITS)
    bad = [{"source": s, "reason": f"invalid split {v!r} (expected train/val/test)"}
           for s, v in zip(df.loc[~valid, "source"], df.loc[~valid, "user_split"])]
    df = df[valid].assign(split=df.loc[valid, "user_split"])
    straddling = df.groupby("group")["split"].nunique().gt(1).sum()
    if straddling:
        log.warning("ingest: %d near-duplicate groups straddle the splits given in metadata.csv", straddling)
    return df, bad


def _write_outputs(df: pd.DataFrame, pngs: dict[str, bytes], out_dir: Path, classes: tuple[str, ...]) -> None:
    written: dict[Path, set[str]] = {}
    for is_test in (False, True):
        part = df[(df["split"] == "test") == is_test]
        folder = out_dir / ("test" if is_test else "trainval")
        names = [(f"{lab}/" if is_test else f"{sp}/{lab}/") + f"{_slug(src)}-{sha[:10]}.png"
                 for lab, sp, src, sha in zip(part.label, part.split, part.source, part.sha256)]
        for name, src in zip(names, part.source):
            atomic_write_bytes(folder / name, pngs[src], durable=False)  # the manifest, written last, is durable
        manifest = part.assign(file_name=names)
        cols = MANIFEST_COLUMNS + [c for c in manifest.columns if c not in MANIFEST_COLUMNS]
        manifest = manifest[cols].sort_values("file_name").reset_index(drop=True)
        manifest = restore_numeric(manifest, [c for c in cols if c not in MANIFEST_COLUMNS])
        validate(manifest, "ingest_manifest", classes=classes)
        atomic_write_csv(folder / "manifest.csv", manifest)
        written[folder] = set(names)
    for folder, keep in written.items():  # a previous run's images must not linger next to the new manifest
        for p in folder.rglob("*.png") if folder.exists() else []:
            if p.relative_to(folder).as_posix() not in keep:
                p.unlink()


def run(params: Params, *, raw: Path, out_dir: Path) -> IngestOutputs:
    """Ingest ``raw`` into ``out_dir``: normalised images, manifests, quarantine and duplicate reports."""
    raw, out_dir = Path(raw), Path(out_dir)
    clean_stale_temp(out_dir)
    records, bad = discover(raw)
    df, pngs, bad_files = _decode_all(records, params)
    bad += bad_files
    if df.empty:
        raise IngestError(f"no usable images in {raw}: {len(bad)} quarantined (see reasons in the log)")
    _check_classes(set(df["label"]), params.classes)
    df, exact_report, conflicts = drop_exact_duplicates(df)
    df = group_duplicates(df, params.ingest.near_duplicate_distance)
    df, bad_split = _apply_splits(df, params)
    bad += conflicts + bad_split
    df = df.drop(columns=["user_split", "group_key"])
    empty = [s for s in SPLITS if not (df["split"] == s).any()]
    if empty:
        raise IngestError(f"split(s) {empty} would be empty with {len(df)} usable images; add images or change "
                          f"ingest.split (or the split column of metadata.csv)")
    _write_outputs(df, pngs, out_dir, params.classes)
    quarantine = pd.DataFrame(sorted(bad, key=lambda r: r["source"]), columns=["source", "reason"])
    atomic_write_csv(out_dir / "quarantine.csv", quarantine)
    near = near_duplicate_report(df, params.ingest.near_duplicate_distance)
    duplicates = pd.concat([exact_report, near], ignore_index=True) if len(near) else exact_report
    atomic_write_csv(out_dir / "duplicates.csv", duplicates)
    metrics = _metrics(df, quarantine, exact_report, len(records))
    for row in quarantine.itertuples():
        log.warning("ingest: quarantined %s: %s", row.source, row.reason)
    log.info("ingest: %s", metrics)
    return IngestOutputs(out_dir / "trainval", out_dir / "test", out_dir / "quarantine.csv",
                         out_dir / "duplicates.csv", metrics)


def _metrics(df: pd.DataFrame, quarantine: pd.DataFrame, exact: pd.DataFrame, n_records: int) -> dict[str, float]:
    group_sizes = df.groupby("group").size()
    metrics = {"n_records": n_records, "n_ok": len(df), "n_quarantined": len(quarantine),
               "n_duplicates": len(exact), "n_near_duplicate_groups": int((group_sizes > 1).sum()),
               **{f"n_{s}": int((df["split"] == s).sum()) for s in SPLITS}}
    return {k: float(v) for k, v in metrics.items()}


if __name__ == "__main__":
    cli_main("ingest")
