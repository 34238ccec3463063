"""Discovery: the records of the ingest input, and quarantine rows for every entry that cannot be a record.

Input (``raw``): either one folder per class (``raw/<label>/**/<image>``) or a folder holding ``metadata.csv``
with ``file_name,label[,caption][,split][,group][,...extra]`` (file_name relative to that folder). Extra columns
(e.g. angles) and captions are carried into the manifest; a ``group`` column (e.g. an animal id) keeps records
together in one split, like near duplicates.

Every entry under the root is accounted for: a record, or a quarantine row with a one-line reason. The walk
(``tasks.intake.walk``) classifies entries by ``lstat`` before anything opens them: hidden files and dot-folders,
FIFOs, sockets, devices, dangling, looping or escaping symlinks and undecodable names become quarantine rows.
With ``metadata.csv``, files it does not list are rows too ("not listed in metadata.csv"). Paths must stay inside
the data root (no ``..``, absolute paths or symlinks leading out); names are matched and deduplicated in Unicode
NFC. ``IngestError`` (the input as a whole cannot be ingested) is defined here for the wing and the stage;
``BadImage`` (one file cannot be used) comes from the walk and is re-exported.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.intake.walk import BadImage, inside, kind_of, shown, walk
from tasks.stage import StageError

__all__ = ["METADATA", "BadImage", "IngestError", "Record", "check_relative", "discover", "nfc", "resolve_in_root"]

METADATA = "metadata.csv"


class IngestError(StageError):
    """The input cannot be ingested as a whole (missing folder, class mismatch, nothing usable)."""


@dataclass
class Record:
    """One input image as found on disk, before decoding."""

    source: str  # path relative to the data root, NFC, posix
    path: Path  # what to open: the real path (a followed symlink's target)
    label: str
    disk_name: str  # the name as found (NFD stays NFD): what a person looks for on disk
    meta: dict[str, str] = field(default_factory=dict)


def nfc(text: str) -> str:
    """Unicode NFC form: macOS writes NFD names, Linux keeps whatever bytes it was given."""
    return unicodedata.normalize("NFC", text)


def quarantine_row(source: str, reason: str) -> dict[str, str]:
    """A quarantine row; the source as found on disk (NFD stays NFD), one printable line (bytes escaped)."""
    return {"source": shown(source), "reason": reason}


def check_relative(name: str) -> str | None:
    """Reason why a metadata ``file_name`` is not a safe relative path inside the root, else None."""
    if not name or not name.strip():
        return "empty file_name"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "file_name contains control characters"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or Path(name).is_absolute():
        return "absolute path not allowed"
    if any(part == ".." for part in re.split(r"[\\/]", name)):
        return "path escapes the data root (..)"
    return None


def _variants(name: str) -> list[str]:
    return list(dict.fromkeys(Path(v).as_posix() for v in (name, nfc(name), unicodedata.normalize("NFD", name))))


def resolve_in_root(root: Path, name: str) -> tuple[Path, str]:
    """(real path, name as on disk) of metadata ``name`` under ``root``, matching NFC/NFD variants; BadImage
    when unsafe, missing or not a regular file. Only path text and metadata are read, never an outside file."""
    reason = check_relative(name)
    if reason:
        raise BadImage(reason)
    root_real = os.path.realpath(root)
    for variant in _variants(name):
        candidate = os.path.join(root_real, variant)
        if os.path.lexists(candidate):
            break
    else:
        raise BadImage("file not found")
    target = os.path.realpath(candidate)
    if not inside(target, root_real):
        raise BadImage("symlink leaves the data root: not read")
    try:
        mode = os.stat(candidate).st_mode
    except FileNotFoundError:
        raise BadImage("dangling symlink (its target does not exist)") from None
    except OSError as err:
        raise BadImage("symlink loop" if err.errno == errno.ELOOP else f"cannot be examined: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise BadImage(f"not a regular file ({kind_of(mode)}): not opened")
    return Path(target), variant


def discover_folders(root: Path) -> tuple[list[Record], list[dict[str, str]]]:
    """Records of a folder-per-class tree, and a quarantine row for every other entry."""
    records, bad = [], []
    for entry in walk(root):
        if entry.problem:
            bad.append(quarantine_row(entry.rel, entry.problem))
        elif "/" not in entry.rel:
            bad.append(quarantine_row(entry.rel, "not inside a class folder"))
        else:
            records.append(Record(nfc(entry.rel), entry.path, nfc(entry.rel.split("/", 1)[0]), entry.rel))
    return records, bad


def _read_metadata(root: Path) -> pd.DataFrame:
    path = root / METADATA
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:  # EmptyDataError is a ValueError
        raise IngestError(f"{path} cannot be read as a UTF-8 CSV table: {type(err).__name__}: {err}") from None
    missing = {"file_name", "label"} - set(df.columns)
    if missing:
        raise IngestError(f"{path} lacks column(s) {sorted(missing)}; expected file_name,label[,...]")
    return df


def discover_metadata(root: Path) -> tuple[list[Record], list[dict[str, str]]]:
    """Records listed in ``root/metadata.csv``; rows with unsafe or missing files, and files it does not list,
    become quarantine rows."""
    records, bad, referenced = [], [], set()
    for row in _read_metadata(root).to_dict("records"):
        name = row.pop("file_name")
        referenced.update(_variants(name) if name else ())
        try:
            path, disk = resolve_in_root(root, name)
        except BadImage as err:
            bad.append(quarantine_row(name, str(err)))
            continue
        label = nfc(row.pop("label").strip())
        records.append(Record(nfc(disk), path, label, disk, row))
    # Folders on the way to a listed file are not "unlisted" (a listed file inside a dot-folder is wanted).
    parents = {p.as_posix() for name in referenced for p in Path(name).parents}
    for entry in walk(root, search_hidden=frozenset(parents)):
        if entry.rel != METADATA and entry.rel not in referenced and entry.rel not in parents:
            bad.append(quarantine_row(entry.rel, entry.problem or f"not listed in {METADATA}"))
    return records, bad


def dedupe_names(records: list[Record]) -> tuple[list[Record], list[dict[str, str]]]:
    """One record per NFC-normalised source name (an NFC and an NFD copy of a name are the same record)."""
    seen: dict[str, Record] = {}
    bad = []
    # The copy whose on-disk name already is NFC wins; the order is the same on every file system.
    for rec in sorted(records, key=lambda r: (r.source, r.disk_name != r.source, r.disk_name)):
        if rec.source not in seen:
            seen[rec.source] = rec
        elif seen[rec.source].disk_name == rec.disk_name:
            bad.append(quarantine_row(rec.disk_name, f"listed more than once in {METADATA}"))
        else:
            bad.append(quarantine_row(rec.disk_name, f"same name as {rec.source} after unicode normalisation"))
    return list(seen.values()), bad


def discover(root: Path) -> tuple[list[Record], list[dict[str, str]]]:
    """Records of ``root`` (metadata.csv if present, else folder-per-class) and early quarantine rows.

    ``len(records) + len(rows)`` is the number of entries found: every one is either a record or a row.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"ingest input folder {root} does not exist (params.paths.raw)")
    metadata = root / METADATA
    if metadata.is_symlink() and not inside(os.path.realpath(metadata), os.path.realpath(root)):
        raise IngestError(f"{metadata} is a symlink leading out of the data root; refusing to read it")
    records, bad = discover_metadata(root) if metadata.is_file() else discover_folders(root)
    records, dup_names = dedupe_names(records)
    return records, bad + dup_names
