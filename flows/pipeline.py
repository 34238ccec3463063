"""The loop as a Prefect flow — wiring only.

Each stage runs as ``dvc repro --single-item <stage>``: DVC decides whether the stage is stale, runs the same
``python -m tasks.<stage>`` command ``dvc repro`` would, and records dvc.lock, so after a Prefect run ``dvc repro``
has nothing to do and stage logic exists once (tasks/). A stage DVC finds up to date ends in a ``Skipped`` state,
not as work done. The review checkpoint pauses the flow run (``pause_flow_run(wait_for_input=ReviewInput)``)
until a person finishes in the review app (which resumes it) or submits the Resume form in the Prefect UI.

No torch, pandas or mlflow is imported here; tracking goes through ``tasks.tracking``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.states import Completed

from flows.gpu import ensure_gpu_limit, queues_for_gpu, stage_placement, visible_devices
from flows.pools import run_on_pool
from tasks.intake.walk import dvc_preflight
from tasks.overrides import record_resolved, run_overrides
from tasks.params import STAGES, load_params
from tasks.progress import PROGRESS_LINE
from tasks.stage import EXIT_WAITING

log = logging.getLogger(__name__)

def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], text=True, capture_output=True, check=check)


def stage_is_current(stage: str) -> bool:
    """True when DVC would skip ``stage``: its deps, params, outs and command match dvc.lock."""
    out = _dvc("status", "--json", stage).stdout.strip() or "{}"  # without -d: this stage only
    return json.loads(out) == {}


#: Where stages run (``synthloop_loop(placement=...)``): a plain ``str`` parameter checked against these, because
#: with a ``Literal`` annotation a *deployed* run failed Prefect's parameter validation ("... is not fully defined").
PLACEMENTS = ("local", "pools")

#: Stages whose progress also becomes a Prefect progress artifact (the long ones a person waits for).
PROGRESS_ARTIFACT_STAGES = ("dreambooth", "generate", "review")


class _StageProgress:
    """Forwards a stage process's progress lines (tasks/progress.py) to the Prefect log and, for the stages in
    ``PROGRESS_ARTIFACT_STAGES``, to a progress artifact the UI shows on the flow run."""

    def __init__(self, stage: str):
        self.stage, self.logger, self.artifact = stage, get_run_logger(), None
        if stage in PROGRESS_ARTIFACT_STAGES:
            self.artifact = create_progress_artifact(0.0, key=f"{stage}-progress", description=f"{stage}: starting")

    def __call__(self, line: str) -> None:
        match = PROGRESS_LINE.search(line)
        if match is None:
            return
        text = line[match.start():].strip()
        self.logger.info("%s", text)
        if self.artifact is not None:
            update_progress_artifact(self.artifact, float(match["pct"]), description=text)


def _run_streaming(cmd: list[str], env: dict[str, str] | None = None,
                   on_line: Callable[[str], None] | None = None) -> tuple[int, str]:
    """Run ``cmd`` (with ``env`` added to this process's environment), echoing its output live (progress lines,
    logs), passing each line to ``on_line`` and keeping a copy to inspect."""
    lines: list[str] = []
    with subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1,
                          env={**os.environ, **(env or {})}) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            lines.append(line)
            if on_line is not None:
                on_line(line)
    return proc.returncode, "".join(lines)


#: What ``dvc repro`` prints for a stage whose deps, params, outs and command match dvc.lock (nothing runs).
DVC_UNCHANGED = "Stage '{stage}' didn't change, skipping"


def _skipped(stage: str) -> Completed:
    get_run_logger().info("stage %s is up to date (dvc.lock matches): skipped", stage)
    return Completed(name="Skipped", message=f"{stage}: up to date in dvc.lock, not re-run", data="skipped")


# No automatic retries: most stage failures are deterministic (bad params or data) and would fail again after
# minutes of work; a re-run resumes where the stage supports it (generate, dreambooth checkpoints).
@task(name="stage", task_run_name="{stage}", retries=0)
def run_stage(stage: str, devices: list[str] | None = None):
    """Reproduce one DVC stage; a stage that was already current ends as Skipped (cached).

    A GPU stage first waits for a ``gpu`` slot and one of ``devices`` (flows/gpu.py); a current stage never queues.
    """
    logger = get_run_logger()
    # Only a stage that would queue for a GPU asks `dvc status` first (a current stage must never wait for a
    # device); any other stage goes straight to `dvc repro`, which skips a current stage itself and says so —
    # one DVC process per stage instead of two (about 1.4 s a stage on a 2-core machine).
    if queues_for_gpu(stage, devices or []) and stage_is_current(stage):
        return _skipped(stage)
    with stage_placement(stage, devices or []) as env:
        logger.info("running stage %s%s", stage,
                    f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if env.get("CUDA_VISIBLE_DEVICES") else "")
        returncode, output = _run_streaming([sys.executable, "-m", "dvc", "repro", "--single-item", stage], env,
                                            on_line=_StageProgress(stage))
    if returncode == 0 and DVC_UNCHANGED.format(stage=stage) in output:
        return _skipped(stage)
    if returncode == 0:
        if "is cached - skipping run" in output:
            # DVC's run cache had this exact stage (same code, params, data): outputs restored, nothing computed.
            return Completed(name="Cached", message=f"{stage}: restored from DVC's run cache", data="cached")
        return "ran"
    # dvc repro reports the command's own exit status in its error line ("... exited with 3").
    if stage == "review" and f"exited with {EXIT_WAITING}" in output:
        # Not a failure: the stage stopped on purpose at the checkpoint; the flow pauses for the person.
        return Completed(name="WaitingForReview", message="the review checkpoint waits for a person",
                         data="waiting")
    raise RuntimeError(
        f"stage {stage!r} failed (exit {returncode}); see the log above for the cause. "
        f"Fix it, then resume with `synthloop run` or `dvc repro` — finished stages are not re-run."
    )


def _pause_for_review(params_path: str) -> None:
    """Pause the flow run at the checkpoint while the review app runs in this process.

    Deciding the last waiting item in the app resumes the run (``resume_callback``); so does the Resume form in
    the Prefect UI when a persistent server is used. ``abort`` stops the loop.
    """
    from prefect.flow_runs import pause_flow_run
    from prefect.runtime import flow_run

    from tasks.review.app import BackgroundServer
    from tasks.review.prefect_input import ReviewInput, pause_description, resume_callback
    from tasks.review.status import review_status

    logger = get_run_logger()
    params = load_params(params_path)
    with BackgroundServer(params, on_complete=resume_callback(flow_run.id)) as server:
        status = {**review_status(params), "url": server.url}
        if status["waiting"] == 0:
            # Someone finished (e.g. in a separate `synthloop review`) before the app started: nothing would ever
            # resume a pause, so go straight on.
            logger.info("review checkpoint: nothing waits any more; continuing")
            return
        logger.warning("review checkpoint: %d of %d generated images wait for a person. Review them at %s — "
                       "the flow resumes when the last one is decided (or use Resume in the Prefect UI).",
                       status["waiting"], status["total"], server.url)
        create_progress_artifact(100.0 * status["decided"] / max(status["total"], 1), key="review-checkpoint",
                                 description=f"review: {status['decided']} of {status['total']} decided at the pause")
        answer = pause_flow_run(
            wait_for_input=ReviewInput.with_initial_data(description=pause_description(status), reviewer=""),
            timeout=params.review.pause_timeout_s, key="review-checkpoint")
    if answer is None or answer.action == "abort":
        raise RuntimeError("the reviewer aborted the loop at the review checkpoint; resume with `synthloop run`")
    logger.info("review checkpoint passed (reviewer: %s)", answer.reviewer or "unknown")


def result_markdown(params) -> str | None:
    """The end-of-run summary: the report's answer line, where the review decisions came from, links to the
    report. None before evaluate has written report.md."""
    from tasks.review.status import review_status

    report = Path(params.paths.reports) / "report.md"
    if not report.is_file():
        return None
    answer = next((line for line in report.read_text(encoding="utf-8").splitlines() if line.startswith("Answer")),
                  "(the report has no answer line)")
    review = review_status(params)
    html = (Path(params.paths.reports) / "report.html").resolve()
    return "\n".join([
        "# synthloop: did synthetic data help?", "", answer, "",
        f"**Review source:** `review.mode: {review['mode']}` — {review['decided']} of {review['total']} generated "
        f"images decided ({review['waiting']} waiting).", "",
        f"**Report:** [report.html]({html.as_uri()}) · `{report}`", ""])


def _report_artifact(params) -> None:
    text = result_markdown(params)
    if text is not None:
        create_markdown_artifact(text, key="synthloop-result",
                                 description="the answer, the review source and the report of this loop")


@flow(name="synthloop", log_prints=True)
def synthloop_loop(set_params: list[str] | None = None, stages: list[str] | None = None,
                   placement: str = "local") -> dict[str, str]:
    """Run the loop in DAG order. ``set_params``: ``section.key=value`` overrides for this run only, e.g.
    ``["review.mode=reference"]`` for unattended scheduled runs: they reach the stages through ``SYNTHLOOP_SET`` and
    params.resolved.yaml (tasks/overrides.py); params.yaml is never rewritten.
    ``placement``: ``local`` runs every stage here (GPU stages queue for a slot and a device, flows/gpu.py);
    ``pools`` runs each stage but review on its work pool's worker (flows/pools.py, prefect.yaml)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    with run_overrides(set_params):
        return _loop(stages, placement)


