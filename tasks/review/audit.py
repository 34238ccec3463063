"""The append-only audit log of the review checkpoint: every attempt (saves, undos, stale 409s, imports).

The log is appended to, flushed and fsynced, never rewritten; a torn last line (kill mid-append) is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Gaps longer than this between two decisions of one reviewer are breaks, not time spent on an item.
MAX_ITEM_SECONDS = 300.0


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Entries of audit.jsonl; a torn last line (kill mid-append) is skipped with a warning."""
    if not path.is_file():
        return []
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON (torn write?); skipped", path, n)
    return entries


def append_audit(path: Path, entries: Sequence[dict[str, Any]]) -> None:
    """Append entries as JSON lines, then flush and fsync: the log is never rewritten."""
    if not entries:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        fh.seek(0, os.SEEK_END)
        prefix = b""
        if fh.tell() > 0:  # a torn last line must not swallow our first entry
            fh.seek(-1, os.SEEK_END)
            prefix = b"" if fh.read(1) == b"\n" else b"\n"
        fh.write(prefix + "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def item_versions(entries: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Current version per item: the number of saved changes (decisions and undos) in the audit log."""
    versions: dict[str, int] = {}
    for e in entries:
        if e.get("outcome") == "saved":
            versions[e["file_name"]] = max(versions.get(e["file_name"], 0), int(e.get("version", 0)))
    return versions


def seconds_per_item(entries: Iterable[dict[str, Any]]) -> float | None:
    """Median seconds a person spent per item: in the app, the gaps between consecutive saved decisions of each
    person (automatic reviewers excluded); from Label Studio, each applied annotation's own ``lead_time``.

    Gaps (and lead times) over ``MAX_ITEM_SECONDS`` are breaks and are dropped; None when there is nothing to measure.
    """
    times: dict[str, list[datetime]] = {}
    gaps = []
    for e in entries:
        if e.get("outcome") != "saved":
            continue
        if e.get("source") == "app" and e.get("action") == "decide":
            times.setdefault(e["reviewer"], []).append(datetime.fromisoformat(e["time"].replace("Z", "+00:00")))
        elif e.get("source") == "labelstudio":
            lead = ((e.get("context") or {}).get("annotation") or {}).get("lead_time")
            if isinstance(lead, (int, float)) and not isinstance(lead, bool) and lead >= 0:
                gaps.append(float(lead))
    for stamps in times.values():
        stamps.sort()
        gaps += [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    gaps = [g for g in gaps if g <= MAX_ITEM_SECONDS]
    return round(statistics.median(gaps), 3) if gaps else None
