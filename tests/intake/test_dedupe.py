"""Duplicates: near-duplicate pairs by perceptual-hash distance, and malformed hashes."""

from __future__ import annotations

import pytest

from tasks.intake import dedupe


def test_near_duplicate_pairs_and_bad_hash() -> None:
    a = "0" * 64
    b = "0" * 63 + "7"  # 3 bits differ
    c = "f" * 64
    assert dedupe.near_duplicate_pairs([a, b, c], 3) == [(0, 1, 3)]
    assert dedupe.near_duplicate_pairs([a, b, c], 2) == []
    with pytest.raises(ValueError, match="hex hashes"):
        dedupe.near_duplicate_pairs(["abc", a], 3)
