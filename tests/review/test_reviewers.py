"""Several reviewers: Wilson CI, Cohen's and Fleiss' kappa on hand-computed examples, overlap items that need a
second read or an adjudicator, and two reviewers saving one item at once (one wins, one 409, both audited)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import make_params  # noqa: E402
from review_fixtures import audit_of, open_review_store, stage_kwargs, write_review_inputs  # noqa: E402

from tasks.review import agreement as ag  # noqa: E402
from tasks.review.stage import run as run_review  # noqa: E402
from tasks.review.status import review_status  # noqa: E402
from tasks.review.store import Conflict  # noqa: E402
from tasks.stage import WaitingForReview  # noqa: E402


def test_wilson_interval_by_hand():
    lo, hi = ag.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = ag.wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert ag.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= n"):
        ag.wilson_interval(3, 2)


def test_cohen_kappa_by_hand():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 → p_o = .7, p_e = .5·.6 + .5·.4 = .5 → κ = .4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert ag.cohen_kappa(a, b) == pytest.approx(0.4)
    assert ag.cohen_kappa(["x", "y"], ["x", "y"]) == pytest.approx(1.0)
    assert ag.cohen_kappa([], []) is None and ag.cohen_kappa(["x"], ["x"]) is None  # chance agreement 1
    with pytest.raises(ValueError, match="same items"):
        ag.cohen_kappa(["x"], [])


def test_fleiss_kappa_by_hand():
    # P_i = 1, 1/3, 1 → P̄ = 7/9; p_a = 5/9, p_b = 4/9 → P_e = 41/81; κ = (63/81 − 41/81)/(40/81) = 22/40
    assert ag.fleiss_kappa([["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"]]) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="at least two ratings"):
        ag.fleiss_kappa([["a"]])


def test_first_reads_keep_each_persons_first_decision_only():
    saved = lambda who, f, label, action="decide": {"outcome": "saved", "reviewer": who, "file_name": f,  # noqa: E731
                                                    "action": action, "new": {"decision": "accept",
                                                                              "final_label": label}}
    entries = [saved("ann", "x", "a"), saved("bob", "x", "b"), saved("ann", "x", "b"),
               saved("auto:accept-confident", "y", "a"), {**saved("ann", "y", "a"), "outcome": "conflict"},
               saved("ann", "z", "a", action="undo")]
    assert ag.first_reads(entries) == {"x": {"ann": "a", "bob": "b"}}
    assert ag.overlap_state({"ann": "a"}) == "second-read"
    assert ag.overlap_state({"ann": "a", "bob": "b"}) == "adjudication"
    assert ag.overlap_state({"ann": "a", "bob": "b", "cy": "b"}) == "done"
    assert ag.overlap_state({"ann": "a", "bob": "a"}) == "done"


def test_agreement_summary_uses_cohen_for_two_and_fleiss_for_more():
    reads = {"1": {"ann": "a", "bob": "a"}, "2": {"ann": "a", "bob": "b"}, "3": {"ann": "b", "bob": "b"},
             "4": {"ann": "a"}}
    two = ag.agreement_summary(reads, {"1": "a", "2": "b", "3": "b", "4": "a"}, audit=["2", "3", "4"])
    assert two["method"] == "cohen" and two["doubly_read"] == 3 and two["percent_agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert two["kappa"] == pytest.approx(ag.cohen_kappa(["a", "a", "b"], ["a", "b", "b"]), abs=1e-4)
    assert two["reviewers"]["ann"] == {"decisions": 4, "audit_checked": 2, "audit_agreement": 0.5}
    assert two["reviewers"]["bob"]["audit_agreement"] == 1.0
    three = ag.agreement_summary({**reads, "5": {"ann": "a", "bob": "a", "cy": "a"}}, {}, audit=[])
    assert three["method"] == "fleiss" and three["doubly_read"] == 4


# ------------------------------------------------------------------------------------------------ the store
@pytest.fixture
def overlap(tmp_path):
    p = make_params(tmp_path, {"review": {"mode": "manual", "overlap_share": 1.0, "audit_share": 0.0}})
    write_review_inputs(p)
    return p


def test_owed_filter_gives_each_reader_the_overlap_items_they_have_not_read(overlap):
    """status=owed&reader=X: in-budget decisions plus overlap items X has not read; a second reader finds them."""
    from tasks.review.pages import ItemQuery, item_page, parse_query

    store = open_review_store(overlap)
    f = store.required_waiting()[0]
    store.decide(f, "small", version=0, reviewer="ann")
    owed = lambda reader: [it["file_name"] for it in item_page(store, ItemQuery(status="owed", reader=reader))["items"]]
    assert f in owed("bob") and f not in owed("ann") and len(owed("ann")) == len(store.items) - 1
    assert [it["file_name"] for it in item_page(store, ItemQuery(status="waiting"))["items"]] == owed("ann")
    assert parse_query({"status": "owed", "reader": " bob "}, store.classes) == ItemQuery(status="owed", reader="bob")


def test_overlap_item_waits_for_a_second_reader_then_an_adjudicator(overlap):
    store = open_review_store(overlap)
    f = store.required_waiting()[0]
    view = store.decide(f, "small", version=0, reviewer="ann")
    assert view["needs"] == "second-read" and view["readers"] == ["ann"]
    assert f in store.required_waiting() and review_status(overlap)["waiting"] == 5
    view = store.decide(f, "big", version=view["version"], reviewer="bob")
    assert view["needs"] == "adjudication"
    view = store.decide(f, "big", version=view["version"], reviewer="cy")  # the adjudicator: final
    assert view["needs"] == "" and view["final_label"] == "big"
    assert review_status(overlap)["waiting"] == 4
    assert f not in open_review_store(overlap).required_waiting()  # the reads come back from the audit log


def test_stage_reports_kappa_of_two_reviewers(overlap):
    store = open_review_store(overlap)
    files = store.required_waiting()
    for i, f in enumerate(files):
        v = store.decide(f, "small", version=store.versions.get(f, 0), reviewer="ann")["version"]
        store.decide(f, "small" if i < 4 else "big", version=v, reviewer="bob")
    with pytest.raises(WaitingForReview, match="1 of 5 items wait"):  # the disputed one needs an adjudicator
        run_review(overlap, **stage_kwargs(overlap))
    store.decide(files[4], "big", version=store.versions[files[4]], reviewer="cy")
    m = run_review(overlap, **stage_kwargs(overlap)).metrics
    agreement = m["review_plan"]["agreement"]
    assert agreement["method"] == "fleiss" and agreement["doubly_read"] == 5  # cy read one item: three people
    assert agreement["percent_agreement"] == pytest.approx(0.8)


def test_two_reviewers_saving_one_item_at_once_one_wins_one_409_audit_has_both(manual):
    store = open_review_store(manual)
    f = store.required_waiting()[0]
    start, results = threading.Barrier(2), {}

    def save(who: str, label: str) -> None:
        start.wait()
        try:
            results[who] = store.decide(f, label, version=0, reviewer=who)
        except Conflict as err:
            results[who] = err

    threads = [threading.Thread(target=save, args=a) for a in (("ann", "small"), ("bob", "big"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conflicts = [w for w, r in results.items() if isinstance(r, Conflict)]
    assert len(conflicts) == 1
    winner = ({"ann", "bob"} - set(conflicts)).pop()
    assert store.decisions[f]["reviewer"] == winner
    entries = [e for e in audit_of(manual) if e["file_name"] == f]
    assert sorted((e["reviewer"], e["outcome"]) for e in entries) == sorted(
        [(winner, "saved"), (conflicts[0], "conflict")])
