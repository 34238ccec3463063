"""The review queue: order, flagged images, sha256 per item, label → decision."""

from __future__ import annotations

import pandas as pd
import pytest
from review_fixtures import ITEMS, predictions_frame

from tasks.review.queue import build_queue, classify_decision
from tasks.review.store import ReviewStore
from tasks.stage import StageError


def test_build_queue_puts_disagreement_first_then_low_margin():
    queue = build_queue(predictions_frame())
    assert list(queue["position"]) == list(range(len(ITEMS)))
    assert queue.loc[0, "agrees"] == False  # noqa: E712  (the only disagreement comes first)
    agreeing = queue[queue["agrees"]]
    assert list(agreeing["margin"]) == sorted(agreeing["margin"])
    assert list(queue["review_rank"]) == sorted(queue["review_rank"])


def test_build_queue_without_rank_uses_the_same_rule():
    ranked = build_queue(predictions_frame())
    unranked = build_queue(predictions_frame().drop(columns="review_rank"))
    assert list(unranked["file_name"]) == list(ranked["file_name"])


def test_build_queue_drops_images_generate_flagged():
    preds = predictions_frame()
    flagged = preds.loc[0, "file_name"]
    manifest = pd.DataFrame({"file_name": preds["file_name"], "status": ["black"] + ["ok"] * (len(preds) - 1)})
    queue = build_queue(preds, manifest)
    assert flagged not in set(queue["file_name"]) and len(queue) == len(preds) - 1


def test_build_queue_carries_each_image_sha256_and_unknown_is_empty(tmp_path):
    preds = predictions_frame()
    manifest = pd.DataFrame({"file_name": preds["file_name"][1:], "status": "ok",
                             "sha256": [f"{i:064x}" for i in range(1, len(preds))]})
    queue = build_queue(preds, manifest).set_index("file_name")["sha256"]
    assert queue[preds.loc[1, "file_name"]] == f"{1:064x}"
    assert queue[preds.loc[0, "file_name"]] == ""  # not in the manifest: unknown content
    assert set(build_queue(preds)["sha256"]) == {""}
    with pytest.raises(StageError, match="no sha256"):  # the store refuses to tie decisions to unknown content
        ReviewStore(tmp_path, build_queue(preds), ("small", "big"))


def test_build_queue_missing_columns_is_a_clear_error():
    with pytest.raises(StageError, match="margin"):
        build_queue(predictions_frame().drop(columns="margin"))


def test_classify_decision_maps_labels():
    assert classify_decision("big", "big") == ("accept", "big")
    assert classify_decision("big", "small") == ("correct", "small")
    assert classify_decision("big", "reject") == ("reject", "")
