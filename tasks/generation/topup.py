"""Top-up: when the filters (``tasks.generation.filters``) drop images of a class, generate replacements so each
class still reaches its planned count — at most ``generate.top_up_rounds`` extra rounds.

A round's rows are a pure function of the plan so far and the statuses its images got: per class, as many new
rows as ok images are missing, laid out in fresh shards after the last one (the unit of resume), with indices
continuing the plan's, seeds derived from those indices (``derive_seed``), and the prompt settings of the class's
planned rows, cycled. Each row carries ``top_up_round`` (0 = planned, r = round r) into the manifest.

Resume: on the same machine an image's bytes (hence its status) are deterministic, so after a kill the rounds
that were already under way are re-derived identically from what is on disk (``extend_known_plan``), reconcile
keeps their images, and only what is missing is generated — the same set as an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.generation.filters import mark_duplicates
from tasks.generation.plan import _IMAGES, _interleave, _recipe, derive_seed
from tasks.generation.shards import _read_shard_manifests
from tasks.io import sha256_file
from tasks.sections_diffusion import Generate

#: Plan/manifest column: 0 for a planned image, r for one generated in top-up round r.
TOP_UP = "top_up_round"


def verified_rows(out_dir: Path, plan: pd.DataFrame) -> pd.DataFrame:
    """Shard-manifest rows of ``plan`` whose recipe matches and whose file on disk has the recorded sha256.

    Read-only (unlike ``shards.reconcile``): used to decide which top-up rounds can be known yet.
    """
    rows = _read_shard_manifests(out_dir)
    if rows.empty:
        return rows
    rows = rows.drop(columns=[TOP_UP], errors="ignore").merge(
        plan[["file_name", "recipe", TOP_UP]], on=["file_name", "recipe"], how="inner").drop_duplicates("file_name")
    ok = [(out_dir / f).is_file() and sha256_file(out_dir / f) == h for f, h in zip(rows["file_name"], rows["sha256"])]
    return rows[np.array(ok, dtype=bool)].reset_index(drop=True) if len(rows) else rows


def shortfall(plan: pd.DataFrame, rows: pd.DataFrame) -> dict[str, int]:
    """Per class: planned images (``top_up_round == 0``) minus ``ok`` images so far (duplicates flagged first)."""
    planned = plan.loc[plan[TOP_UP] == 0, "intended_label"].value_counts()
    marked = mark_duplicates(rows) if len(rows) else rows
    ok = marked.loc[marked["status"] == "ok", "intended_label"].value_counts() if len(rows) else pd.Series(dtype=int)
    return {c: max(0, int(n) - int(ok.get(c, 0))) for c, n in planned.items()}


def top_up_rows(plan: pd.DataFrame, rows: pd.DataFrame, g: Generate, run_seed: int) -> pd.DataFrame:
    """The next round's rows (empty when no class falls short or ``generate.top_up_rounds`` are used up).

    ``rows`` must hold a manifest row (status, sha256, index) for every row of ``plan``.
    """
    missing = set(plan["file_name"]) - set(rows["file_name"]) if len(rows) else set(plan["file_name"])
    if missing:
        raise ValueError(f"top_up_rows: {len(missing)} planned images have no manifest row yet "
                         f"(e.g. {sorted(missing)[:3]})")
    round_no = int(plan[TOP_UP].max()) + 1
    deficit = {c: n for c, n in shortfall(plan, rows).items() if n > 0}
    if not deficit or round_no > g.top_up_rounds:
        return plan.iloc[0:0]
    templates = {c: plan[(plan["intended_label"] == c) & (plan[TOP_UP] == 0)].sort_values("index").to_dict("records")
                 for c in deficit}
    used = plan["intended_label"].value_counts().to_dict()  # rows of each class so far: where its cycle continues
    start, first_shard = int(plan["index"].max()) + 1, int(plan["shard"].max()) + 1
    out, seen = [], dict.fromkeys(deficit, 0)
    for k, label in enumerate(_interleave(deficit)):
        src = templates[label][(used[label] + seen[label]) % len(templates[label])]
        seen[label] += 1
        index, (shard, in_shard) = start + k, divmod(k, g.shard_size)
        row = {**src, "index": index, "file_name": f"{_IMAGES}/{label}/{index:06d}.png",
               "seed": derive_seed(run_seed, index), "shard": first_shard + shard,
               "batch": in_shard // g.batch_size, "slot": in_shard % g.batch_size, TOP_UP: round_no}
        row["recipe"] = _recipe(row, g)
        out.append(row)
    return pd.DataFrame(out, columns=plan.columns)


def extend_known_plan(out_dir: Path, plan: pd.DataFrame, g: Generate, run_seed: int) -> pd.DataFrame:
    """``plan`` plus every top-up round that the images already on disk determine (resume after a kill)."""
    while True:
        rows = verified_rows(out_dir, plan)
        if len(rows) < len(plan):
            return plan
        extra = top_up_rows(plan, rows, g, run_seed)
        if extra.empty:
            return plan
        plan = pd.concat([plan, extra], ignore_index=True)
