"""Where the review checkpoint stands, read without pandas, torch or prefect (the flow and the CLI use it).

``review_status(params)`` counts total, decided and waiting items from ``queue.csv`` and ``corrections.csv`` with
the csv module; ``review_url`` is the address ``synthloop review`` serves.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tasks.tables import CORRECTIONS_FILE, QUEUE_FILE


def review_url(host: str, port: int) -> str:
    """The URL ``synthloop review`` serves (IPv6 literals get brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _images(path: Path) -> set[tuple[str, str]]:
    """(file_name, sha256) of each row: a decision counts only for the exact image content it was made on."""
    if not path.is_file():
        return set()
    with path.open(newline="", encoding="utf-8") as fh:
        return {(row["file_name"], row.get("sha256") or "") for row in csv.DictReader(fh) if row.get("file_name")}


def review_status(params: Any) -> dict[str, Any]:
    """Counts of the review checkpoint: total queued items, decided, waiting, the mode and the review URL.

    ``total`` is 0 until the review stage has written ``queue.csv``. Decisions for files no longer in the queue, or
    made on other content than the queued image (regenerated; no sha256), are not counted.
    """
    out_dir = Path(params.paths.review)
    queued = _images(out_dir / QUEUE_FILE)
    decided = {(f, h) for f, h in queued & _images(out_dir / CORRECTIONS_FILE) if h}
    return {
        "total": len(queued),
        "decided": len(decided),
        "waiting": len(queued) - len(decided),
        "mode": params.review.mode,
        "url": review_url(params.review.host, params.review.port),
    }
