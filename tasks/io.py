"""Crash-safe file writing and hashing. Every file a stage writes goes through here.

A write goes to a temporary file in the same folder, is fsynced, then ``os.replace``d over the target: a kill
at any moment leaves either the complete old or the complete new file. Temp files carry a recognisable prefix so
``clean_stale_temp`` can remove leftovers of a killed run at the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_PREFIX = ".synthloop-tmp-"
_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "wb", *, durable: bool = True) -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on clean exit fsync it and replace ``path`` atomically.

    ``durable=False`` skips the fsyncs (still atomic against a killed process, not against power loss): for
    bulk files of a stage that is simply re-run after a crash, where thousands of fsyncs dominate the runtime.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes, *, durable: bool = True) -> None:
    with atomic_open(path, "wb", durable=durable) as fh:
        fh.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def safe_csv_cell(value: Any) -> Any:
    """Neutralise spreadsheet formula injection: prefix a quote to text starting with = + - @ tab or CR.

    Numbers are left alone (a negative number is data, not a formula).
    """
    if isinstance(value, str) and value.startswith(_FORMULA_LEAD):
        return "'" + value
    return value


def atomic_write_csv(path: Path | str, df: "Any", *, neutralise: bool = True) -> None:
    """Write a DataFrame as CSV atomically, text cells neutralised against formula injection."""
    if neutralise:
        from pandas.api.types import is_object_dtype, is_string_dtype

        df = df.copy()
        for col in df.columns:
            if is_object_dtype(df[col]) or is_string_dtype(df[col]):
                df[col] = df[col].map(safe_csv_cell)
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    atomic_write_text(path, buf.getvalue())


def restore_numeric(df: "Any", columns: "Any" = None) -> "Any":
    """Copy of a DataFrame read with ``dtype=str`` where each all-numeric text column (of ``columns``, default
    all) becomes numeric. Pass only free-form metadata columns: a label such as "1" must stay text.

    Keeps user metadata exact (no NaN guessing on read) while numbers such as negative angles stay data and are
    not quoted by ``safe_csv_cell``.
    """
    import pandas as pd
    from pandas.api.types import is_object_dtype, is_string_dtype

    df = df.copy()
    for col in df.columns if columns is None else columns:
        values = df[col]
        if is_object_dtype(values) or is_string_dtype(values):
            filled = values[values.astype(str) != ""]
            if len(filled) and pd.to_numeric(filled, errors="coerce").notna().all():
                df[col] = pd.to_numeric(values.replace("", None), errors="coerce")
    return df


def save_png_atomic(image: "Any", path: Path | str, *, durable: bool = True) -> bytes:
    """Save a PIL image as PNG atomically (deterministic bytes: no timestamps); return the bytes written."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    data = buf.getvalue()
    atomic_write_bytes(path, data, durable=durable)
    return data


def clean_stale_temp(folder: Path | str) -> int:
    """Delete temp files a killed run left below ``folder``; return how many."""
    folder = Path(folder)
    if not folder.exists():
        return 0
    n = 0
    for p in folder.rglob(TEMP_PREFIX + "*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_hash(folder: Path | str) -> str:
    """Content hash of a folder: relative paths and file hashes, order-independent of the file system.

    Only regular files are read. A symlink is hashed by the path it holds, never followed (its target may be
    outside the folder, e.g. /etc/passwd, or a FIFO); other non-regular entries (FIFO, socket, device) by their kind,
    never opened (opening a FIFO blocks). Names that are not valid UTF-8 are hashed by their bytes.
    """
    import stat

    folder = Path(folder)
    found: list[tuple[Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath)
        for name in dirnames + filenames:
            try:
                mode = os.lstat(base / name).st_mode
            except FileNotFoundError:  # removed while walking: not part of the tree any more
                continue
            if not stat.S_ISDIR(mode) and not (stat.S_ISREG(mode) and name.startswith(TEMP_PREFIX)):
                found.append((base / name, mode))
    h = hashlib.sha256()
    for p, mode in sorted(found):
        h.update(os.fsencode(p.relative_to(folder).as_posix()))
        if stat.S_ISREG(mode):
            h.update(sha256_file(p).encode())
        elif stat.S_ISLNK(mode):
            h.update(b"symlink:" + os.fsencode(os.readlink(p)))
        else:
            h.update(b"special:" + str(stat.S_IFMT(mode)).encode())
    return h.hexdigest()
