"""Discovery: the records of the ingest input, and quarantine rows for files that cannot be records.

Input (``raw``): either one folder per class (``raw/<label>/**/<image>``) or a folder holding ``metadata.csv``
with ``file_name,label[,caption][,split][,group][,...extra]`` (file_name relative to that folder). Extra columns
(e.g. angles) and captions are carried into the manifest; a ``group`` column (e.g. an animal id) keeps records
together in one split, like near duplicates.

Paths must stay inside the data root (no ``..``, absolute paths or symlinks leading out); names are matched and
deduplicated in Unicode NFC. ``BadImage`` (one file cannot be used; its message is the quarantine reason) and
``IngestError`` (the input as a whole cannot be ingested) are defined here for the whole wing and the stage.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.stage import StageError

log = logging.getLogger(__name__)

METADATA = "metadata.csv"


class IngestError(StageError):
    """The input cannot be ingested as a whole (missing folder, class mismatch, nothing usable)."""


class BadImage(ValueError):
    """One file cannot be used; the message is the quarantine reason."""


@dataclass
class Record:
    """One input image as found on disk, before decoding."""

    source: str  # path relative to the data root, NFC, posix
    path: Path
    label: str
    disk_name: str  # the name as found (NFD stays NFD): what a person looks for on disk
    meta: dict[str, str] = field(default_factory=dict)


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
