"""Training arms: reviewed synthetic rows (reject, correct, content hashes), the synthetic cap, synthetic→real."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from fixtures_classifier import make_caption, make_corrections, make_generated

from tasks.classify.arms import reviewed_synthetic, select_synthetic, train_arm
from tasks.stage import StageError
from tasks.tables import read_corrections, read_generated, read_imagefolder

def _tables(tmp_path: Path):
    cap = make_caption(tmp_path / "caption", n_train=8, n_val=8)
    return read_imagefolder(cap / "train", ("small", "big")), read_imagefolder(cap / "val", ("small", "big"))




def test_reviewed_synthetic_honours_reject_and_correct(tmp_path):
    man = make_generated(tmp_path / "gen", n=6)
    names = man["file_name"].tolist()
    make_corrections(tmp_path / "review", man, {names[0]: ("reject", ""), names[1]: ("correct", "small")})
    gen = read_generated(tmp_path / "gen", ("small", "big"))
    assert len(gen) == 6  # the 2 black images are not ok
    syn = reviewed_synthetic(gen, read_corrections(tmp_path / "review", ("small", "big")))
    assert names[0] not in set(syn["file_name"])
    assert syn.set_index("file_name").loc[names[1], "label"] == "small"  # intended 'big', corrected
    assert len(syn) == 5


def test_reviewed_synthetic_leaves_out_corrections_made_on_a_different_image(tmp_path, caplog):
    man = make_generated(tmp_path / "gen", n=6)
    names = man["file_name"].tolist()
    make_corrections(tmp_path / "review", man)
    # names[2] is regenerated after review: new bytes and a new manifest sha256 at the same file name
    disc = tmp_path / "gen" / names[2]
    disc.write_bytes(disc.read_bytes() + b"regenerated")
    man.loc[2, "sha256"] = "f" * 64
    man.to_csv(tmp_path / "gen" / "manifest.csv", index=False)
    gen = read_generated(tmp_path / "gen", ("small", "big"))
    assert gen.loc[gen["file_name"] == names[2], "sha256"].item() == "f" * 64
    with caplog.at_level(logging.WARNING):
        syn = reviewed_synthetic(gen, read_corrections(tmp_path / "review", ("small", "big")))
    assert names[2] not in set(syn["file_name"]) and len(syn) == 5
    assert "1 reviewed items were decided on a different image" in caplog.text
    assert list(syn.columns) == ["file_name", "label", "path"]


def test_reviewed_synthetic_never_trusts_an_empty_sha256_and_needs_the_column(tmp_path, caplog):
    man = make_generated(tmp_path / "gen", n=4, bad=0)
    corrections = make_corrections(tmp_path / "review", man)
    gen = read_generated(tmp_path / "gen", ("small", "big"))
    corrections.loc[0, "sha256"] = ""  # a decision that predates content hashes cannot be verified
    with caplog.at_level(logging.WARNING):
        assert len(reviewed_synthetic(gen, corrections)) == 3
    assert "1 reviewed items were decided on a different image" in caplog.text
    with pytest.raises(StageError, match="corrections has no sha256"):
        reviewed_synthetic(gen, corrections.drop(columns="sha256"))



def test_select_synthetic_caps_ratio_and_absolute_and_stays_balanced(caplog):
    syn = pd.DataFrame({"file_name": [f"{i}" for i in range(40)], "label": ["a", "b"] * 20, "path": "x"})
    got = select_synthetic(syn, n_real=5, ratio=2.0, cap=None, seed=0)
    assert len(got) == 10 and got["label"].value_counts().tolist() == [5, 5]
    assert len(select_synthetic(syn, n_real=5, ratio=4.0, cap=6, seed=0)) == 6
    assert select_synthetic(syn, 5, 2.0, None, 0).equals(select_synthetic(syn, 5, 2.0, None, 0))
    with caplog.at_level(logging.WARNING):
        select_synthetic(syn, n_real=1, ratio=12.0, cap=None, seed=0)
    assert "above 10:1" in caplog.text


def test_train_arm_pretrain_then_finetune(params, tmp_path):
    train, val = _tables(tmp_path)
    syn = train.assign(source="synthetic").iloc[:4]
    p = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 1}),
                                  "retrain": params.retrain.model_copy(update={"pretrain_on_synthetic": True,
                                                                               "pretrain_epochs": 1})})
    res = train_arm(p, train, val, syn)
    assert res.meta["pretrained_on_synthetic"] == 4 and res.meta["n_train"] == len(train)


def test_train_arm_pretrains_on_a_synthetic_set_the_review_emptied_of_a_class(params, tmp_path):
    """The review may reject every synthetic image of a class: pretraining still runs, fine-tuning sees all."""
    train, val = _tables(tmp_path)
    one_class = train[train["label"] == train["label"].iloc[0]].assign(source="synthetic").iloc[:3]
    p = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 1}),
                                  "retrain": params.retrain.model_copy(update={"pretrain_on_synthetic": True,
                                                                               "pretrain_epochs": 1})})
    res = train_arm(p, train, val, one_class)
    assert res.meta["pretrained_on_synthetic"] == 3
    with pytest.raises(StageError, match="without training images"):
        train_arm(p.model_copy(update={"retrain": p.retrain.model_copy(update={"pretrain_on_synthetic": False})}),
                  train.iloc[:0], val, one_class)
