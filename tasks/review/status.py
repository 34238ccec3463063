"""Where the review checkpoint stands, read without pandas, torch or prefect (the flow and the CLI use it).

``review_status(params)`` counts total, decided and waiting items from ``queue.csv``, ``corrections.csv`` (csv
module) and ``audit.jsonl`` (who read an overlap item); ``review_url`` is the address ``synthloop review`` serves.
``waiting`` is what a person still owes: undecided items within ``review.budget`` (the audit sample included) and
overlap items short of a second read or disputed (``tasks.review.agreement``); ``beyond_budget`` the rest.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tasks.review.agreement import first_reads, overlap_state
from tasks.review.audit import read_audit
from tasks.tables import AUDIT_FILE, CORRECTIONS_FILE, QUEUE_FILE


def review_url(host: str, port: int) -> str:
    """The URL ``synthloop review`` serves (IPv6 literals get brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if row.get("file_name")]


def _images(rows: list[dict[str, str]]) -> set[tuple[str, str]]:
    """(file_name, sha256) of each row: a decision counts only for the exact image content it was made on."""
    return {(row["file_name"], row.get("sha256") or "") for row in rows}


def _flag(row: dict[str, str], column: str, default: bool) -> bool:
    return default if column not in row else row[column].strip().lower() in {"true", "1"}


def review_status(params: Any) -> dict[str, Any]:
    """Counts of the review checkpoint: total queued items, decided, waiting, the mode and the review URL.

    ``total`` is 0 until the review stage has written ``queue.csv``. Decisions for files no longer in the queue, or
    made on other content than the queued image (regenerated; no sha256), are not counted.
    """
    out_dir = Path(params.paths.review)
    rows = _rows(out_dir / QUEUE_FILE)
    queued = _images(rows)
    decided = {f for f, h in queued & _images(_rows(out_dir / CORRECTIONS_FILE)) if h}
    required = {r["file_name"] for r in rows if _flag(r, "in_budget", True)}
    overlap = {r["file_name"] for r in rows if _flag(r, "overlap", False)} & decided
    reads = first_reads(read_audit(out_dir / AUDIT_FILE)) if overlap else {}
    owed = (required - decided) | {f for f in overlap if overlap_state(reads.get(f, {})) != "done"}
    return {
        "total": len(queued),
        "decided": len(decided),
        "waiting": len(owed),
        "beyond_budget": len(queued) - len(decided) - len(required - decided),
        "mode": params.review.mode,
        "url": review_url(params.review.host, params.review.port),
    }
