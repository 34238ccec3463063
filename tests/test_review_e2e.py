"""Issue 6's "done when", through the real loop: `synthloop run` pauses at the review checkpoint, a person reviews
in headless Chromium with the keyboard, the flow resumes by itself and retrains on exactly their decisions.

The flow runs as a subprocess on Prefect's ephemeral API (it lives in that process, and so does the review app that
resumes it). The DVC-only stop → review → continue path is tests/test_review.py's stub-stage test. Two fast tests
pin the pause path's edges: a resume that arrives before the run is paused, and a review stage that fails outright.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import browser_page, chromium  # noqa: F401  (fixtures)
from project import copy_project, dvc, env_for
from review_fixtures import decisions

from conftest import ON_COMPLETED_LOOP, free_port
from tasks.review.audit import read_audit

REVIEWER = "Dr. Ann O'Neil <vet>"  # stored as typed, shown as text
CLASSES = ["small", "big"]  # the demo's classes (dataset.classes null): hotkey 1 = small, 2 = big


def _log_tail(log: Path, n: int = 6000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def _wait_for_review_app(proc: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> dict:
    """Poll the app's status until it answers (the flow reached the checkpoint); fail if the flow ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the flow ended (exit {proc.returncode}) before the review checkpoint:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}api/status", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the review app did not answer at {url} within {timeout:.0f} s:\n{_log_tail(log)}")


def _review_with_the_keyboard(page, url: str, total: int) -> dict[str, tuple[str, str]]:
    """Decide every item as a person would: accept (Enter), correct (class hotkey), reject (X), in turn.

    The first item is rejected, undone (U) and then decided for real, so the audit holds more than the outcome.
    Returns the intended outcome per file: (decision, final_label).
    """
    from playwright.sync_api import expect

    page.goto(url)
    progress = page.locator("#progress")
    expect(progress).to_have_text(f"0/{total} done · 0 corrected · 0 rejected")
    page.fill("#reviewer-input", REVIEWER)
    page.click("#reviewer-save")
    expect(page.locator("#reviewer-name")).to_have_text(f"reviewing as {REVIEWER}")

    first = page.locator("#file-name").inner_text()
    page.keyboard.press("x")
    expect(progress).to_have_text(f"1/{total} done · 0 corrected · 1 rejected")
    page.keyboard.press("u")
    expect(progress).to_have_text(f"0/{total} done · 0 corrected · 0 rejected")
    expect(page.locator("#file-name")).to_have_text(first)

    expected: dict[str, tuple[str, str]] = {}
    counts = {"correct": 0, "reject": 0}
    for i in range(total):
        expect(page.locator("#status")).to_have_text("waiting")
        name = page.locator("#file-name").inner_text()
        predicted = page.locator("#predicted").inner_text()
        assert name not in expected, f"the page showed {name} twice"
        if i % 3 == 0:
            page.keyboard.press("Enter")
            expected[name] = ("accept", predicted)
        elif i % 3 == 1:
            other = next(c for c in CLASSES if c != predicted)
            page.keyboard.press(str(CLASSES.index(other) + 1))
            expected[name] = ("correct", other)
        else:
            page.keyboard.press("x")
            expected[name] = ("reject", "")
        decision = expected[name][0]
        counts[decision] = counts.get(decision, 0) + 1
        expect(progress).to_have_text(
            f"{i + 1}/{total} done · {counts['correct']} corrected · {counts['reject']} rejected")
    return expected


