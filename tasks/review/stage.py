"""Review stage: the human-correction checkpoint between predict and retrain.

``run()`` turns ``predictions.csv`` into the planned ``queue.csv`` (audit sample, then the budget spent on the most
informative items: ``tasks.review.budget``), applies the automatic decisions of ``review.mode``
(``tasks.review.modes``), checks that a person owes nothing more, then labels the rest past ``review.budget``
by ``review.beyond_budget``. metrics/review.json records the plan, each policy's audited error and agreement
(``tasks.review.estimates``). While items wait, the stage raises ``WaitingForReview``:
``python -m tasks.review`` exits 3 and ``dvc repro`` stops at the checkpoint with a message saying how many wait and
how to review. How decisions are stored and tied to image content: ``tasks.review.store``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.params import Params
from tasks.review.audit import read_audit, seconds_per_item
from tasks.review.estimates import flat_metrics, store_estimates
from tasks.review.modes import (AUTO_REVIEWER, BEYOND_REVIEWER, REFERENCE_REVIEWER, apply_beyond_budget, apply_mode,
                                reopen_within_budget)
from tasks.review.status import review_url
from tasks.review.store import ReviewStore, open_store
from tasks.stage import WaitingForReview
from tasks.tables import CORRECTION_COLUMNS, QUEUE_FILE, intended_agreement

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewOutputs:
    queue: Path
    corrections: Path
    audit: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def review_metrics(store: ReviewStore, params: Params) -> dict[str, Any]:
    """Headline numbers for metrics/review.json and MLflow."""
    progress = store.progress()
    decided = [store.decisions[f] for f in store.items if f in store.decisions]
    reviewers = [row["reviewer"] for row in decided]
    simulated = reviewers.count(REFERENCE_REVIEWER)
    auto = reviewers.count(AUTO_REVIEWER)
    beyond = reviewers.count(BEYOND_REVIEWER)
    # Fidelity as judged: the past-budget policy's labels are nobody's judgement, so they stay out.
    judged = [row for row in decided if row["reviewer"] != BEYOND_REVIEWER]
    agreement = intended_agreement(pd.DataFrame(judged, columns=CORRECTION_COLUMNS))
    est = store_estimates(store, params)
    return {
        **progress,
        "intended_agreement": None if agreement is None else round(agreement, 4),
        "reviewed": progress["decided"],
        "human_decisions": len(reviewers) - simulated - auto - beyond,
        "auto_accepted": auto,
        "beyond_budget_decided": beyond,
        **flat_metrics(est),
        "review_plan": est,
        "simulated_decisions": simulated,
        "simulated": int(simulated > 0),
        "seconds_per_item": seconds_per_item(read_audit(store.audit_path)),
        "orphaned_decisions": len(set(store.decisions) - set(store.items)),
        "stale_decisions": store.stale_decisions,
        "mode": params.review.mode,
    }


def run(params: Params, *, predictions: Path, generated: Path, out_dir: Path) -> ReviewOutputs:
    """Derive the queue, apply the mode's automatic decisions, and stop at the checkpoint while items wait."""
    out_dir = Path(out_dir)
    store = open_store(params, predictions=predictions, generated=generated, out_dir=out_dir)
    reopened = reopen_within_budget(store)
    if reopened:
        log.info("%d past-budget items are within the budget now: they wait for a person again", reopened)
    auto = apply_mode(store, params, Path(generated))
    for reviewer, n in auto.items():
        log.info("%s decided %d items", reviewer, n)
    beyond = apply_beyond_budget(store, params)
    if beyond:
        log.info("budget spent: %d past-budget items labelled by review.beyond_budget=%s", beyond,
                 params.review.beyond_budget)
    metrics = review_metrics(store, params)
    log.info("review: %s", metrics["review_plan"]["budget_line"])
    if metrics["simulated"]:
        log.warning("%d decisions are SIMULATED by the reference labeler, not a person",
                    metrics["simulated_decisions"])
    if metrics["waiting"]:
        raise WaitingForReview(
            f"review checkpoint: {metrics['waiting']} of {metrics['total']} items wait for a person "
            f"(review.mode={params.review.mode}; {metrics['review_plan']['budget_line']}). Review them with `synthloop review` (or `make review`) at "
            f"{review_url(params.review.host, params.review.port)}, then run `dvc repro` again "
            "(or finish in the app / resume the paused flow run).")
    log.info("review complete: %d accepted, %d corrected, %d rejected", metrics["accepted"],
             metrics["corrected"], metrics["rejected"])
    return ReviewOutputs(queue=out_dir / QUEUE_FILE, corrections=store.corrections_path,
                         audit=store.audit_path, metrics=metrics)
