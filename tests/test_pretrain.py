"""pretrain stage: the tiny base trained on the data set's trainval images (+ a pool), or a referenced base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import make_params
from tasks import pretrain
from tasks.diffusion import pipeline, tiny
from tasks.pretrain import PretrainError

TINY = {"steps": 3, "vae_steps": 3, "batch_size": 4, "vae_batch_size": 4, "sample_images": 2, "sample_steps": 2}


def write_pool(folder: Path, n: int = 6, size: int = 32) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"pool-{i}.png" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), mode="L").save(folder / name)
    pd.DataFrame({"file_name": names}).to_csv(folder / "metadata.csv", index=False)
    return folder


def write_trainval(folder: Path, n: int = 4, size: int = 32, rgb: bool = False) -> Path:
    """An ingest trainval split of ``n`` images (half train, half val) with its manifest."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        label, split = ("small", "big")[i % 2], ("train", "val")[(i // 2) % 2]
        name = f"{split}/{label}/img-{i}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shape, mode = ((size, size, 3), "RGB") if rgb else ((size, size), "L")
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(folder / name)
        rows.append({"file_name": name, "label": label, "split": split, "sha256": f"{i:064x}", "group": str(i),
                     "width": size, "height": size})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


def test_tiny_pretrain_writes_a_loadable_pipeline(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"pretrain": TINY})
    untrained = tiny.build_tiny_pipeline(32, params.seed)
    out = pretrain.run(params, trainval=write_trainval(tmp_path / "tv"), pool=write_pool(tmp_path / "pool"),
                       out_dir=params.paths.pretrain)
    pipe = pipeline.load_pipeline(out.pipeline)
    assert pipe.vae.config.scaling_factor == pytest.approx(out.metrics["vae_scaling_factor"])
    assert pipe.vae.config.scaling_factor != 1.0  # set from the data, not the config default
    changed = [not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), untrained.unet.parameters())]
    assert any(changed)
    record = json.loads((params.paths.pretrain / "pipeline.json").read_text())
    assert record["hash"] == pipeline.model_hash(out.pipeline) and record["pool_images"] == 6
    assert record["trainval_images"] == 4 and out.metrics["trainval_images"] == 4.0
    assert Image.open(params.paths.pretrain / "samples.png").size == (2 * 32, 32)
    assert out.base_json is None and np.isfinite(out.metrics["unet_loss"])


def test_tiny_pretrain_is_deterministic(tmp_path: Path) -> None:
    pool, trainval = write_pool(tmp_path / "pool"), write_trainval(tmp_path / "tv")
    hashes = []
    for run in ("a", "b"):
        params = make_params(tmp_path / run, {"pretrain": TINY})
        out = pretrain.run(params, trainval=trainval, pool=pool, out_dir=params.paths.pretrain)
        hashes.append(pipeline.model_hash(out.pipeline))
    assert hashes[0] == hashes[1]


def test_user_data_pretrains_on_trainval_alone_without_flips(tmp_path: Path) -> None:
    """No pool (dataset.source folder): the base learns the trainval images only; hflip off is honoured."""
    params = make_params(tmp_path, {"pretrain": TINY, "dataset": {"source": "folder", "classes": ["small", "big"]},
                                    "review": {"mode": "manual"}, "paths": {"raw": "mine"},
                                    "baseline": {"augment": {"hflip": False}}})
    assert params.pretrain_pool() is None
    out = pretrain.run(params, trainval=write_trainval(tmp_path / "tv", rgb=True), out_dir=params.paths.pretrain)
    assert out.metrics["pool_images"] == 0.0 and out.metrics["trainval_images"] == 4.0 and out.metrics["hflip"] == 0


def test_gather_images_uses_trainval_then_pool_and_never_test(tmp_path: Path) -> None:
    params = make_params(tmp_path)
    trainval = write_trainval(tmp_path / "tv", n=4)
    test_dir = tmp_path / "test"  # a sibling test split must not be read: gather_images is not given it
    test_dir.mkdir()
    images, counts = pretrain.gather_images(params, trainval, write_pool(tmp_path / "pool", n=3))
    assert tuple(images.shape) == (7, 3, 32, 32) and counts == {"trainval_images": 4.0, "pool_images": 3.0}
    assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0


def test_random_hflip_mirrors_about_half(tmp_path: Path) -> None:
    x = torch.arange(8.0).reshape(1, 1, 1, 8).repeat(64, 1, 1, 1)
    y = pretrain.random_hflip(x, torch.Generator().manual_seed(0))
    mirrored = (y[:, 0, 0, 0] == 7).sum().item()
    assert 16 < mirrored < 48 and ((y[:, 0, 0, 0] == 0) | (y[:, 0, 0, 0] == 7)).all()


