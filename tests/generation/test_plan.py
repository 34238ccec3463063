"""Generation plan: class counts, balance, prompts and negatives, derived seeds, shard/batch layout."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.generation import plan as P
from tasks.stage import StageError

from conftest import make_params

CLASSES = ["small", "big"]
PROMPTS = {"classes": CLASSES,
           "instance_prompts": {c: f"photo of zwx {c} hip xray" for c in CLASSES},
           "class_prompt": "photo of a hip xray"}


def test_class_counts_balanced_and_by_ratio():
    assert P.class_counts(CLASSES, 7) == {"small": 4, "big": 3}
    assert P.class_counts(CLASSES, 10, {"small": 3, "big": 1}) == {"small": 8, "big": 2}
    assert sum(P.class_counts(["a", "b", "c"], 10_000, {"a": 1, "b": 1, "c": 1}).values()) == 10_000


def test_class_counts_rejects_ratio_keys_that_are_not_the_classes():
    with pytest.raises(ValueError, match="unknown: \\['medium'\\]"):
        P.class_counts(CLASSES, 10, {"small": 1, "medium": 1})


def test_plan_is_balanced_deterministic_and_laid_out_in_shards(tmp_path):
    params = make_params(tmp_path, {"generate": {"num_images": 10, "batch_size": 2, "shard_size": 4,
                                                 "prompt_templates": ["{prompt}", "{prompt}, sharp"]}})
    plan = P.plan_generation(params, PROMPTS, model_hash="m", image_size=32)
    again = P.plan_generation(params, PROMPTS, model_hash="m", image_size=32)
    pd.testing.assert_frame_equal(plan, again)
    assert plan["intended_label"].value_counts().to_dict() == {"small": 5, "big": 5}
    assert plan.groupby("shard")["intended_label"].nunique().min() == 2  # interleaved: every shard has both
    assert plan["seed"].is_unique and plan["file_name"].is_unique
    assert list(plan["shard"]) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert list(plan["batch"][:4]) == [0, 0, 1, 1] and list(plan["slot"][:4]) == [0, 1, 0, 1]
    small = plan[plan["intended_label"] == "small"]["prompt"].tolist()
    assert small[:2] == ["photo of zwx small hip xray", "photo of zwx small hip xray, sharp"]
    other = P.plan_generation(make_params(tmp_path, {"seed": 7}), PROMPTS, model_hash="m", image_size=32)
    assert not set(other["seed"]) & set(P.plan_generation(make_params(tmp_path), PROMPTS, image_size=32)["seed"])


def test_plan_class_negatives_follow_the_template_and_join_the_users(tmp_path):
    prompts = {**PROMPTS, "negative_prompts": {"small": "photo of zwx big hip xray",
                                               "big": "photo of zwx small hip xray"}}
    params = make_params(tmp_path, {"generate": {"num_images": 4, "prompt_templates": ["{prompt}", "{prompt}, sharp"]}})
    plan = P.plan_generation(params, prompts, image_size=32)
    small = plan[plan["intended_label"] == "small"]["negative_prompt"].tolist()
    assert small == ["photo of zwx big hip xray", "photo of zwx big hip xray, sharp"]
    user = make_params(tmp_path, {"generate": {"num_images": 2, "negative_prompt": "blurry"}})
    assert P.plan_generation(user, prompts, image_size=32)["negative_prompt"].tolist() == [
        "photo of zwx big hip xray | blurry", "photo of zwx small hip xray | blurry"]
    assert set(P.plan_generation(user, PROMPTS, image_size=32)["negative_prompt"]) == {"blurry"}
    assert set(P.plan_generation(make_params(tmp_path), PROMPTS, image_size=32)["negative_prompt"]) == {""}


def test_plan_from_captions_cycles_each_class_captions_and_negates_the_others(tmp_path):
    prompts = {**PROMPTS, "negative_prompts": {"small": "photo of zwx big hip xray", "big": "photo of zwx small hip xray"},
               "caption_prompts": {"small": ["s1", "s2", "s3"], "big": ["b1", "b2"]}}
    params = make_params(tmp_path, {"generate": {"num_images": 8, "prompt_source": "captions"}})
    plan = P.plan_generation(params, prompts, image_size=32)
    small, big = (plan[plan["intended_label"] == c] for c in ("small", "big"))
    assert small["prompt"].tolist() == ["s1", "s2", "s3", "s1"] and big["prompt"].tolist() == ["b1", "b2", "b1", "b2"]
    assert small["negative_prompt"].tolist() == ["b1", "b2", "b1", "b2"]  # the other class's caption at the same k
    assert big["negative_prompt"].tolist() == ["s1", "s2", "s3", "s1"]
    off = {k: v for k, v in prompts.items() if k != "negative_prompts"}
    assert set(P.plan_generation(params, off, image_size=32)["negative_prompt"]) == {""}
    with pytest.raises(StageError, match="no caption_prompts.*dvc repro caption"):
        P.plan_generation(params, PROMPTS, image_size=32)


def test_derive_seed_is_stable_across_processes_and_versions():
    # A fixed value: a change of hashing (e.g. Python's salted hash()) would silently change every image.
    assert P.derive_seed(100, 0) == 1868645343657104397
    assert 0 <= P.derive_seed(100, 9999) < 2**63


def test_plan_rejects_missing_instance_prompt_and_bad_size(tmp_path):
    params = make_params(tmp_path)
    broken = {"classes": CLASSES, "instance_prompts": {"small": "x"}}
    with pytest.raises(StageError, match="missing: \\['big'\\]"):
        P.plan_generation(params, broken, image_size=32)
    with pytest.raises(StageError, match="multiple of 8"):
        P.plan_generation(params, PROMPTS, image_size=30)


def test_params_reject_template_without_prompt_placeholder(tmp_path):
    from tasks.params import ParamsError

    with pytest.raises(ParamsError, match="prompt_templates"):
        make_params(tmp_path, {"generate": {"prompt_templates": ["no placeholder"]}})
