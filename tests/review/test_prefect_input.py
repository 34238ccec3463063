"""The Prefect checkpoint: a paused flow run resumed by the review app with ReviewInput."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest
from review_fixtures import ITEMS, stage_kwargs

from tasks.review.prefect_input import pause_description
from tasks.review.stage import run as run_review
from tasks.review.status import review_status
from tasks.stage import WaitingForReview


@pytest.mark.slow
def test_prefect_pause_is_resumed_by_the_review_app_with_input(manual):
    """The flow pauses with ReviewInput; deciding the last item in the app resumes it (persistent API server)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import pause_flow_run
    from prefect.runtime import flow_run as current_run
    from prefect.testing.utilities import prefect_test_harness
    from starlette.testclient import TestClient

    from tasks.review.app import create_app
    from tasks.review.prefect_input import ReviewInput, resume_callback

    box: dict = {}

    @flow
    def checkpoint():
        box["id"] = current_run.id
        status = review_status(manual)
        answer = pause_flow_run(wait_for_input=ReviewInput.with_initial_data(
            description=pause_description(status), reviewer=""), timeout=90, poll_interval=1)
        return answer.reviewer, answer.action

    def review_in_app():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "id" in box:
                with get_client(sync_client=True) as client:
                    if client.read_flow_run(box["id"]).state.is_paused():
                        break
            time.sleep(0.5)
        app = create_app(manual, on_complete=resume_callback(box["id"]))
        client = TestClient(app, base_url="http://127.0.0.1:8765")
        token = client.get("/").text.split('name="csrf-token" content="')[1].split('"')[0]
        for item in client.get("/api/items").json()["items"]:
            r = client.post("/api/decide", headers={"X-CSRF-Token": token},
                            json={"file_name": item["file_name"], "label": item["pred_label"], "version": 0,
                                  "reviewer": "ann"})
            box.setdefault("codes", []).append(r.status_code)

    with pytest.raises(WaitingForReview):  # the stage stops at the checkpoint first, as in the flow
        run_review(manual, **stage_kwargs(manual))
    with prefect_test_harness(server_startup_timeout=60):
        ctx = contextvars.copy_context()  # the harness's API URL lives in a context variable
        worker = threading.Thread(target=ctx.run, args=(review_in_app,), daemon=True)
        worker.start()
        result = checkpoint()
        worker.join(timeout=30)
    assert box["codes"] == [200] * len(ITEMS)
    assert result == ("ann", "done")
