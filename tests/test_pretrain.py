"""pretrain stage: the tiny base trained on the unlabeled pool, or a referenced hub/folder base."""

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


def test_tiny_pretrain_writes_a_loadable_pipeline(tmp_path: Path) -> None:
    params = make_params(tmp_path, {"pretrain": TINY})
    untrained = tiny.build_tiny_pipeline(32, params.seed)
    out = pretrain.run(params, pool=write_pool(tmp_path / "pool"), out_dir=params.paths.pretrain)
    pipe = pipeline.load_pipeline(out.pipeline)
    assert pipe.vae.config.scaling_factor == pytest.approx(out.metrics["vae_scaling_factor"])
    assert pipe.vae.config.scaling_factor != 1.0  # set from the data, not the config default
    changed = [not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), untrained.unet.parameters())]
    assert any(changed)
    record = json.loads((params.paths.pretrain / "pipeline.json").read_text())
    assert record["hash"] == pipeline.model_hash(out.pipeline) and record["pool_images"] == 6
    assert Image.open(params.paths.pretrain / "samples.png").size == (2 * 32, 32)
    assert out.base_json is None and np.isfinite(out.metrics["unet_loss"])


def test_tiny_pretrain_is_deterministic(tmp_path: Path) -> None:
    pool = write_pool(tmp_path / "pool")
    hashes = []
    for run in ("a", "b"):
        params = make_params(tmp_path / run, {"pretrain": TINY})
        hashes.append(pipeline.model_hash(pretrain.run(params, pool=pool, out_dir=params.paths.pretrain).pipeline))
    assert hashes[0] == hashes[1]


def test_folder_base_is_referenced_with_hash(tmp_path: Path) -> None:
    folder = pipeline.save_pipeline(tiny.build_tiny_pipeline(32, 0), tmp_path / "mybase")
    params = make_params(tmp_path, {"pretrain": {"base_model": str(folder)}})
    out = pretrain.run(params, pool=tmp_path / "unused", out_dir=params.paths.pretrain)
    record = json.loads(out.base_json.read_text())
    assert record == {"base_model": str(folder), "variant": "", "hash": pipeline.model_hash(folder),
                      "unet_sample_size": 8}
    assert not (params.paths.pretrain / "pipeline").exists()


def test_missing_hub_base_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    params = make_params(tmp_path, {"pretrain": {"base_model": "runwayml/stable-diffusion-v1-5", "variant": "fp16"}})
    with pytest.raises(pipeline.ModelNotAvailable, match="not in the local cache"):
        pretrain.run(params, pool=tmp_path, out_dir=params.paths.pretrain)
    assert not (params.paths.pretrain / "base.json").exists()


def test_pool_without_metadata_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PretrainError, match="no metadata.csv"):
        pretrain.read_pool(tmp_path)


def test_pool_image_size_must_be_square(tmp_path: Path) -> None:
    tmp_path.joinpath("a.png").parent.mkdir(exist_ok=True)
    Image.new("L", (32, 24)).save(tmp_path / "a.png")
    with pytest.raises(PretrainError, match="square"):
        pretrain.pool_image_size(tmp_path, "a.png")
