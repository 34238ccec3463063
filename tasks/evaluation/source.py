"""Who reviewed: the one sentence (``review_source``) that the report's first screen and metrics carry, so a
report built on simulated or automatic review can never be taken for a human one.

Counted from the decisions themselves (corrections.csv ``reviewer``, whose naming lives in ``tasks/tables.py``),
not from ``review.mode`` alone: a manual review may have been topped up automatically. ``auto:...`` for rules,
``... (simulated)`` for the reference labeler — and for any scripted reviewer a user plugs in for a dry run (name
its Label Studio annotator ``... (simulated)``): the sentence names the simulated reviewers, so a script is never
reported as the reference labeler, nor as a person.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tasks.tables import REFERENCE_REVIEWER, SIMULATED_SUFFIX, reviewer_kind

SIMULATED_TEXT = "simulated — reference labeler; a human reviewer's result will differ"


def _simulated_text(names: list[str]) -> str:
    """The sentence for simulated decisions: the reference labeler's, or naming the scripted reviewers."""
    others = sorted({n for n in names if n != REFERENCE_REVIEWER})
    if not others:
        return SIMULATED_TEXT
    who = ", ".join(n.removesuffix(SIMULATED_SUFFIX).strip() for n in others)
    also = " and the reference labeler" if REFERENCE_REVIEWER in names else ""
    return f"simulated — scripted reviewer {who}{also}, not a person; a human reviewer's result will differ"


def review_source(corrections: pd.DataFrame, mode: str, threshold: float) -> dict[str, Any]:
    """``{"text", "kind", "n_decisions", "n_people", "n_simulated", "n_automatic", "n_human"}`` for the review.

    kind ``simulated`` whenever any decision is simulated (the sentence says so first), else ``human`` when a
    person decided anything ("N decisions by K people"), else ``automatic`` ("accept-confident at threshold t").
    """
    reviewers = corrections["reviewer"].fillna("").astype(str).str.strip()
    kinds = reviewers.map(reviewer_kind)
    n = {k: int((kinds == k).sum()) for k in ("simulated", "automatic", "human")}
    people = int(reviewers[kinds == "human"].nunique())
    total = len(corrections)
    if n["simulated"] or (mode == "reference" and not n["human"]):
        kind, text = "simulated", _simulated_text(reviewers[kinds == "simulated"].tolist())
        if n["human"]:
            text += f" ({n['simulated']} of {total} decisions simulated, {n['human']} by {people} people)"
    elif n["human"]:
        kind = "human"
        text = f"{n['human']} decisions by {people} {'person' if people == 1 else 'people'}"
        if n["automatic"]:
            text += f" (plus {n['automatic']} automatic)"
    else:
        kind, text = "automatic", f"accept-confident at threshold {threshold:g} (no human)"
    return {"text": text, "kind": kind, "mode": mode, "n_decisions": total, "n_people": people,
            "n_simulated": n["simulated"], "n_automatic": n["automatic"], "n_human": n["human"]}
