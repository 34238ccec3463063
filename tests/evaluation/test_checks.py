"""The report's section on predict's checks: the quality gate and memorisation counts, from predict's tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from review_fixtures import predictions_frame  # noqa: E402

from tasks.evaluation.checks import checks_blocks, generation_checks  # noqa: E402
from tasks.evaluation.report import render_markdown  # noqa: E402
from tasks.stage import StageError  # noqa: E402
from tasks.tables import write_class_quality, write_predictions  # noqa: E402


def _predict_tables(folder: Path, classes) -> None:
    preds = predictions_frame(classes=classes)
    copy = preds["file_name"].iloc[0]
    preds.loc[0, ["memorised", "nearest_real", "phash_distance"]] = [True, "small/real-007.png", 0]
    write_predictions(folder, preds, classes)
    write_class_quality(folder, pd.DataFrame({
        "class": list(classes), "n_generated": [3, 2], "n_real": [8, 8], "fid": [1.5, 40.0],
        "precision": [0.8, 0.0], "recall": [0.6, 0.0], "out_of_manifold": [False, True],
        "note": ["", "precision 0.000 < predict.min_class_precision 0.1"]}), classes)
    return copy


def test_generation_checks_count_copies_and_name_the_flagged_class(params, tmp_path):
    copy = _predict_tables(tmp_path, params.classes)
    checks = generation_checks(params, tmp_path)
    assert checks["out_of_manifold"] == ["big"] and checks["n_memorised"] == 1
    assert checks["memorised_examples"][0]["file_name"] == copy
    text = render_markdown(checks_blocks({"generation_checks": checks}))
    assert "OUT OF THE REAL MANIFOLD: big" in text and "1 of 5 generated images (20.0%)" in text
    assert "small/real-007.png" in text


def test_no_checks_means_no_section():
    assert checks_blocks({}) == [] and checks_blocks({"generation_checks": None}) == []


def test_generation_checks_without_predict_tables_is_a_clear_error(params, tmp_path):
    with pytest.raises(StageError, match="run the predict stage"):
        generation_checks(params, tmp_path)
