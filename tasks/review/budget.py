"""Where a person's limited decisions go, and what the undecided rest gets: ``review.budget`` and its stopping rule.

The queue is planned once per stage run (``plan_queue``), in this order:

1. the **audit sample** (``review.audit_share``): a random share of all items, drawn from a hash of the seed and
   each file name — reproducible, independent of the classifier's ordering and stable when items are added. It is
   always reviewed, whatever the budget, and interleaved with the first priority items so that the estimates of
   step 3 exist early;
2. the **priority** items: round-robin over the intended classes, each class in the order disagreement (predicted
   ≠ intended) first, then smallest calibrated margin, then highest calibrated entropy, then file name — the items
   where a person's label changes most, without one class eating the whole budget;
3. everything past ``review.budget`` decisions gets ``review.beyond_budget``: ``intended`` (the prompt's class),
   ``predicted-if-confident`` (the prediction when its *calibrated* confidence ≥ ``review.confidence_threshold``,
   else dropped) or ``drop`` (kept out of retraining).

Because the audit sample is a simple random sample, the share of its items whose person-given label differs from
what a policy would have given is an unbiased estimate of that policy's error rate (Wilson CI,
``tasks.review.agreement``). Audit items whose priority falls past the budget cut are a random sample of the
past-budget items themselves: their errors estimate the *remaining* label error of what the budget left undecided.
Pure functions over tables; no disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from tasks.review.agreement import wilson_interval
from tasks.tables import REJECT

#: The automatic policies whose error the audit sample estimates (``drop`` has none: it keeps nothing).
POLICIES = ("intended", "predicted", "predicted-if-confident")
ORDER_RULE = ("audit sample interleaved at the front; then round-robin over intended classes, each class by "
              "disagreement, smallest calibrated margin, highest calibrated entropy, file name")


def _draw_key(seed: int, salt: str, file_name: str) -> str:
    return hashlib.sha256(f"{seed}:{salt}:{file_name}".encode()).hexdigest()


def hash_sample(file_names: Iterable[str], share: float, seed: int, salt: str) -> list[str]:
    """round(share × n) file names, drawn by the smallest sha256(seed:salt:name): reproducible, order-free.

    Returned in draw order (random, not the classifier's), so an interleaving by it leaks no priority.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must lie in [0, 1], got {share}")
    names = sorted(set(file_names))
    n = int(share * len(names) + 0.5)
    return sorted(names, key=lambda f: _draw_key(seed, salt, f))[:n]


def priority_order(queue: pd.DataFrame) -> list[str]:
    """File names round-robin over intended classes, each class most-informative first (see module docstring)."""
    df = pd.DataFrame({"file_name": queue["file_name"].astype(str), "cls": queue["intended_label"].astype(str),
                       "agrees": queue["agrees"].astype(bool), "margin": queue["margin_calibrated"].astype(float),
                       "neg_entropy": -queue["entropy_calibrated"].astype(float)})
    keys = ["agrees", "margin", "neg_entropy", "file_name"]
    df = df.sort_values(keys, kind="stable")
    df["round"] = df.groupby("cls", sort=False).cumcount()  # the k-th most informative item of its class
    return df.sort_values(["round", *keys], kind="stable")["file_name"].tolist()


def plan_queue(queue: pd.DataFrame, *, budget: int | None, audit_share: float, overlap_share: float,
               seed: int, overlap: bool = True) -> pd.DataFrame:
    """The review queue in planned order with ``position``, ``priority``, ``audit``, ``in_budget`` and ``overlap``.

    ``in_budget``: the audit sample plus the first ``budget − |audit|`` priority items (all items without a
    budget). ``overlap``: the share of in-budget items that two different reviewers must decide (``overlap``
    False: none, e.g. for the simulated reviewer, which cannot be two people).
    """
    dup = queue.loc[queue["file_name"].duplicated(), "file_name"].tolist()
    if dup:
        raise ValueError(f"duplicate file names in the review queue, e.g. {dup[:3]}")
    priority = priority_order(queue)
    audit = hash_sample(queue["file_name"], audit_share, seed, "review-audit")
    audit_set = set(audit)
    rest = [f for f in priority if f not in audit_set]
    n_priority = len(rest) if budget is None else max(0, budget - len(audit))
    head, tail = rest[:n_priority], rest[n_priority:]
    order = [f for pair in zip(audit, head) for f in pair]
    k = min(len(audit), len(head))
    order += audit[k:] + head[k:] + tail
    in_budget = audit_set | set(head)
    doubled = set(hash_sample(in_budget, overlap_share, seed, "review-overlap")) if overlap else set()
    rank = {f: i + 1 for i, f in enumerate(priority)}
    df = queue.set_index("file_name").loc[order].reset_index()
    df["position"] = range(len(df))
    df["priority"] = [rank[f] for f in df["file_name"]]
    df["audit"] = df["file_name"].isin(audit_set)
    df["in_budget"] = df["file_name"].isin(in_budget)
    df["overlap"] = df["file_name"].isin(doubled)
    return df


def budget_cut(queue: pd.DataFrame) -> int:
    """The largest priority rank of an in-budget, non-audit item (0 if none): past it lies the undecided rest."""
    mask = queue["in_budget"].astype(bool) & ~queue["audit"].astype(bool)
    return int(queue.loc[mask, "priority"].max()) if mask.any() else 0


def policy_label(item: Mapping[str, Any], policy: str, threshold: float) -> str | None:
    """The label ``policy`` gives an item nobody decided: a class, or None (dropped from retraining)."""
    if policy == "intended":
        return str(item["intended_label"])
    if policy == "predicted":
        return str(item["pred_label"])
    if policy == "predicted-if-confident":
        return str(item["pred_label"]) if float(item["confidence_calibrated"]) >= threshold else None
    if policy == "drop":
        return None
    raise ValueError(f"unknown policy {policy!r}; choose one of {[*POLICIES, 'drop']}")


def person_label(decision: Mapping[str, Any]) -> str:
    """The label a decision row gives: its final label, or ``reject``."""
    return REJECT if decision.get("decision") == REJECT else str(decision.get("final_label", ""))


def policy_error(items: Sequence[Mapping[str, Any]], truths: Sequence[str], policy: str,
                 threshold: float, confidence: float = 0.95) -> dict[str, Any]:
    """How often ``policy`` disagrees with the person's label on ``items`` (its kept items only), with a Wilson CI.

    A person's ``reject`` counts as an error for any kept label: the policy would have trained on a bad image.
    """
    kept = errors = 0
    for item, truth in zip(items, truths, strict=True):
        label = policy_label(item, policy, threshold)
        if label is not None:
            kept += 1
            errors += label != truth
    lo, hi = wilson_interval(errors, kept, confidence)
    return {"n": len(items), "kept": kept, "errors": errors,
            "error_rate": None if kept == 0 else round(errors / kept, 4),
            "ci": None if kept == 0 else [round(lo, 4), round(hi, 4)]}


def audit_estimates(queue: pd.DataFrame, decisions: Mapping[str, Mapping[str, Any]], *, policy: str,
                    threshold: float, confidence: float = 0.95) -> dict[str, Any]:
    """From the decided audit items: each automatic policy's error over the whole queue, and ``policy``'s error on
    the past-budget part (audit items whose priority lies past the budget cut), with Wilson CIs."""
    audit = queue[queue["audit"].astype(bool) & queue["file_name"].isin(list(decisions))]
    items = audit.to_dict("records")
    truths = [person_label(decisions[r["file_name"]]) for r in items]
    cut = budget_cut(queue)
    past = [i for i, r in enumerate(items) if int(r["priority"]) > cut]
    remaining = policy_error([items[i] for i in past], [truths[i] for i in past], policy, threshold, confidence)
    return {"audit_size": int(queue["audit"].astype(bool).sum()), "audit_decided": len(items),
            "policies": {p: policy_error(items, truths, p, threshold, confidence) for p in POLICIES},
            "remaining": {"policy": policy, **remaining}}


def budget_line(decided: int, budget: int, remaining: Mapping[str, Any]) -> str:
    """"N decided of budget B, estimated remaining label error x % [lo–hi %]" for the app and the logs."""
    head = f"{decided} decided of budget {budget}"
    if remaining.get("policy") == "drop":
        return f"{head}; the rest is dropped (not used for retraining)"
    if remaining.get("error_rate") is None:
        return f"{head}; remaining label error: not estimable yet (no decided audit item past the budget)"
    lo, hi = remaining["ci"]
    return (f"{head}, estimated remaining label error {100 * remaining['error_rate']:.1f} % "
            f"[{100 * lo:.1f}–{100 * hi:.1f} %] ({remaining['policy']}, {remaining['kept']} audit items)")
