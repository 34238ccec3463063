"""Review stage: the human-correction checkpoint between predict and retrain.

``run()`` turns ``predictions.csv`` into ``queue.csv`` (uncertainty order: disagreement with the intended class
first, then low margin — predict's ``review_rank``), applies the automatic decisions of ``review.mode``
(``tasks.review.modes``), and checks completeness. While items wait, the stage raises ``WaitingForReview``:
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
from tasks.review.modes import AUTO_REVIEWER, REFERENCE_REVIEWER, apply_mode
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
    agreement = intended_agreement(pd.DataFrame(decided, columns=CORRECTION_COLUMNS))
    return {
        **progress,
        "intended_agreement": None if agreement is None else round(agreement, 4),
        "reviewed": progress["decided"],
        "human_decisions": len(reviewers) - simulated - auto,
        "auto_accepted": auto,
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
    auto = apply_mode(store, params, Path(generated))
    for reviewer, n in auto.items():
        log.info("%s decided %d items", reviewer, n)
    metrics = review_metrics(store, params)
    if metrics["simulated"]:
        log.warning("%d decisions are SIMULATED by the reference labeler, not a person",
                    metrics["simulated_decisions"])
    if metrics["waiting"]:
        raise WaitingForReview(
            f"review checkpoint: {metrics['waiting']} of {metrics['total']} items wait for a person "
            f"(review.mode={params.review.mode}). Review them with `synthloop review` (or `make review`) at "
            f"{review_url(params.review.host, params.review.port)}, then run `dvc repro` again "
            "(or finish in the app / resume the paused flow run).")
    log.info("review complete: %d accepted, %d corrected, %d rejected", metrics["accepted"],
             metrics["corrected"], metrics["rejected"])
    return ReviewOutputs(queue=out_dir / QUEUE_FILE, corrections=store.corrections_path,
                         audit=store.audit_path, metrics=metrics)
