"""predict: uncertainty columns, the review order, and the stage on tiny fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_classifier import make_caption, make_generated  # noqa: E402

from tasks import baseline, predict  # noqa: E402
from tasks.classify.models import ModelLoadError  # noqa: E402
from tasks.validation import ValidationFailed  # noqa: E402


def test_uncertainty_values():
    u = predict.uncertainty(np.array([[0.9, 0.1], [0.5, 0.5]]))
    assert u["confidence"].tolist() == pytest.approx([0.9, 0.5])
    assert u["margin"].tolist() == pytest.approx([0.8, 0.0])
    assert u["entropy"].tolist() == pytest.approx([-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)), np.log(2)])
    with pytest.raises(ValueError, match="N×K"):
        predict.uncertainty(np.array([0.5, 0.5]))


def test_review_order_puts_disagreements_then_small_margins_first():
    gen = pd.DataFrame({"file_name": ["d", "c", "b", "a"], "intended_label": ["big", "big", "small", "small"]})
    proba = np.array([[0.45, 0.55],   # d: agrees (big), margin 0.1
                      [0.9, 0.1],     # c: disagrees, margin 0.8
                      [0.6, 0.4],     # b: agrees (small), margin 0.2
                      [0.2, 0.8]])    # a: disagrees, margin 0.6
    table = predict.prediction_table(gen, proba, ("small", "big"))
    assert table["file_name"].tolist() == ["a", "c", "d", "b"]
    assert table["review_rank"].tolist() == [1, 2, 3, 4]
    assert table["agrees"].tolist() == [False, False, True, True]


def test_review_order_tie_break_is_file_name():
    gen = pd.DataFrame({"file_name": ["z", "m", "a"], "intended_label": ["small"] * 3})
    table = predict.prediction_table(gen, np.array([[0.7, 0.3]] * 3), ("small", "big"))
    assert table["file_name"].tolist() == ["a", "m", "z"]


def test_prediction_table_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="probability rows"):
        predict.prediction_table(pd.DataFrame({"file_name": ["a"], "intended_label": ["big"]}),
                                 np.zeros((2, 2)), ("small", "big"))


def test_run_labels_ok_images_and_validates(params):
    P = params.paths
    make_caption(P.caption, n_train=8, n_val=8)
    make_generated(P.generate, n=10, bad=3)
    p = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 1})})
    baseline.run(p, caption=P.caption, out_dir=P.baseline)
    out = predict.run(p, model=P.baseline, generated=P.generate, caption=P.caption, out_dir=P.predict)
    df = pd.read_csv(out.predictions)
    assert len(df) == 10 and out.metrics["n_predicted"] == 10  # black images are not labelled
    assert np.allclose(df[["p_small", "p_big"]].sum(axis=1), 1.0)
    assert df["review_rank"].tolist() == list(range(1, 11))
    assert 0 <= out.metrics["agreement_rate"] <= 1
    # calibrated on the 8 val images: T fitted, raw kept, the reliability diagram written for both
    assert out.metrics["n_calibration"] == 8 and out.metrics["temperature"] > 0
    assert {"ece_raw", "ece_calibrated", "nll_raw", "nll_calibrated"} <= set(out.metrics)
    assert out.metrics["nll_calibrated"] <= out.metrics["nll_raw"] + 1e-6
    assert (df["pred_label"] == np.where(df["p_small"] >= df["p_big"], "small", "big")).all()
    reliability = pd.read_csv(P.predict / "reliability.csv")
    assert set(reliability["stage"]) == {"raw", "calibrated"} and reliability["count"].sum() == 16


def test_prediction_table_calibrated_columns_follow_the_temperature():
    gen = pd.DataFrame({"file_name": ["a", "b"], "intended_label": ["small", "big"]})
    proba = np.array([[0.99, 0.01], [0.3, 0.7]])
    raw = predict.prediction_table(gen, proba, ("small", "big"))
    soft = predict.prediction_table(gen, proba, ("small", "big"), temperature=3.0)
    assert raw["confidence_calibrated"].tolist() == pytest.approx(raw["confidence"].tolist())
    assert (soft["confidence_calibrated"] < soft["confidence"]).all()  # T > 1 softens
    assert soft["pred_label"].tolist() == raw["pred_label"].tolist()


def test_run_without_val_images_is_a_clear_error(params):
    P = params.paths
    make_caption(P.caption, n_train=8, n_val=2)
    make_generated(P.generate, n=4)
    p = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 1})})
    baseline.run(p, caption=P.caption, out_dir=P.baseline)
    pd.DataFrame(columns=["file_name", "text", "label"]).to_csv(P.caption / "val" / "metadata.csv", index=False)
    with pytest.raises(ValidationFailed, match="caption_metadata"):
        predict.run(p, model=P.baseline, generated=P.generate, caption=P.caption, out_dir=P.predict)


def test_run_without_model_is_a_clear_error(params):
    make_generated(params.paths.generate, n=4)
    with pytest.raises(ModelLoadError, match="run its stage first"):
        predict.run(params, model=params.paths.baseline, generated=params.paths.generate, caption=params.paths.caption,
                    out_dir=params.paths.predict)
