"""tasks/diffusion/pipeline.py: loading (the SD1.5 path), saving, hashing, schedulers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tasks.diffusion import pipeline, prompts, tiny
from tasks.diffusion.pipeline import ModelNotAvailable


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pipeline.save_pipeline(tiny.build_tiny_pipeline(32, seed=0), tmp_path_factory.mktemp("sd") / "tiny")


def test_load_pipeline_from_saved_folder_generates(saved_tiny: Path) -> None:
    pipe = pipeline.load_pipeline(saved_tiny, dtype=torch.float32, device="cpu")
    assert pipe.safety_checker is None and (saved_tiny / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    embeds = prompts.encode_prompts(pipe, ["photo of zwx big hip xray"])
    out = pipe(prompt_embeds=embeds, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    again = pipe(prompt_embeds=embeds, num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3) and (out == again).all()


def test_load_pipeline_missing_folder_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match=r"no diffusers pipeline at .*nowhere.*dvc repro"):
        pipeline.load_pipeline(tmp_path / "nowhere")


def test_load_pipeline_missing_weights_is_clear(saved_tiny: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelNotAvailable, match="incomplete or corrupt"):
        pipeline.load_pipeline(broken)


def test_load_pipeline_hub_id_offline_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailable, match=r"runwayml/stable-diffusion-v1-5.*fp16.*offline.*HF_HUB_OFFLINE=0"):
        pipeline.load_pipeline("runwayml/stable-diffusion-v1-5", variant="fp16")


def test_model_hash_is_stable_and_ignores_model_card(saved_tiny: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(saved_tiny, copy)
    h = pipeline.model_hash(saved_tiny)
    (copy / "model_card.json").write_text(json.dumps({"note": "not weights"}))
    assert pipeline.model_hash(copy) == h
    with open(copy / "unet" / "diffusion_pytorch_model.safetensors", "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    assert pipeline.model_hash(copy) != h
    with pytest.raises(ModelNotAvailable):
        pipeline.model_hash(tmp_path)


@pytest.mark.parametrize("name,cls", [("ddim", "DDIMScheduler"), ("dpm++", "DPMSolverMultistepScheduler"),
                                      ("euler", "EulerDiscreteScheduler"), ("pndm", "PNDMScheduler")])
def test_set_scheduler_keeps_the_noise_schedule(name: str, cls: str) -> None:
    pipe = tiny.build_tiny_pipeline(32, seed=0)
    pipeline.set_scheduler(pipe, name)
    assert type(pipe.scheduler).__name__ == cls
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.beta_end == 0.012


def test_set_scheduler_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'heun'"):
        pipeline.set_scheduler(tiny.build_tiny_pipeline(32, seed=0), "heun")


def test_save_pipeline_replaces_only_when_complete(saved_tiny: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model"
    shutil.copytree(saved_tiny, target)
    before = pipeline.model_hash(target)
    pipe = tiny.build_tiny_pipeline(32, seed=1)

    def die(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(pipe), "save_pretrained", die)
    with pytest.raises(OSError, match="disk full"):
        pipeline.save_pipeline(pipe, target)
    assert pipeline.model_hash(target) == before  # the old model is intact
