"""Top-up rounds: per class, as many replacement rows as ok images are missing; deterministic layout and seeds."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.generation.plan import _recipe, derive_seed
from tasks.generation.topup import TOP_UP, shortfall, top_up_rows
from tasks.sections_diffusion import Generate

G = Generate(num_images=6, batch_size=2, shard_size=4, top_up_rounds=2)


def _plan(labels=("a", "b", "a", "b", "a", "b")) -> pd.DataFrame:
    rows = []
    for i, lbl in enumerate(labels):
        shard, k = divmod(i, G.shard_size)
        row = {"index": i, "file_name": f"images/{lbl}/{i:06d}.png", "intended_label": lbl,
               "prompt": f"zwx {lbl} v{i}", "negative_prompt": "", "seed": derive_seed(7, i), "scheduler": "ddim",
               "steps": 2, "guidance": 3.0, "height": 32, "width": 32, "channels": 1, "model_hash": "m", "shard": shard,
               "batch": k // G.batch_size, "slot": k % G.batch_size, TOP_UP: 0}
        row["recipe"] = _recipe(row, G)
        rows.append(row)
    return pd.DataFrame(rows)


def _rows(plan: pd.DataFrame, statuses: dict[int, str]) -> pd.DataFrame:
    return plan.assign(status=[statuses.get(i, "ok") for i in plan["index"]],
                       sha256=[f"{i:064x}" for i in plan["index"]])


def test_a_round_replaces_exactly_the_filtered_images_of_each_class():
    plan = _plan()
    rows = _rows(plan, {0: "black", 2: "nan", 3: "constant"})  # class a lost 2, class b lost 1
    assert shortfall(plan, rows) == {"a": 2, "b": 1}
    extra = top_up_rows(plan, rows, G, run_seed=7)
    assert extra["intended_label"].value_counts().to_dict() == {"a": 2, "b": 1}
    assert extra["index"].tolist() == [6, 7, 8] and set(extra[TOP_UP]) == {1}
    assert extra["seed"].tolist() == [derive_seed(7, i) for i in (6, 7, 8)]
    assert extra["shard"].min() == plan["shard"].max() + 1  # fresh shards: finished ones are never reopened
    assert extra["file_name"].tolist()[0] == f"images/{extra['intended_label'].iloc[0]}/000006.png"
    assert all(r == _recipe(row, G) for r, row in zip(extra["recipe"], extra.to_dict("records")))
    again = top_up_rows(plan, rows, G, run_seed=7)
    pd.testing.assert_frame_equal(extra, again)  # a pure function of the plan and the statuses


def test_duplicates_count_as_missing_and_rounds_are_bounded():
    plan = _plan()
    rows = _rows(plan, {})
    rows.loc[rows["index"] == 4, "sha256"] = rows.loc[rows["index"] == 0, "sha256"].iloc[0]  # a repeats itself
    assert shortfall(plan, rows) == {"a": 1, "b": 0}
    plan1 = pd.concat([plan, top_up_rows(plan, rows, G, 7)], ignore_index=True)
    rows1 = pd.concat([rows, _rows(plan1.iloc[len(plan):], {6: "black"})], ignore_index=True)
    plan2 = pd.concat([plan1, top_up_rows(plan1, rows1, G, 7)], ignore_index=True)
    assert plan2[TOP_UP].max() == 2
    rows2 = pd.concat([rows1, _rows(plan2.iloc[len(plan1):], {7: "black"})], ignore_index=True)
    assert top_up_rows(plan2, rows2, G, 7).empty  # generate.top_up_rounds = 2 used up, shortfall stays
    assert shortfall(plan2, rows2) == {"a": 1, "b": 0}


def test_nothing_filtered_means_no_round():
    plan = _plan()
    assert top_up_rows(plan, _rows(plan, {}), G, 7).empty


def test_rows_missing_for_planned_images_are_an_error():
    plan = _plan()
    with pytest.raises(ValueError, match="no manifest row yet"):
        top_up_rows(plan, _rows(plan, {}).iloc[:3], G, 7)
