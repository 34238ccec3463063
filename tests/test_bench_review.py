"""benchmarks/bench_review.py in --smoke mode: the concurrency check itself must find nothing lost."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_review  # noqa: E402

pytestmark = pytest.mark.slow


def test_bench_review_smoke_loses_and_duplicates_nothing(tmp_path):
    result = bench_review.main(["--smoke", "--out", str(tmp_path / "r.json")])
    assert result["nothing_lost"]["ok"], result["nothing_lost"]
    c = result["concurrent"]
    assert c["saved"] + c["refused_409"] == c["posts"] and c["saved"] == c["refused_409"] and not c["other_status"]
    assert result["page_load"]["first_items_page"]["bytes"] < 100_000  # one page, never the whole queue
