"""Checkpoint progress read without pandas."""

from __future__ import annotations

import pandas as pd
from review_fixtures import decide_all, open_review_store

from tasks.review.status import review_status


def test_review_status_counts_only_decisions_on_the_queued_content(manual):
    decide_all(open_review_store(manual))
    assert review_status(manual)["waiting"] == 0
    path = manual.paths.review / "corrections.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[0, "sha256"] = "0" * 64  # made on another image; the store has not re-opened yet
    df.loc[1, "sha256"] = ""
    df.to_csv(path, index=False)
    assert review_status(manual)["waiting"] == 2
