"""Duplicates: exact (sha256 of the normalised pixels) and near (perceptual-hash distance), and their groups.

Exact duplicates keep their first copy; the others are reported in ``duplicates.csv`` with near duplicates
(perceptual-hash distance ≤ ``ingest.near_duplicate_distance``). Exact and near duplicates are grouped
(union-find) so that the split can assign whole groups and near duplicates never straddle train/val/test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving); ``roots()`` gives each element's set representative."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # smallest index represents: deterministic

    def roots(self) -> list[int]:
        return [self.find(i) for i in range(len(self.parent))]


def near_duplicate_pairs(hashes: list[str], max_distance: int, block: int = 512) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j for every pair of equal-length hex hashes within ``max_distance`` bits."""
    if len({len(h) for h in hashes}) > 1 or any(len(h) % 16 for h in hashes):
        raise ValueError("near_duplicate_pairs expects hex hashes of one length, a multiple of 64 bits")
    # Each hash as a row of uint64 words; the distance is the popcount of the XOR summed over words.
    values = np.array([[int(h[k:k + 16], 16) for k in range(0, len(h), 16)] for h in hashes], dtype=np.uint64)
    pairs = []
    for start in range(0, len(values), block):  # blocks keep the distance matrix small for big inputs
        xor = values[start:start + block, None, :] ^ values[None, :, :]
        dist = np.bitwise_count(xor).sum(axis=-1)
        for i, j in zip(*np.nonzero(dist <= max_distance)):
            if start + i < j:
                pairs.append((int(start + i), int(j), int(dist[i, j])))
    return pairs


def group_duplicates(df: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Add ``group`` (g00000…) uniting near duplicates and records sharing a user ``group_key``.

    Exact duplicates must already be dropped. Groups are numbered by their smallest sha256, so numbering does
    not depend on file order.
    """
    uf = UnionFind(len(df))
    for i, j, _ in near_duplicate_pairs(df["phash"].tolist(), max_distance):
        uf.union(i, j)
    keys = df["group_key"].tolist() if "group_key" in df else [""] * len(df)
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key:
            uf.union(first.setdefault(key, i), i)
    roots = pd.Series(uf.roots(), index=df.index)
    order = df.groupby(roots.values)["sha256"].min().sort_values()
    number = {root: f"g{k:05d}" for k, root in enumerate(order.index)}
    return df.assign(group=[number[r] for r in roots])


def drop_exact_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, str]]]:
    """Keep the first record per pixel hash; return (kept, duplicate report rows, quarantine rows).

    Identical pixels under different labels cannot both be right: every copy is quarantined.
    """
    df = df.sort_values("source", kind="stable")
    labels = df.groupby("sha256")["label"].nunique()
    conflicting = df["sha256"].map(labels) > 1
    bad = [{"source": s, "reason": "identical image found under different labels"}
           for s in df.loc[conflicting, "source"]]
    df = df[~conflicting]
    dup = df.duplicated("sha256", keep="first")
    first = df.drop_duplicates("sha256").set_index("sha256")["source"]
    report = pd.DataFrame({"source": df.loc[dup, "source"], "duplicate_of": df.loc[dup, "sha256"].map(first),
                           "kind": "exact", "distance": 0})
    return df[~dup].reset_index(drop=True), report, bad


def near_duplicate_report(df: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Rows ``source, duplicate_of, kind=near, distance`` for every near-duplicate pair."""
    pairs = near_duplicate_pairs(df["phash"].tolist(), max_distance)
    src = df["source"].tolist()
    return pd.DataFrame([{"source": src[j], "duplicate_of": src[i], "kind": "near", "distance": d}
                         for i, j, d in pairs], columns=["source", "duplicate_of", "kind", "distance"])
