"""What evaluate trains: one ``Job`` per arm (or curve point) × repeat × backbone, each a data set and a seed.

Repeat ``r`` varies what a user's next run would vary: the classifier seed (``seed + r``), the synthetic subset
drawn (same seed) and the train/val split of the ingest trainval pool (re-drawn stratified by label, whole
near-duplicate groups together, with ``tasks.intake.split``); the test split never moves. Repeat 0 is the
pipeline's own split, so the baseline and retrain stage models are reused there.

Identical jobs (same data in the same order, same seed and recipe) share one training: ``Job.key`` is their
fingerprint, so the curves' end points reuse the arms' trainings.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from tasks.classify.arms import reviewed_synthetic, select_synthetic
from tasks.intake.split import assign_splits
from tasks.params import Params
from tasks.stage import StageError
from tasks.tables import reviewer_kind

#: How each arm (``stats.ARMS``) trains: which synthetic pool, pretrain-then-fine-tune, strong augmentation.
ARM_RECIPES: dict[str, tuple[str | None, bool, bool]] = {
    "real": (None, False, False),
    "real+augment": (None, False, True),
    "real+synthetic_intended": ("intended", False, False),
    "real+synthetic_pseudo": ("pseudo", False, False),
    "real+synthetic_reviewed": ("reviewed", False, False),
    "synthetic->real": ("reviewed", True, False),
}


@dataclass(frozen=True)
class Job:
    """One training of the comparison: ``name`` is the arm (or curve point), ``group`` arms/ratio/effort."""

    group: str
    name: str
    backbone: str
    repeat: int
    seed: int
    train: pd.DataFrame
    val: pd.DataFrame
    synthetic: pd.DataFrame | None
    pretrain: bool
    strong_augment: bool
    x: float = math.nan  # the curve's x value (synthetic images, decisions); NaN for an arm

    @property
    def key(self) -> str:
        """Fingerprint of everything that decides the trained weights."""
        h = hashlib.sha1(f"{self.backbone}|{self.seed}|{self.pretrain}|{self.strong_augment}".encode())
        for table in (self.train, self.val, self.synthetic):
            rows = [] if table is None else zip(table["path"], table["label"],
                                                table["weight"] if "weight" in table else [1.0] * len(table))
            h.update(("\n".join(f"{p}\t{lbl}\t{w}" for p, lbl, w in rows) + "\x00").encode())
        return h.hexdigest()


def trainval_splits(params: Params, stage_train: pd.DataFrame, stage_val: pd.DataFrame, pool: pd.DataFrame,
                    repeat: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) of one repeat: the stage's own split at repeat 0, else a re-drawn group-aware split of
    ``pool`` (the ingest trainval manifest with ``path``) in the same proportions, seeded by ``seed + repeat``."""
    if repeat == 0:
        return stage_train, stage_val
    share = len(stage_train) / (len(stage_train) + len(stage_val))
    split = assign_splits(pool, {"train": share, "val": 1 - share}, params.seed + repeat)
    out = []
    for name in ("train", "val"):
        part = pool[split == name]
        if part["label"].nunique() < len(params.classes):
            raise StageError(f"repeat {repeat}: the re-drawn {name} split lacks a class; the trainval pool is too "
                             "small for evaluate.repeats re-splits (lower evaluate.repeats or add images)")
        out.append(pd.DataFrame({"path": part["path"].to_numpy(), "label": part["label"].to_numpy(),
                                 "weight": 1.0, "source": "real"}))
    return out[0], out[1]


def reviewer_decisions(corrections: pd.DataFrame) -> pd.Series:
    """True for the decisions a reviewer made (a person, or a simulated one); False for automatic ones
    (``auto:...``: accept-confident, beyond-budget), which cost no review time."""
    if "reviewer" not in corrections:
        return pd.Series(True, index=corrections.index)
    return corrections["reviewer"].fillna("").astype(str).str.strip().map(reviewer_kind) != "automatic"


def effort_pool(generated: pd.DataFrame, corrections: pd.DataFrame, intended: pd.DataFrame,
                order: Sequence[str], k: int) -> pd.DataFrame:
    """Synthetic rows after the first ``k`` *reviewer* decisions in ``order`` (queue order): those images carry
    their reviewed label (rejects dropped), as do the automatic decisions (accept-confident, beyond-budget: they
    cost no review time, so every point of the curve has them); every other image keeps its intended class, as
    in the intended arm. At k = all reviewer decisions this is the reviewed arm's pool."""
    rank = {f: i for i, f in enumerate(order)}
    by_reviewer = reviewer_decisions(corrections)
    ranked = corrections[by_reviewer].assign(_rank=corrections["file_name"].map(rank).fillna(len(rank)))
    first = ranked.sort_values("_rank", kind="stable").head(k).drop(columns="_rank")
    applied = pd.concat([corrections[~by_reviewer], first])
    decided = set(applied["file_name"])
    reviewed = reviewed_synthetic(generated, applied) if len(applied) else intended.iloc[:0]
    rest = intended[~intended["file_name"].isin(decided)]
    return pd.concat([reviewed, rest], ignore_index=True).sort_values("file_name", kind="stable") \
        .reset_index(drop=True)


def _job(params: Params, group: str, name: str, backbone: str, repeat: int, train: pd.DataFrame,
         val: pd.DataFrame, synthetic: pd.DataFrame | None, pretrain: bool = False, strong: bool = False,
         x: float = math.nan) -> Job:
    if synthetic is not None and synthetic.empty:
        synthetic = None
    return Job(group, name, backbone, repeat, params.seed + repeat, train, val, synthetic, pretrain, strong, x)


def plan_jobs(params: Params, splits: list[tuple[pd.DataFrame, pd.DataFrame]], pools: dict[str, pd.DataFrame],
              effort: dict[int, pd.DataFrame]) -> list[Job]:
    """Every arm × repeat × backbone, then the two curves (first ``evaluate.curve_repeats`` repeats, first
    backbone): reviewed images at ``evaluate.curve_ratios`` × real, and review decisions applied (``effort``:
    k → pool)."""
    e, r = params.evaluate, params.retrain
    jobs = []
    for repeat, (train, val) in enumerate(splits):
        seed = params.seed + repeat
        for backbone in e.backbones:
            for arm in e.arms:
                pool, pretrain, strong = ARM_RECIPES[arm]
                synth = None if pool is None else select_synthetic(pools[pool], len(train), r.synthetic_ratio,
                                                                   r.synthetic_cap, seed)
                jobs.append(_job(params, "arms", arm, backbone, repeat, train, val, synth, pretrain, strong))
        if repeat >= e.curve_repeats:
            continue
        backbone = e.backbones[0]
        for ratio in e.curve_ratios:
            synth = select_synthetic(pools["reviewed"], len(train), ratio, None, seed)
            jobs.append(_job(params, "ratio", f"reviewed x{ratio:g}", backbone, repeat, train, val, synth,
                             x=float(len(synth))))
        for k, pool in effort.items():
            synth = select_synthetic(pool, len(train), r.synthetic_ratio, r.synthetic_cap, seed)
            jobs.append(_job(params, "effort", f"{k} decisions", backbone, repeat, train, val, synth, x=float(k)))
    return jobs


def effort_steps(n_decisions: int, fractions: Sequence[float]) -> list[int]:
    """Decision counts of the review-effort curve: ``fractions`` of all decisions, rounded, distinct."""
    return sorted({round(f * n_decisions) for f in fractions})
