"""tasks/diffusion/previews.py: image flags, validation prompts/negatives and grids, the class-spread row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import make_params
from dreambooth_fixtures import SIZE, write_caption
from tasks.diffusion.previews import class_spread, image_flags, validation_grid, validation_prompts


def test_image_flags_name_black_constant_nan() -> None:
    ok = np.random.default_rng(0).random((4, 4, 3))
    imgs = np.stack([ok, np.zeros((4, 4, 3)), np.full((4, 4, 3), 0.5), np.where(ok > 0.5, np.nan, ok)])
    assert image_flags(imgs) == ["ok", "black", "constant", "nan"]


def test_validation_uses_the_class_negatives_of_prompts_json(tmp_path: Path) -> None:
    from tasks.diffusion.tiny import build_tiny_pipeline

    folder = write_caption(tmp_path / "c", per_class=1)
    cfg = make_params(tmp_path).dreambooth
    assert validation_prompts(folder, cfg) == [("photo of zwx small hip xray", ""),
                                                          ("photo of zwx big hip xray", "")]
    prompts = json.loads((folder / "prompts.json").read_text())
    prompts["negative_prompts"] = {"small": "photo of zwx big hip xray", "big": "photo of zwx small hip xray"}
    (folder / "prompts.json").write_text(json.dumps(prompts))
    pairs = validation_prompts(folder, cfg)
    assert pairs == [("photo of zwx small hip xray", "photo of zwx big hip xray"),
                     ("photo of zwx big hip xray", "photo of zwx small hip xray")]
    per_image = make_params(tmp_path, {"dreambooth": {"caption_mode": "per_image"},
                                       "generate": {"prompt_source": "captions"}}).dreambooth
    assert validation_prompts(folder, per_image)[1] == ("X-ray of a dog hip, big hip angle 0",
                                                                   "X-ray of a dog hip, small hip angle 0")
    pipe = build_tiny_pipeline(SIZE, 0)
    pipe.set_progress_bar_config(disable=True)
    quick = make_params(tmp_path, {"dreambooth": {"inference_steps": 2}}).dreambooth
    with_neg, _ = validation_grid(pipe, pairs[:1], 2, 0, quick)
    without, _ = validation_grid(pipe, [(pairs[0][0], "")], 2, 0, quick)
    assert with_neg.size == without.size and np.asarray(with_neg).tolist() != np.asarray(without).tolist()
    grid, metrics = validation_grid(pipe, pairs, 2, 0, quick)
    assert grid.size == (2 * SIZE, 3 * SIZE), "a row per class, then the class-spread row"
    assert metrics["validation_class_difference"] > 0
    assert grid.mode == "RGB"
    gray, _ = validation_grid(pipe, pairs, 2, 0, quick, channels=1)
    assert gray.mode == "L" and gray.size == grid.size, "a grayscale data set gets a grayscale grid"


def test_class_spread_lights_up_where_the_classes_differ() -> None:
    a = np.zeros((1, 4, 4, 3))
    b = a.copy()
    b[0, 1, 2] = 0.5
    spread = class_spread([a, b])
    assert spread.shape == (1, 4, 4, 3) and spread.max() == 1.0
    assert spread[0, 1, 2].tolist() == [1.0, 1.0, 1.0] and spread.sum() == 3.0
    assert not class_spread([a, a.copy()]).any(), "identical class rows: a black spread row"