def test_pretrain_caption_follows_the_data_set(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"caption": {"thing": "teat end photo"}})
    assert pretrain.pretrain_caption(params) == "photo of a teat end photo"
    fixed = make_params(tmp_path, {"pretrain": {"caption": "an apple"}})
    assert pretrain.pretrain_caption(fixed) == "an apple"


def test_folder_base_is_referenced_with_hash(tmp_path: Path) -> None:
    folder = pipeline.save_pipeline(tiny.build_tiny_pipeline(32, 0), tmp_path / "mybase")
    params = make_params(tmp_path, {"pretrain": {"base_model": str(folder)}})
    out = pretrain.run(params, trainval=tmp_path / "unused", pool=tmp_path / "unused", out_dir=params.paths.pretrain)
    record = json.loads(out.base_json.read_text())
    assert record == {"base_model": str(folder), "variant": "", "hash": pipeline.model_hash(folder),
                      "unet_sample_size": 8}
    assert not (params.paths.pretrain / "pipeline").exists()


def test_missing_hub_base_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    params = make_params(tmp_path, {"pretrain": {"base_model": "runwayml/stable-diffusion-v1-5", "variant": "fp16"}})
    with pytest.raises(pipeline.ModelNotAvailable, match="not in the local cache"):
        pretrain.run(params, trainval=tmp_path, out_dir=params.paths.pretrain)
    assert not (params.paths.pretrain / "base.json").exists()


def test_pool_without_metadata_lists_its_images_or_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(PretrainError, match="is not a folder"):
        pretrain.read_pool(tmp_path / "nope")
    with pytest.raises(PretrainError, match="no metadata.csv and no images"):
        pretrain.read_pool(tmp_path)
    (tmp_path / "sub").mkdir()
    for name in ("sub/b.jpg", "a.png", ".hidden.png", "notes.txt"):
        Image.new("RGB", (8, 8)).save(tmp_path / name) if name.endswith(("png", "jpg")) else \
            (tmp_path / name).write_text("x")
    assert pretrain.read_pool(tmp_path) == ["a.png", "sub/b.jpg"]


def test_pool_image_size_must_be_square(tmp_path: Path) -> None:
    tmp_path.joinpath("a.png").parent.mkdir(exist_ok=True)
    Image.new("L", (32, 24)).save(tmp_path / "a.png")
    with pytest.raises(PretrainError, match="square"):
        pretrain.pool_image_size(tmp_path, "a.png")


def test_prompt_words_come_from_the_data_set_not_from_the_demo(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"dataset": {"source": "folder", "classes": ["score_1", "score_2"]},
                                    "review": {"mode": "manual"}, "paths": {"raw": "mine"},
                                    "caption": {"thing": "teat end photo",
                                                "template": "{thing}, hyperkeratosis {label}"},
                                    "generate": {"prompt_templates": ["{prompt}, close-up"]}})
    words = pretrain.prompt_words(params, ["rough ring at the orifice", None, float("nan"), "rough skin"])
    assert {"score", "teat", "end", "photo", "of", "hyperkeratosis", "close", "up"} == set(words[:8])  # params first
    assert words[8:10] == ["rough", "ring"] and {"orifice", "skin"} <= set(words)  # then captions, most frequent first
    assert not {"hip", "xray", "dog"} & set(words)


def test_pretrained_tokenizer_keeps_the_data_sets_words_whole(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"pretrain": TINY, "dataset": {"source": "folder", "classes": ["small", "big"]},
                                    "review": {"mode": "manual"}, "paths": {"raw": "mine"},
                                    "caption": {"thing": "teat end photo"}})
    trainval = write_trainval(tmp_path / "tv")
    manifest = pd.read_csv(trainval / "manifest.csv")
    manifest["caption"] = ["ring of keratin", "", "", "smooth"]
    manifest.to_csv(trainval / "manifest.csv", index=False)
    out = pretrain.run(params, trainval=trainval, out_dir=params.paths.pretrain)
    tok = pipeline.load_pipeline(out.pipeline).tokenizer
    assert len(tok("photo of zwx small teat end photo").input_ids) == 2 + 7
    assert {"keratin</w>", "smooth</w>"} <= set(tok.get_vocab())
    record = json.loads((params.paths.pretrain / "pipeline.json").read_text())
    assert record["tokenizer_vocab_size"] == len(tok.get_vocab()) and record["data_set_words"] >= 8
