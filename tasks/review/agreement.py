"""Statistics of the review checkpoint: Wilson intervals, inter-rater agreement, and who read what.

- ``wilson_interval``: the CI of a proportion that behaves at 0 and at small n (the audit sample's error rates);
- ``cohen_kappa`` (two reviewers) and ``fleiss_kappa`` (more: items may have different numbers of reads);
- ``first_reads``: each person's *first* saved decision per item from the audit log — the independent read,
  before they could see a colleague's label; later changes of their own are corrections, not reads;
- ``agreement_summary``: kappa over the doubly-read items, and per reviewer the agreement with the final
  (adjudicated) label on audit-sample items someone else also read.

**Adjudication rule** (README, review section): corrections.csv holds the latest decision of an item. An overlap
item is done once two different people have read it and their first reads agree; if they differ it is *disputed*
and waits until a third person (the adjudicator) decides it, whose decision is final. Pure; no pandas, no disk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

#: Reviewers that are not people: their decisions are neither reads nor subject to agreement.
AUTOMATIC_PREFIXES = ("auto:", "reference-labeler")


def is_person(reviewer: str) -> bool:
    """True for a reviewer name a person typed (not an automatic or simulated reviewer)."""
    return bool(reviewer) and not str(reviewer).startswith(AUTOMATIC_PREFIXES)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``successes / n``; (0, 1) when n is 0 (nothing known)."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Exact bounds at the ends (the formula gives them up to rounding).
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when undefined (no items, or chance = 1)."""
    if len(a) != len(b):
        raise ValueError(f"two raters need the same items: {len(a)} vs {len(b)} labels")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    labels = set(a) | set(b)
    chance = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in labels)
    return None if chance >= 1 else (observed - chance) / (1 - chance)


def fleiss_kappa(ratings: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa over items each read by ≥ 2 raters (the per-item form, so reads per item may differ).

    P_i = Σ_j n_ij (n_ij − 1) / (n_i (n_i − 1)); P̄ = mean P_i; p_j = Σ_i n_ij / Σ_i n_i; κ = (P̄ − P_e)/(1 − P_e).
    """
    items = [list(r) for r in ratings]
    if any(len(r) < 2 for r in items):
        raise ValueError("every item needs at least two ratings for Fleiss' kappa")
    if not items:
        return None
    labels = sorted({x for r in items for x in r})
    total = sum(len(r) for r in items)
    p_bar = sum(sum(r.count(c) * (r.count(c) - 1) for c in labels) / (len(r) * (len(r) - 1)) for r in items)
    p_bar /= len(items)
    p_e = sum((sum(r.count(c) for r in items) / total) ** 2 for c in labels)
    return None if p_e >= 1 else (p_bar - p_e) / (1 - p_e)


def _label(state: Mapping[str, Any]) -> str:
    return "reject" if state.get("decision") == "reject" else str(state.get("final_label", ""))


def first_reads(entries: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """file_name → {person: label of their first saved decision}, in audit-log order (people only)."""
    reads: dict[str, dict[str, str]] = {}
    for e in entries:
        add_read(reads, e)
    return reads


def add_read(reads: dict[str, dict[str, str]], entry: Mapping[str, Any]) -> None:
    """Record ``entry`` (an audit entry) in ``reads`` if it is a person's first saved decision of that item."""
    new = entry.get("new")
    if entry.get("outcome") != "saved" or not isinstance(new, Mapping) or not new.get("decision"):
        return
    if entry.get("action") in ("undo", "invalidate") or not is_person(entry.get("reviewer", "")):
        return
    reads.setdefault(entry["file_name"], {}).setdefault(str(entry["reviewer"]), _label(new))


def overlap_state(reads: Mapping[str, str]) -> str:
    """``done``, ``second-read`` (fewer than two people read it) or ``adjudication`` (the first two disagree and
    no third person has decided) for an overlap item with these first reads (in reading order)."""
    labels = list(reads.values())
    if len(labels) < 2:
        return "second-read"
    if labels[0] != labels[1] and len(labels) < 3:
        return "adjudication"
    return "done"


def agreement_summary(reads: Mapping[str, Mapping[str, str]], final: Mapping[str, str],
                      audit: Iterable[str]) -> dict[str, Any]:
    """Inter-rater agreement over items read by ≥ 2 people and per-reviewer agreement on the audit sample.

    ``final``: file_name → the final (corrections.csv) label. Cohen's kappa when exactly two people read the
    doubly-read items, Fleiss' otherwise (``method`` says which).
    """
    multi = {f: r for f, r in reads.items() if len(r) >= 2}
    people = sorted({p for r in multi.values() for p in r})
    if len(people) == 2:
        pairs = [(r[people[0]], r[people[1]]) for r in multi.values()]
        method, kappa = "cohen", cohen_kappa([a for a, _ in pairs], [b for _, b in pairs])
    else:
        method, kappa = "fleiss", fleiss_kappa([list(r.values()) for r in multi.values()])
    agree = [len(set(r.values())) == 1 for r in multi.values()]
    audit = set(audit)
    per_reviewer = {}
    for person in sorted({p for r in reads.values() for p in r}):
        mine = [f for f, r in reads.items() if person in r]
        checked = [f for f in mine if f in audit and f in final and len(reads[f]) >= 2]
        hits = sum(reads[f][person] == final[f] for f in checked)
        per_reviewer[person] = {"decisions": len(mine), "audit_checked": len(checked),
                                "audit_agreement": round(hits / len(checked), 4) if checked else None}
    return {"doubly_read": len(multi), "method": method,
            "kappa": None if kappa is None else round(kappa, 4),
            "percent_agreement": round(sum(agree) / len(agree), 4) if agree else None,
            "reviewers": per_reviewer}
