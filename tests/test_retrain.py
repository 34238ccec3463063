"""retrain: reviewed synthetic only (reject excluded, corrections applied), mix cap, loadable model."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_classifier import make_caption, make_corrections, make_generated  # noqa: E402

from tasks import retrain  # noqa: E402
from tasks.classify.models import load_model  # noqa: E402
from tasks.stage import StageError  # noqa: E402
from tasks.validation import ValidationFailed  # noqa: E402


def _setup(params, ratio=4.0, cap=None):
    P = params.paths
    make_caption(P.caption, n_train=8, n_val=8)
    man = make_generated(P.generate, n=20)
    names = man["file_name"].tolist()
    make_corrections(P.review, man, {names[0]: ("reject", ""), names[1]: ("reject", ""),
                                     names[3]: ("correct", "small")})
    return params.model_copy(update={
        "baseline": params.baseline.model_copy(update={"epochs": 1}),
        "retrain": params.retrain.model_copy(update={"synthetic_ratio": ratio, "synthetic_cap": cap})})


def test_run_uses_reviewed_items_and_honours_reject_and_correct(params):
    p = _setup(params, ratio=10.0)
    P = p.paths
    synth, n = retrain.synthetic_for_training(p, P.generate, P.review, n_real=8, seed=0)
    assert n == 18 and len(synth) == 18  # 20 ok − 2 rejected
    # images 0,1 were rejected; image 3 (intended 'big') was corrected to 'small'
    assert synth["label"].value_counts().to_dict() == {"small": 10, "big": 8}
    out = retrain.run(p, caption=P.caption, generated=P.generate, review=P.review, out_dir=P.retrain)
    assert out.metrics["n_synthetic_used"] == 18 and out.metrics["n_real"] == 8
    assert load_model(P.retrain)[1]["n_train_synthetic"] == 18


def test_run_caps_the_synthetic_share(params):
    p = _setup(params, ratio=1.0, cap=6)
    P = p.paths
    out = retrain.run(p, caption=P.caption, generated=P.generate, review=P.review, out_dir=P.retrain)
    assert out.metrics["n_synthetic_used"] == 6  # min(1.0 × 8 real, cap 6)
    assert out.metrics["n_synthetic_small"] == out.metrics["n_synthetic_big"] == 3


def test_synthetic_for_training_leaves_out_labels_given_to_a_different_image(params, caplog):
    p = _setup(params, ratio=10.0)
    P = p.paths
    man = pd.read_csv(P.generate / "manifest.csv", dtype=str, keep_default_na=False)
    regenerated = man.loc[5, "file_name"]  # accepted in review, then regenerated: new content, same file name
    man.loc[5, "sha256"] = "e" * 64
    man.to_csv(P.generate / "manifest.csv", index=False)
    synth, n = retrain.synthetic_for_training(p, P.generate, P.review, n_real=8, seed=0)
    assert n == 17 and regenerated not in set(synth["file_name"])
    assert "1 reviewed items were decided on a different image" in caplog.text


def test_run_refuses_invalid_corrections(params):
    p = _setup(params)
    path = p.paths.review / "corrections.csv"
    path.write_text(path.read_text().replace(",accept,", ",maybe,", 1))
    with pytest.raises(ValidationFailed, match="decision"):
        retrain.run(p, caption=p.paths.caption, generated=p.paths.generate, review=p.paths.review,
                    out_dir=p.paths.retrain)


def test_run_without_review_is_a_clear_error(params):
    p = _setup(params)
    (p.paths.review / "corrections.csv").unlink()
    with pytest.raises(StageError, match="run the review stage first"):
        retrain.run(p, caption=p.paths.caption, generated=p.paths.generate, review=p.paths.review,
                    out_dir=p.paths.retrain)
