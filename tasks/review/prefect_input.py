"""The review checkpoint's pieces the Prefect flow needs, importable without torch, pandas or mlflow.

- ``ReviewInput``: the typed input of ``pause_flow_run(wait_for_input=ReviewInput.with_initial_data(...))``. The
  Prefect UI shows it as the Resume form (reviewer, done/abort); the review app sends the same fields when the
  last item is decided.
- ``pause_description(status)``: the text shown next to the Resume form.
- ``resume_callback(flow_run_id)``: an ``on_complete`` for ``tasks.review.app.create_app`` that resumes the
  paused flow run through ``prefect.flow_runs.resume_flow_run`` with a ``ReviewInput`` payload.

Prefect's ephemeral API server lives only inside the process that runs the flow: a paused run can then be resumed
only from that process (the flow starts the review app in a thread and passes ``resume_callback``). To resume from
another process or from the Prefect UI, run a persistent server (``prefect server start``, loopback) and point
``PREFECT_API_URL`` at it in both processes. tests/test_review.py pauses a flow under ``prefect_test_harness``
(a real API server in a subprocess) and resumes it from another thread through the review app's ``on_complete``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal
from uuid import UUID

from prefect.input import RunInput

log = logging.getLogger(__name__)


class ReviewInput(RunInput):
    """What a person answers at the checkpoint: who reviewed, and whether the loop goes on (done) or stops."""

    reviewer: str
    action: Literal["done", "abort"] = "done"


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
