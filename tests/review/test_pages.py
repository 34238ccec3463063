"""Paged item views, class hotkeys and the grid's batch (tasks/review/pages.py), on the store directly."""

from __future__ import annotations

import pytest
from review_fixtures import ITEMS, audit_of, open_review_store, write_review_inputs

from conftest import make_params
from tasks.review.pages import (DEFAULT_LIMIT, RESERVED_LETTERS, ItemQuery, batch_choices, class_keys, decide_each,
                                item_page, parse_query)
from tasks.review.store import ReviewError

MANY = [("small" if i % 2 else "big", "big", 0.5 + (i % 50) / 100) for i in range(130)]


@pytest.fixture
def store(tmp_path):
    params = make_params(tmp_path, {"review": {"mode": "manual"}})
    write_review_inputs(params, items=MANY)
    return open_review_store(params)


def test_class_keys_cover_any_number_of_classes_without_command_letters():
    keys = class_keys([f"c{i}" for i in range(40)])
    assert keys[:9] == [str(n) for n in range(1, 10)] and keys[9] == "a"
    lettered = [k for k in keys if k.isalpha()]
    assert not set(lettered) & RESERVED_LETTERS and len(set(lettered)) == 26 - len(RESERVED_LETTERS)
    assert keys[9 + len(lettered):] == [""] * (40 - 9 - len(lettered))  # the rest: the palette ("/")
    assert class_keys(["a", "b"]) == ["1", "2"]


def test_pages_follow_the_cursor_and_never_return_the_whole_queue(store):
    first = item_page(store, ItemQuery())
    assert len(first["items"]) == DEFAULT_LIMIT < len(MANY) and first["matching"] == len(MANY)
    assert [it["position"] for it in first["items"]] == list(range(DEFAULT_LIMIT))
    second = item_page(store, ItemQuery(after=first["items"][-1]["position"]))
    assert second["index"] == DEFAULT_LIMIT and second["items"][0]["position"] == DEFAULT_LIMIT
    back = item_page(store, ItemQuery(before=second["items"][0]["position"]))
    assert [it["file_name"] for it in back["items"]] == [it["file_name"] for it in first["items"]]
    last = item_page(store, ItemQuery(after=len(MANY) - 3))
    assert len(last["items"]) == 2 and last["index"] == len(MANY) - 2


def test_filters_count_and_page_within_the_matching_items(store):
    f = next(iter(store.items))
    store.decide(f, "reject", version=0, reviewer="ann")
    waiting = item_page(store, ItemQuery(status="waiting", limit=5))
    assert waiting["matching"] == len(MANY) - 1 and f not in {it["file_name"] for it in waiting["items"]}
    assert item_page(store, ItemQuery(status="reject"))["items"][0]["file_name"] == f
    assert item_page(store, ItemQuery(status="decided", limit=0)) == {"items": [], "matching": 1, "index": 0}
    small = item_page(store, ItemQuery(cls="small", limit=500))
    assert small["matching"] == sum(i == "small" for i, _, _ in MANY)
    assert {it["intended_label"] for it in small["items"]} == {"small"}
    confident = item_page(store, ItemQuery(min_confidence=0.9, limit=0))["matching"]
    assert confident == sum(c >= 0.9 for _, _, c in MANY)


@pytest.mark.parametrize("args, match", [
    ({"status": "done"}, "status must be one of"), ({"cls": "huge"}, "cls must be one of"),
    ({"limit": "9999"}, "limit must lie in"), ({"after": "x"}, "after must be a number"),
    ({"after": "1", "before": "3"}, "not both"), ({"min_confidence": "2"}, "min_confidence must lie in"),
])
def test_bad_query_arguments_name_the_argument(args, match):
    with pytest.raises(ReviewError, match=match):
        parse_query(args, ["small", "big"])


def test_batch_saves_each_current_item_and_reports_stale_and_bad_ones_apart(tmp_path):
    params = make_params(tmp_path, {"review": {"mode": "manual"}})
    write_review_inputs(params)
    store = open_review_store(params)
    a, b, c = list(store.items)[:3]
    store.decide(b, "small", version=0, reviewer="bob")  # b changed meanwhile: the grid saw version 0
    choices = batch_choices({"decisions": [
        {"file_name": a, "label": "big", "version": 0, "sha256": store.items[a]["sha256"]},
        {"file_name": b, "label": "big", "version": 0},
        {"file_name": c, "label": "huge", "version": 0},
        {"file_name": "images/none.png", "label": "big", "version": 0}]})
    out = decide_each(store, choices, reviewer="ann", context={"blind": True, "view": "grid"})
    assert [r["status"] for r in out["results"]] == [200, 409, 400, 404] and out["saved"] == 1
    assert store.item_view(a)["final_label"] == "big" and store.item_view(b)["reviewer"] == "bob"
    saved = [e for e in audit_of(params) if e["file_name"] == a]
    assert saved[-1]["context"] == {"blind": True, "view": "grid"}
    assert [e["outcome"] for e in audit_of(params) if e["file_name"] == b] == ["saved", "conflict"]
    assert len(ITEMS) - len(store.waiting()) == 2


@pytest.mark.parametrize("body, match", [({}, "non-empty list"), ({"decisions": []}, "non-empty list"),
                                         ({"decisions": [{"file_name": "a", "version": 0}] * 2}, "once"),
                                         ({"decisions": [{"file_name": "a", "version": "x"}]}, "integer")])
def test_malformed_batches_are_refused_whole(body, match):
    with pytest.raises(ReviewError, match=match):
        batch_choices(body)
