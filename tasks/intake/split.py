"""Splitting: a stratified (by label), seeded split that assigns whole duplicate groups to train/val/test."""

from __future__ import annotations

import numpy as np
import pandas as pd


def split_targets(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder split of ``n`` items into integer counts proportional to ``fractions``."""
    if n < 0 or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"need n ≥ 0 and fractions summing to 1, got n={n}, {fractions}")
    raw = {k: n * f for k, f in fractions.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (counts[k] - raw[k], list(raw).index(k)))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def assign_splits(df: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Stratified (by label) split of whole groups: each group lands in one split; deterministic by ``seed``.

    Groups of a stratum are shuffled, then each goes to the split furthest below its target count.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5B17,)))
    # A group's stratum is the label of its first record (mixed-label near duplicates are rare).
    group_label = df.sort_values("source").groupby("group")["label"].first()
    all_sizes = df.groupby("group").size()
    chosen: dict[str, str] = {}
    for label in sorted(group_label.unique()):
        groups = sorted(group_label.index[group_label == label])
        sizes = all_sizes[groups]
        target = split_targets(int(sizes.sum()), fractions)
        filled = dict.fromkeys(fractions, 0)
        for g in rng.permutation(np.array(groups, dtype=object)):
            name = max(fractions, key=lambda s: (target[s] - filled[s], -list(fractions).index(s)))
            filled[name] += int(sizes[g])
            chosen[g] = name
    return df["group"].map(chosen)