def _loop(stages: list[str] | None, placement: str) -> dict[str, str]:
    """The flow run's body, with its overrides exported."""
    from prefect.runtime import flow_run

    from tasks.tracking import dvc_lock_tags, loop_run

    params = record_resolved()
    selected = [s for s in STAGES if not stages or s in stages]
    if "ingest" in selected:
        dvc_preflight(params.paths.raw)  # before any `dvc status`: DVC hangs on a FIFO in ingest's input folder
    devices = visible_devices()
    if devices:
        slots = ensure_gpu_limit(len(devices))
        get_run_logger().info("GPU stages queue for %d slot(s) of the %r limit over device(s) %s", slots, "gpu",
                              ",".join(devices))
    else:
        get_run_logger().warning("no CUDA device visible: every stage runs on the CPU")
    results: dict[str, str] = {}
    with loop_run(params, tags={"prefect.flow_run_id": flow_run.id or "", "synthloop.entry": "prefect"}) as run:
        for stage in selected:
            # return_state: a stage that returned a named state (Skipped, WaitingForReview) yields its data.
            if placement == "pools" and stage != "review":
                results[stage] = run_on_pool(stage)
                continue
            results[stage] = run_stage(stage, devices, return_state=True).result()
            if results[stage] == "waiting":
                _pause_for_review("params.yaml")
                after = run_stage.with_options(task_run_name=f"{stage}-after-review")
                results[stage] = after(stage, devices, return_state=True).result()
                if results[stage] == "waiting":
                    raise RuntimeError("the review was resumed but items still wait; run `synthloop review`")
        run.set_tags(dvc_lock_tags())  # what exactly this loop produced, by content hash
        _report_artifact(params)
    return results


def main() -> dict[str, str]:
    """Entry point used by ``synthloop run`` / ``make run``."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    return synthloop_loop()


if __name__ == "__main__":
    main()
