"""What the review's decisions say about the labels: budget progress, each policy's audited error, agreement.

``store_estimates(store, params)`` is what the review stage writes to metrics/review.json and the app's
``/api/status`` returns; ``review_estimates(params)`` computes the same from the review folder on disk
(queue.csv, corrections.csv, audit.jsonl) for the evaluate report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pandas as pd

from tasks.params import Params
from tasks.review.agreement import agreement_summary, first_reads
from tasks.review.audit import read_audit
from tasks.review.budget import ORDER_RULE, audit_estimates, budget_line, person_label
from tasks.tables import AUDIT_FILE, read_corrections, read_queue


def estimates(queue: pd.DataFrame, decisions: Mapping[str, Mapping[str, Any]],
              reads: Mapping[str, Mapping[str, str]], params: Params) -> dict[str, Any]:
    """Budget, plan, audited policy errors, remaining error and agreement for a planned queue and its decisions.

    Only decisions by a person (or the simulated reference reviewer, flagged ``simulated`` in the metrics) count
    as the audit's truth; automatic ones (accept-confident, beyond-budget) never touch audit items.
    """
    r = params.review
    judged = {f: d for f, d in decisions.items() if not str(d.get("reviewer", "")).startswith("auto:")}
    audit = audit_estimates(queue, judged, policy=r.beyond_budget, threshold=r.confidence_threshold)
    in_budget = queue["in_budget"].astype(bool)
    decided_in_budget = int(queue.loc[in_budget, "file_name"].isin(list(judged)).sum())
    order = "\n".join(queue["file_name"].astype(str))
    final = {f: person_label(d) for f, d in decisions.items()}
    return {
        "budget": r.budget, "budget_items": int(in_budget.sum()), "decided_in_budget": decided_in_budget,
        "beyond_budget_policy": r.beyond_budget, "audit_share": r.audit_share, "overlap_share": r.overlap_share,
        "overlap_items": int(queue["overlap"].astype(bool).sum()),
        "order_rule": ORDER_RULE, "order_sha256": hashlib.sha256(order.encode()).hexdigest(),
        "audit": audit,
        "agreement": agreement_summary(reads, final, queue.loc[queue["audit"].astype(bool), "file_name"]),
        "budget_line": budget_line(decided_in_budget, int(in_budget.sum()), audit["remaining"]),
    }


def store_estimates(store: Any, params: Params) -> dict[str, Any]:
    """``estimates`` for an open ``ReviewStore`` (its planned items, decisions and first reads)."""
    queue = pd.DataFrame(list(store.items.values()))
    return estimates(queue, {f: store.decisions[f] for f in store.items if f in store.decisions}, store.reads,
                     params)


def review_estimates(params: Params) -> dict[str, Any]:
    """``estimates`` from the review folder on disk (``params.paths.review``): for the evaluate report."""
    folder = params.paths.review
    queue = read_queue(folder)
    corrections = read_corrections(folder, params.classes, missing_ok=True)
    decisions = {row["file_name"]: row for row in corrections.to_dict("records")}
    return estimates(queue, decisions, first_reads(read_audit(folder / AUDIT_FILE)), params)


def flat_metrics(est: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of ``estimates`` as flat floats (MLflow takes no nesting)."""
    out: dict[str, float] = {}
    for policy, res in est["audit"]["policies"].items():
        if res["error_rate"] is not None:
            out[f"audit_error_{policy.replace('-', '_')}"] = res["error_rate"]
    rem = est["audit"]["remaining"]
    if rem["error_rate"] is not None:
        out["remaining_error"], (out["remaining_error_low"], out["remaining_error_high"]) = rem["error_rate"], rem["ci"]
    if est["agreement"]["kappa"] is not None:
        out["kappa"] = est["agreement"]["kappa"]
    return out
