"""review.budget: the planned queue (audit sample, round-robin priority), the stopping rule, past-budget policies
and the audited error estimates."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import make_params  # noqa: E402
from review_fixtures import audit_of, open_review_store, stage_kwargs, write_review_inputs  # noqa: E402

from tasks.review import budget  # noqa: E402
from tasks.review.modes import BEYOND_REVIEWER  # noqa: E402
from tasks.review.stage import run as run_review  # noqa: E402
from tasks.review.status import review_status  # noqa: E402
from tasks.stage import WaitingForReview  # noqa: E402


def many_items(n: int = 40) -> list[tuple[str, str, float]]:
    """(intended, predicted, confidence): every 5th disagrees, confidences spread over 0.55–0.995."""
    out = []
    for i in range(n):
        intended = ("small", "big")[i % 2]
        pred = intended if i % 5 else ("big" if intended == "small" else "small")
        out.append((intended, pred, 0.55 + 0.445 * ((i * 7) % n) / (n - 1)))
    return out


def project(tmp_path: Path, review: dict, n: int = 40):
    p = make_params(tmp_path, {"review": {"mode": "manual", **review}})
    write_review_inputs(p, many_items(n))
    return p


def _queue(n: int = 12) -> pd.DataFrame:
    rows = []
    for i, (intended, pred, conf) in enumerate(many_items(n)):
        rows.append({"file_name": f"f{i:03d}.png", "intended_label": intended, "pred_label": pred,
                     "agrees": intended == pred, "confidence_calibrated": conf, "margin_calibrated": 2 * conf - 1,
                     "entropy_calibrated": 1 - conf})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- the plan (pure)
def test_audit_sample_is_reproducible_and_independent_of_order():
    names = [f"img_{i}.png" for i in range(200)]
    first = budget.hash_sample(names, 0.05, 100, "review-audit")
    assert len(first) == 10
    assert budget.hash_sample(list(reversed(names)), 0.05, 100, "review-audit") == first
    assert budget.hash_sample(names, 0.05, 101, "review-audit") != first  # the seed draws it
    # adding items keeps almost the whole earlier sample (a hash rank, not a shuffle)
    grown = budget.hash_sample(names + [f"new_{i}.png" for i in range(20)], 0.05, 100, "review-audit")
    assert len(set(first) & set(grown)) >= 8


def test_share_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"share must lie in \[0, 1\]"):
        budget.hash_sample(["a"], 1.5, 0, "x")


def test_priority_is_round_robin_over_classes_disagreement_first():
    q = _queue(12)
    order = budget.priority_order(q)
    cls = dict(zip(q["file_name"], q["intended_label"]))
    assert [cls[f] for f in order[:6]] in (["small", "big"] * 3, ["big", "small"] * 3)
    agrees = dict(zip(q["file_name"], q["agrees"]))
    for c in ("small", "big"):
        mine = [f for f in order if cls[f] == c]
        flags = [agrees[f] for f in mine]
        assert flags == sorted(flags), "within a class, disagreements come first"


def test_plan_respects_the_budget_and_puts_the_audit_sample_in_front():
    q = _queue(40)
    plan = budget.plan_queue(q, budget=10, audit_share=0.1, overlap_share=0.5, seed=3)
    assert plan["in_budget"].sum() == 10 and plan["audit"].sum() == 4
    assert plan.loc[plan["audit"], "in_budget"].all()
    assert plan["position"].tolist() == list(range(40))
    assert plan["audit"].iloc[:8].tolist() == [True, False] * 4  # interleaved at the front
    assert plan["in_budget"].iloc[:10].all() and not plan["in_budget"].iloc[10:].any()
    assert plan["overlap"].sum() == 5 and plan.loc[plan["overlap"], "in_budget"].all()
    # the priority items within the budget are the top of the priority order, audit aside
    top = [f for f in budget.priority_order(q) if f not in set(plan.loc[plan["audit"], "file_name"])][:6]
    assert set(plan.loc[plan["in_budget"] & ~plan["audit"], "file_name"]) == set(top)


def test_audit_sample_is_never_skipped_by_a_small_budget():
    plan = budget.plan_queue(_queue(40), budget=2, audit_share=0.25, overlap_share=0, seed=0)
    assert plan["audit"].sum() == 10 and plan["in_budget"].sum() == 10


def test_no_budget_means_every_item():
    plan = budget.plan_queue(_queue(12), budget=None, audit_share=0.05, overlap_share=0, seed=0)
    assert plan["in_budget"].all()


def test_plan_refuses_duplicate_file_names():
    q = _queue(4)
    q.loc[1, "file_name"] = q.loc[0, "file_name"]
    with pytest.raises(ValueError, match="duplicate file names"):
        budget.plan_queue(q, budget=None, audit_share=0, overlap_share=0, seed=0)


@pytest.mark.parametrize(("policy", "conf", "expected"), [
    ("intended", 0.99, "small"), ("predicted", 0.5, "big"), ("predicted-if-confident", 0.96, "big"),
    ("predicted-if-confident", 0.94, None), ("drop", 0.99, None)])
def test_policy_label(policy, conf, expected):
    item = {"intended_label": "small", "pred_label": "big", "confidence_calibrated": conf}
    assert budget.policy_label(item, policy, 0.95) == expected


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy"):
        budget.policy_label({}, "guess", 0.5)


def test_policy_error_counts_kept_items_and_rejects_as_errors():
    items = [{"intended_label": "a", "pred_label": "a", "confidence_calibrated": 0.99},
             {"intended_label": "a", "pred_label": "b", "confidence_calibrated": 0.99},
             {"intended_label": "b", "pred_label": "b", "confidence_calibrated": 0.50}]
    truths = ["a", "b", "reject"]
    assert budget.policy_error(items, truths, "intended", 0.9)["errors"] == 2  # "a" ≠ "b", kept a rejected one
    res = budget.policy_error(items, truths, "predicted-if-confident", 0.9)
    assert (res["kept"], res["errors"], res["error_rate"]) == (2, 0, 0.0)
    assert res["ci"][0] == 0.0 and 0.5 < res["ci"][1] < 0.9  # Wilson, n = 2


# ---------------------------------------------------------------------------- the stage and the stopping rule
def _decide_required(store, label_of=lambda item: item["intended_label"]):
    for f in store.required_waiting():
        store.decide(f, label_of(store.items[f]), version=store.versions.get(f, 0), reviewer="ann")


def test_budget_is_respected_and_the_stage_waits_only_for_it(tmp_path):
    p = project(tmp_path, {"budget": 8, "audit_share": 0.1})
    with pytest.raises(WaitingForReview, match="8 of 40 items wait"):
        run_review(p, **stage_kwargs(p))
    status = review_status(p)
    assert (status["waiting"], status["beyond_budget"]) == (8, 32)
    store = open_review_store(p)
    assert len(store.required_waiting()) == 8 and store.progress()["beyond_budget"] == 32
    _decide_required(store)
    assert store.progress()["waiting"] == 0  # what resumes the paused flow
    out = run_review(p, **stage_kwargs(p))
    m = out.metrics
    assert m["human_decisions"] == 8 and m["beyond_budget_decided"] == 32 and m["waiting"] == 0
    plan = m["review_plan"]
    assert plan["budget"] == 8 and plan["budget_items"] == 8 and plan["decided_in_budget"] == 8
    assert plan["beyond_budget_policy"] == "drop" and plan["order_rule"] == budget.ORDER_RULE
    assert plan["audit"]["audit_size"] == 4 == plan["audit"]["audit_decided"]
    assert "8 decided of budget 8" in plan["budget_line"]


@pytest.mark.parametrize("policy", ["intended", "predicted-if-confident", "drop"])
def test_past_budget_policies(tmp_path, policy):
    p = project(tmp_path, {"budget": 6, "audit_share": 0.05, "beyond_budget": policy,
                           "confidence_threshold": 0.9})
    store = open_review_store(p)
    _decide_required(store)
    run_review(p, **stage_kwargs(p))
    store = open_review_store(p)
    auto = {f: d for f, d in store.decisions.items() if d["reviewer"] == BEYOND_REVIEWER}
    assert len(auto) == 34 and not any(store.required(f) for f in auto)
    for f, d in auto.items():
        item = store.items[f]
        if policy == "intended":
            assert d["final_label"] == item["intended_label"]
        elif policy == "drop":
            assert d["decision"] == "reject" and d["note"] == "dropped: beyond budget: drop"
        elif float(item["confidence_calibrated"]) >= 0.9:
            assert d["final_label"] == item["pred_label"] and d["decision"] == "accept"
        else:
            assert d["decision"] == "reject"
    entries = [e for e in audit_of(p) if e["action"] == "beyond-budget"]
    assert len(entries) == 34 and {e["reviewer"] for e in entries} == {BEYOND_REVIEWER}


def test_raising_the_budget_reopens_past_budget_items(tmp_path):
    p = project(tmp_path, {"budget": 4, "audit_share": 0.0})
    _decide_required(open_review_store(p))
    run_review(p, **stage_kwargs(p))
    more = p.model_copy(update={"review": p.review.model_copy(update={"budget": 10})})
    with pytest.raises(WaitingForReview, match="6 of 40 items wait"):
        run_review(more, **stage_kwargs(more))
    assert [e["action"] for e in audit_of(p)].count("reopen") == 6


def test_accept_confident_never_decides_the_audit_sample(tmp_path):
    p = project(tmp_path, {"audit_share": 0.25, "confidence_threshold": 0.6})
    p = p.model_copy(update={"review": p.review.model_copy(update={"mode": "accept-confident"})})
    with pytest.raises(WaitingForReview):
        run_review(p, **stage_kwargs(p))
    store = open_review_store(p)
    audit = [f for f in store.items if store.items[f]["audit"]]
    assert len(audit) == 10 and not any(f in store.decisions for f in audit)
    assert any(d["reviewer"] == "auto:accept-confident" for d in store.decisions.values())


def test_audit_estimates_each_policys_error(tmp_path):
    p = project(tmp_path, {"budget": 12, "audit_share": 0.25, "beyond_budget": "intended"})
    store = open_review_store(p)
    # the person always gives the predicted class: intended is wrong exactly where they disagree
    _decide_required(store, lambda item: item["pred_label"])
    est = run_review(p, **stage_kwargs(p)).metrics["review_plan"]["audit"]
    audit = [store.items[f] for f in store.items if store.items[f]["audit"]]
    wrong = sum(not bool(i["agrees"]) for i in audit)
    assert est["policies"]["intended"]["errors"] == wrong and est["policies"]["predicted"]["errors"] == 0
    lo, hi = est["policies"]["intended"]["ci"]
    assert lo <= wrong / len(audit) <= hi
    rem = est["remaining"]
    assert rem["policy"] == "intended" and rem["n"] <= len(audit)

