"""Automatic decisions: who (if anyone) decides items before a person does, and after the budget is spent.

One table, ``MODES``: a mode names its automatic reviewer, the audit action and note it records, and how it picks
labels for the waiting items. ``manual`` has no automatic reviewer: a person decides every item. accept-confident
never decides an audit-sample item; the simulated reference reviewer decides only what a person would (the items
within ``review.budget``).

``apply_beyond_budget``: once every item a person owes is decided, the undecided rest gets ``review.beyond_budget``
(reviewer ``auto:beyond-budget``; a dropped item is recorded as ``reject`` with the note ``dropped: beyond
budget``, so retrain leaves it out). Raising the budget later sends those automatic decisions of items now within
it back to the person (``reopen_within_budget``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.params import Params
from tasks.review.budget import policy_label
from tasks.review.queue import confident_items
from tasks.review.store import ReviewStore
from tasks.stage import StageError
from tasks.tables import AUTO_PREFIX, REFERENCE_REVIEWER, REJECT

AUTO_REVIEWER = f"{AUTO_PREFIX}accept-confident"
BEYOND_REVIEWER = f"{AUTO_PREFIX}beyond-budget"


@dataclass(frozen=True)
class Mode:
    """An automatic reviewer: who it is, what the audit records, and the labels it gives the waiting items."""

    reviewer: str
    action: str
    note: Callable[[Params], str]
    pick: Callable[[ReviewStore, Params, Path, list[str]], list[tuple[str, str]]]  # (file_name, label)
    simulated: bool = False


def _pick_confident(store: ReviewStore, params: Params, generated: Path, waiting: list[str]) -> list[tuple[str, str]]:
    queue = pd.DataFrame([store.items[f] for f in waiting])
    return [(f, store.items[f]["pred_label"]) for f in confident_items(queue, params.review.confidence_threshold)]


def _pick_reference(store: ReviewStore, params: Params, generated: Path, waiting: list[str]) -> list[tuple[str, str]]:
    waiting = [f for f in waiting if store.required(f)]  # simulate a person: the budget binds it too
    return list(zip(waiting, label_with_reference(params, generated, waiting)))


#: review.mode → its automatic reviewer; ``manual`` has none (a person decides every item).
MODES: dict[str, Mode | None] = {
    "manual": None,
    "accept-confident": Mode(AUTO_REVIEWER, "auto-accept",
                             lambda p: f"calibrated confidence >= {p.review.confidence_threshold} and agrees with "
                                       "intended",
                             _pick_confident),
    "reference": Mode(REFERENCE_REVIEWER, "reference", lambda p: "simulated review by the reference labeler",
                      _pick_reference, simulated=True),
}


def apply_mode(store: ReviewStore, params: Params, generated: Path) -> dict[str, int]:
    """Apply the automatic decisions of ``review.mode`` to items nobody decided yet; return counts per reviewer."""
    mode = MODES[params.review.mode]
    waiting = store.waiting()
    if mode is None or not waiting:
        return {}
    picks = mode.pick(store, params, generated, waiting)
    if not picks:
        return {}
    store.decide_many([(f, label, store.versions.get(f, 0)) for f, label in picks], reviewer=mode.reviewer,
                      source="stage", action=mode.action, note=mode.note(params))
    return {mode.reviewer: len(picks)}


def reopen_within_budget(store: ReviewStore) -> int:
    """Withdraw past-budget automatic decisions of items that are now within the budget (it was raised)."""
    back = [f for f in store.items if store.required(f)
            and store.decisions.get(f, {}).get("reviewer") == BEYOND_REVIEWER]
    return store.withdraw(back, reviewer=BEYOND_REVIEWER, action="reopen",
                          note="within the budget now: a person decides it")


def apply_beyond_budget(store: ReviewStore, params: Params) -> int:
    """Label the undecided past-budget items by ``review.beyond_budget`` once a person owes nothing more."""
    if store.required_waiting():
        return 0
    rest = store.waiting()
    policy, threshold = params.review.beyond_budget, params.review.confidence_threshold
    picks = [(f, policy_label(store.items[f], policy, threshold)) for f in rest]
    kept = [(f, label, store.versions.get(f, 0)) for f, label in picks if label is not None]
    dropped = [(f, REJECT, store.versions.get(f, 0)) for f, label in picks if label is None]
    note = f"beyond budget: {policy}"
    if kept:
        store.decide_many(kept, reviewer=BEYOND_REVIEWER, source="stage", action="beyond-budget", note=note)
    if dropped:
        store.decide_many(dropped, reviewer=BEYOND_REVIEWER, source="stage", action="beyond-budget",
                          note=f"dropped: {note}")
    return len(rest)


def label_with_reference(params: Params, generated: Path, file_names: Sequence[str],
                         batch_size: int = 256) -> list[str]:
    """Labels (class or ``reject``) for ``file_names`` from the reference labeler of the phantom data."""
    from PIL import Image
    from tasks.progress import progress

    from tasks.review.reference import reference_labels

    labels: list[str] = []
    for start in progress(range(0, len(file_names), batch_size), desc="review reference labeler",
                          unit="batch"):
        images = []
        for name in file_names[start:start + batch_size]:
            with Image.open(generated / name) as im:
                images.append(im.copy())
        labels += list(reference_labels(images, params))
    if len(labels) != len(file_names):
        raise StageError(f"reference labeler returned {len(labels)} labels for {len(file_names)} images")
    return labels
