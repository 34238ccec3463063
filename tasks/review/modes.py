"""Automatic decisions of ``review.mode``: who (if anyone) decides items before a person does.

One table, ``MODES``: a mode names its automatic reviewer, the audit action and note it records, and how it picks
labels for the waiting items. ``manual`` has no automatic reviewer: a person decides every item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.params import Params
from tasks.review.queue import confident_items
from tasks.review.store import ReviewStore
from tasks.stage import StageError

AUTO_REVIEWER = "auto:accept-confident"
REFERENCE_REVIEWER = "reference-labeler (simulated)"


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
    return list(zip(waiting, label_with_reference(params, generated, waiting)))


#: review.mode → its automatic reviewer; ``manual`` has none (a person decides every item).
MODES: dict[str, Mode | None] = {
    "manual": None,
    "accept-confident": Mode(AUTO_REVIEWER, "auto-accept",
                             lambda p: f"confidence >= {p.review.confidence_threshold} and agrees with intended",
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
    store.decide_many([(f, label, store.versions.get(f, 0)) for f, label in picks], reviewer=mode.reviewer,
                      source="stage", action=mode.action, note=mode.note(params))
    return {mode.reviewer: len(picks)}


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
