"""Splitting: largest-remainder targets, and seeded group splits that never separate a group."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.intake.split import assign_splits, split_targets


def test_split_targets_largest_remainder_and_error() -> None:
    assert split_targets(320, {"train": 0.1, "val": 0.2, "test": 0.7}) == {"train": 32, "val": 64, "test": 224}
    assert sum(split_targets(7, {"train": 0.1, "val": 0.2, "test": 0.7}).values()) == 7
    with pytest.raises(ValueError, match="summing to 1"):
        split_targets(10, {"train": 0.5, "val": 0.2})


def test_groups_never_straddle_splits() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"source": [f"s{i:03d}" for i in range(120)], "label": ["a", "b"] * 60,
                       "sha256": [f"{i:064x}" for i in range(120)]})
    df["group"] = [f"g{i // 4:03d}" for i in rng.permutation(120)]  # groups of 4
    split = assign_splits(df, {"train": 0.25, "val": 0.25, "test": 0.5}, seed=1)
    assert (df.assign(split=split).groupby("group").split.nunique() == 1).all()
    assert split.value_counts().to_dict() == pytest.approx({"test": 60, "train": 30, "val": 30}, abs=8)
    assert split.equals(assign_splits(df, {"train": 0.25, "val": 0.25, "test": 0.5}, seed=1))
