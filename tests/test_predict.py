"""predict: uncertainty columns, the review order, and the stage on tiny fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_classifier import make_caption, make_corrections, make_generated  # noqa: E402
from PIL import Image  # noqa: E402

from tasks import baseline, predict, retrain  # noqa: E402
from tasks.classify.models import ModelLoadError  # noqa: E402
from tasks.io import sha256_file  # noqa: E402
from tasks.review.queue import load_queue  # noqa: E402
from tasks.tables import memorised_files, read_class_quality, write_class_quality  # noqa: E402
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


# ------------------------------------------------------------------------ quality gate and memorisation check
def _copy_into_generated(gen_dir: Path, manifest: pd.DataFrame, target: str, image: Image.Image) -> None:
    """Put ``image`` at generated file ``target`` and record its new sha256 (what a memorising model would do)."""
    image.save(gen_dir / target)
    manifest.loc[manifest["file_name"] == target, "sha256"] = sha256_file(gen_dir / target)
    manifest.to_csv(gen_dir / "manifest.csv", index=False)


def test_copies_of_train_images_are_flagged_kept_from_review_and_dropped_before_retrain(params):
    P = params.paths
    make_caption(P.caption, n_train=8, n_val=8)
    man = make_generated(P.generate, n=10, bad=0)
    exact, noisy = "images/small/000000.png", "images/small/000002.png"
    train0 = Image.open(P.caption / "train" / "train_000.png")
    _copy_into_generated(P.generate, man, exact, train0.copy())
    arr = np.asarray(Image.open(P.caption / "train" / "train_002.png"), dtype=float)
    noised = np.clip(arr + np.random.default_rng(5).normal(0, 2, arr.shape), 0, 255).astype(np.uint8)
    _copy_into_generated(P.generate, man, noisy, Image.fromarray(noised))
    p = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 1})})
    baseline.run(p, caption=P.caption, out_dir=P.baseline)
    out = predict.run(p, model=P.baseline, generated=P.generate, caption=P.caption, out_dir=P.predict)
    df = pd.read_csv(out.predictions).set_index("file_name")
    assert set(df.index[df["memorised"]]) == {exact, noisy}  # unrelated generated images are not flagged
    assert df.loc[exact, "nearest_real"] == "train_000.png" and df.loc[exact, "phash_distance"] == 0
    assert df.loc[exact, "feature_distance"] == pytest.approx(0, abs=1e-9)
    assert df.loc[noisy, "nearest_real"] == "train_002.png"
    assert out.metrics["n_memorised"] == 2 and out.metrics["n_memorised_small"] == 2
    # the review queue never shows them; retrain (and evaluate's arm) never trains on them
    queue = load_queue(P.predict, P.generate, p.classes)
    assert not {exact, noisy} & set(queue["file_name"]) and len(queue) == 8
    make_corrections(P.review, pd.read_csv(P.generate / "manifest.csv", keep_default_na=False))  # decided earlier
    p10 = p.model_copy(update={"retrain": p.retrain.model_copy(update={"synthetic_ratio": 10.0})})
    synth, n = retrain.synthetic_for_training(p10, P.generate, P.review, 8, 0, predict=P.predict)
    assert n == 8 and not {exact, noisy} & set(synth["file_name"])
    assert memorised_files(P.predict, p.classes) == {exact, noisy}


def test_run_writes_the_class_quality_table_and_flags_an_off_manifold_class(params):
    P = params.paths
    make_caption(P.caption, n_train=16, n_val=8)
    man = make_generated(P.generate, n=12, bad=0)
    rng = np.random.default_rng(9)
    for name in man.loc[man["intended_label"] == "big", "file_name"]:  # 'big' renders as noise: off the manifold
        _copy_into_generated(P.generate, man, name, Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)))
    p = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 3})})
    baseline.run(p, caption=P.caption, out_dir=P.baseline)
    out = predict.run(p, model=P.baseline, generated=P.generate, caption=P.caption, out_dir=P.predict)
    quality = read_class_quality(P.predict, p.classes).set_index("class")
    assert quality.loc["big", "out_of_manifold"] and not quality.loc["small", "out_of_manifold"]
    assert quality.loc["big", "precision"] < p.predict.min_class_precision <= quality.loc["small", "precision"]
    assert quality.loc["big", "fid"] > quality.loc["small", "fid"]
    assert "predict.min_class_precision" in quality.loc["big", "note"]
    assert out.metrics["n_classes_out_of_manifold"] == 1 and out.class_quality == P.predict / "class_quality.csv"
    assert out.metrics["class_precision_big"] == pytest.approx(quality.loc["big", "precision"], abs=1e-6)


def test_class_quality_table_with_an_unknown_class_fails_its_suite(params, tmp_path):
    bad = pd.DataFrame({"class": ["small", "huge"], "n_generated": [3, 3], "n_real": [4, 4], "fid": [1.0, 2.0],
                        "precision": [0.5, 0.0], "recall": [0.5, 0.0], "out_of_manifold": [False, True],
                        "note": ["", "x"]})
    with pytest.raises(ValidationFailed, match="class_quality"):
        write_class_quality(tmp_path, bad, params.classes)
    assert not (tmp_path / "class_quality.csv").exists()
