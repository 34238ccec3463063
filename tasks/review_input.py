"""The review checkpoint's pieces the Prefect flow needs, importable without torch, pandas or mlflow.

- ``ReviewInput``: the typed input of ``pause_flow_run(wait_for_input=ReviewInput.with_initial_data(...))``. The
  Prefect UI shows it as the Resume form (reviewer, done/abort); the review app sends the same fields when the
  last item is decided.
- ``review_status(params)``: counts (total, decided, waiting) and the review URL, read from ``queue.csv`` and
  ``corrections.csv`` with the csv module, for the pause description and the flow's log.
- ``pause_description(status)``: the text shown next to the Resume form.
- ``resume_callback(flow_run_id)``: an ``on_complete`` for ``tasks.review_app.create_app`` that resumes the
  paused flow run through ``prefect.flow_runs.resume_flow_run`` with a ``ReviewInput`` payload.

Prefect's ephemeral API server lives only inside the process that runs the flow: a paused run can then be resumed
only from that process (the flow starts the review app in a thread and passes ``resume_callback``). To resume from
another process or from the Prefect UI, run a persistent server (``prefect server start``, loopback) and point
``PREFECT_API_URL`` at it in both processes. tests/test_review.py pauses a flow under ``prefect_test_harness``
(a real API server in a subprocess) and resumes it from another thread through the review app's ``on_complete``.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from prefect.input import RunInput

log = logging.getLogger(__name__)

QUEUE_FILE = "queue.csv"
CORRECTIONS_FILE = "corrections.csv"
AUDIT_FILE = "audit.jsonl"


class ReviewInput(RunInput):
    """What a person answers at the checkpoint: who reviewed, and whether the loop goes on (done) or stops."""

    reviewer: str
    action: Literal["done", "abort"] = "done"


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


def pause_description(status: dict[str, Any]) -> str:
    """Markdown shown with the Resume form in the Prefect UI."""
    return (
        f"**Review checkpoint** — {status['waiting']} of {status['total']} items wait for a person "
        f"(mode `{status['mode']}`).\n\nReview them at {status['url']} (`synthloop review` / `make review`); "
        "finishing the last item resumes this run. Or resume here: `done` continues to retrain, `abort` stops."
    )


def resume_callback(flow_run_id: UUID | str, *, not_paused_wait_s: float = 60.0) -> Callable[[dict[str, Any]], None]:
    """An ``on_complete`` for the review app: resume the paused flow run with ``ReviewInput`` data.

    The flow starts the app just before it pauses, so a fast reviewer can finish while the run is not paused yet:
    the resume is retried for up to ``not_paused_wait_s`` seconds rather than lost (the run would wait forever).
    """

    def _resume(summary: dict[str, Any]) -> None:
        from prefect.exceptions import NotPausedError
        from prefect.flow_runs import resume_flow_run

        run_input = ReviewInput(reviewer=summary.get("reviewer") or "unknown", action="done").model_dump()
        log.info("review complete; resuming flow run %s", flow_run_id)
        deadline = time.monotonic() + not_paused_wait_s
        while True:
            try:
                resume_flow_run(UUID(str(flow_run_id)), run_input=run_input)
                return
            except NotPausedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    return _resume