@pytest.mark.slow
@pytest.mark.browser
@ON_COMPLETED_LOOP
def test_person_reviews_in_the_browser_and_the_paused_flow_resumes_to_retrain(completed_loop, tmp_path: Path,
                                                                              browser_page):
    port = free_port()
    # The session's finished loop, switched to manual review with the simulated decisions removed: the flow
    # re-runs generate (fewer images) and predict, then stops at the checkpoint for a person.
    project = copy_project(completed_loop[0], tmp_path / "proj", {
        "review": {"mode": "manual", "port": port}, "generate": {"num_images": 6}}, drop=("data/review",))
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "flow.log"
    env = {**env_for(project), "PREFECT_HOME": str(tmp_path / "prefect-home"), "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)  # the ephemeral API, inside the flow's process
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run"], cwd=project, env=env, text=True,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status = _wait_for_review_app(proc, url, log)
        assert status["decided"] == 0 and status["total"] == status["waiting"] >= 3, status
        expected = _review_with_the_keyboard(browser_page, url, status["total"])
        try:
            rc = proc.wait(timeout=240)  # no one touches the Prefect UI: the app's last decision resumes the run
        except subprocess.TimeoutExpired:
            pytest.fail(f"the flow did not resume and finish after the review:\n{_log_tail(log)}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text(errors="replace")
    assert rc == 0, output[-8000:]
    assert f"Review them at {url}" in output
    assert f"review checkpoint passed (reviewer: {REVIEWER})" in output  # the ReviewInput the app sent

    review_dir = project / "data" / "review"
    corrections = decisions(review_dir / "corrections.csv").set_index("file_name")
    got = {f: (row["decision"], row["final_label"] or "") for f, row in corrections.iterrows()}
    assert got == expected
    assert set(corrections["reviewer"]) == {REVIEWER}

    audit = read_audit(review_dir / "audit.jsonl")
    assert all(e["reviewer"] == REVIEWER and e["outcome"] == "saved" for e in audit)
    assert [e["action"] for e in audit[:2]] == ["decide", "undo"]  # the reject that was taken back
    last = {e["file_name"]: e["new"] for e in audit}
    assert {f: (n["decision"], n["final_label"] or "") for f, n in last.items()} == expected

    review_metrics = json.loads((project / "metrics" / "review.json").read_text())
    kept = [label for decision, label in expected.values() if decision != "reject"]
    assert (review_metrics["accepted"], review_metrics["corrected"], review_metrics["rejected"]) == (
        sum(d == "accept" for d, _ in expected.values()), sum(d == "correct" for d, _ in expected.values()),
        sum(d == "reject" for d, _ in expected.values()))
    assert review_metrics["human_decisions"] == len(expected) and review_metrics["simulated"] == 0

    retrain = json.loads((project / "metrics" / "retrain.json").read_text())
    assert retrain["n_synthetic_reviewed_usable"] == len(kept)
    assert retrain["n_synthetic_used"] == len(kept) < 4 * retrain["n_real"]  # retrain.synthetic_ratio cap not hit
    assert {c: retrain[f"n_synthetic_{c}"] for c in CLASSES} == {c: kept.count(c) for c in CLASSES}
    assert (project / "metrics" / "evaluate.json").exists()
    assert json.loads(dvc(project, "status", "--json").stdout or "{}") == {}, "the loop leaves dvc clean"


def test_resume_that_arrives_before_the_run_is_paused_is_retried(monkeypatch: pytest.MonkeyPatch):
    """The app starts just before pause_flow_run: a reviewer who finishes first must not lose the resume."""
    import prefect.flow_runs
    from prefect.exceptions import NotPausedError

    from tasks.review.prefect_input import resume_callback

    calls: list[dict] = []

    def resume(flow_run_id, run_input=None):
        calls.append(run_input)
        if len(calls) < 3:
            raise NotPausedError("Cannot resume a run that isn't paused!")

    monkeypatch.setattr(prefect.flow_runs, "resume_flow_run", resume)
    resume_callback("00000000-0000-0000-0000-000000000001")({"reviewer": "ann"})
    assert calls == [{"reviewer": "ann", "action": "done"}] * 3

    calls.clear()
    with pytest.raises(NotPausedError):  # a run that never pauses: give up after the wait, loudly
        resume_callback("00000000-0000-0000-0000-000000000001", not_paused_wait_s=0.0)({"reviewer": "ann"})
    assert len(calls) >= 1


def test_review_stage_that_fails_outright_stops_the_flow_with_its_exit_status(monkeypatch: pytest.MonkeyPatch):
    """Exit 3 pauses for a person; any other failure is an error that names the stage and its exit status."""
    import logging

    from flows import pipeline

    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(pipeline, "stage_is_current", lambda stage: False)
    failed = "ERROR: failed to reproduce 'review': {} exited with {}"
    monkeypatch.setattr(pipeline, "create_progress_artifact", lambda *a, **k: None)  # no flow run to attach to
    monkeypatch.setattr(pipeline, "_run_streaming",
                        lambda cmd, env=None, on_line=None: (1, failed.format("python -m tasks.review", 1)))
    with pytest.raises(RuntimeError, match=r"stage 'review' failed \(exit 1\)"):
        pipeline.run_stage.fn("review")
    monkeypatch.setattr(pipeline, "_run_streaming",
                        lambda cmd, env=None, on_line=None: (1, failed.format("python -m tasks.review", 3)))
    assert pipeline.run_stage.fn("review").name == "WaitingForReview"
