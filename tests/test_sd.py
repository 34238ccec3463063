"""tasks/sd.py: the tiny pipeline, the offline tokenizer, loading (the SD1.5 path), hashing, schedulers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tasks import sd
from tasks.sd import ModelNotAvailable

PROJECT_PROMPTS = [
    "photo of zwx small hip xray",
    "photo of zwx big hip xray",
    "photo of a hip xray",
    "X-ray of a dog hip",
    "X-ray of a dog hip, left angle 93.5 degrees, right angle 101.2 degrees",
    "X-ray of a dog hip, big hip angle",
]


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sd.save_pipeline(sd.build_tiny_pipeline(32, seed=0), tmp_path_factory.mktemp("sd") / "tiny")


def test_tokenizer_builds_offline_and_round_trips_prompts() -> None:
    tok = sd.build_tokenizer()
    for prompt in PROJECT_PROMPTS:
        ids = tok(prompt).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id not in ids[1:-1]
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == prompt.lower().replace(" ", "")
    # Project words are single tokens; the instance token is distinct from the class words.
    assert len(tok("photo of zwx big hip xray").input_ids) == 2 + 6
    assert tok("zwx").input_ids != tok("big").input_ids
    assert tok.model_max_length == 77


def test_build_bpe_chains_merges_and_skips_non_words() -> None:
    vocab, merges = sd.build_bpe(("hip", "x1", "a"))
    assert merges == [("h", "i"), ("hi", "p</w>")]
    assert "hip</w>" in vocab and "<|endoftext|>" in vocab
    assert len(vocab) == len(set(vocab.values()))  # ids are unique


def test_build_tiny_pipeline_is_seeded_and_small() -> None:
    a, b = sd.build_tiny_pipeline(32, seed=3), sd.build_tiny_pipeline(32, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.unet.parameters(), b.unet.parameters()))
    assert sum(p.numel() for p in a.unet.parameters()) < 2_000_000
    assert a.unet.config.sample_size * a.vae_scale_factor == 32
    assert a.text_encoder.config.hidden_size == a.unet.config.cross_attention_dim


def test_build_tiny_pipeline_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        sd.build_tiny_pipeline(30, seed=0)


def test_load_pipeline_from_saved_folder_generates(saved_tiny: Path) -> None:
    pipe = sd.load_pipeline(saved_tiny, dtype=torch.float32, device="cpu")
    assert pipe.safety_checker is None and (saved_tiny / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    embeds = sd.encode_prompts(pipe, ["photo of zwx big hip xray"])
    out = pipe(prompt_embeds=embeds, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    again = pipe(prompt_embeds=embeds, num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3) and (out == again).all()


def test_prompt_embedding_averages_separated_parts() -> None:
    import torch

    pipe = sd.build_tiny_pipeline(32, 0)
    a, b = (sd.encode_prompts(pipe, [t]) for t in ("photo of zwx small hip xray", "photo of zwx big hip xray"))
    assert torch.equal(sd.prompt_embedding(pipe, "photo of zwx small hip xray"), a)
    both = sd.prompt_embedding(pipe, "photo of zwx small hip xray | photo of zwx big hip xray")
    assert both.shape == a.shape and torch.allclose(both, (a + b) / 2, atol=1e-6)
    assert not torch.allclose(both, a)


def test_load_pipeline_missing_folder_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match=r"no diffusers pipeline at .*nowhere.*dvc repro"):
        sd.load_pipeline(tmp_path / "nowhere")


def test_load_pipeline_missing_weights_is_clear(saved_tiny: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelNotAvailable, match="incomplete or corrupt"):
        sd.load_pipeline(broken)


def test_load_pipeline_hub_id_offline_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailable, match=r"runwayml/stable-diffusion-v1-5.*fp16.*offline.*HF_HUB_OFFLINE=0"):
        sd.load_pipeline("runwayml/stable-diffusion-v1-5", variant="fp16")


def test_model_hash_is_stable_and_ignores_model_card(saved_tiny: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(saved_tiny, copy)
    h = sd.model_hash(saved_tiny)
    (copy / "model_card.json").write_text(json.dumps({"note": "not weights"}))
    assert sd.model_hash(copy) == h
    with open(copy / "unet" / "diffusion_pytorch_model.safetensors", "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    assert sd.model_hash(copy) != h
    with pytest.raises(ModelNotAvailable):
        sd.model_hash(tmp_path)


@pytest.mark.parametrize("name,cls", [("ddim", "DDIMScheduler"), ("dpm++", "DPMSolverMultistepScheduler"),
                                      ("euler", "EulerDiscreteScheduler"), ("pndm", "PNDMScheduler")])
def test_set_scheduler_keeps_the_noise_schedule(name: str, cls: str) -> None:
    pipe = sd.build_tiny_pipeline(32, seed=0)
    sd.set_scheduler(pipe, name)
    assert type(pipe.scheduler).__name__ == cls
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.beta_end == 0.012


def test_set_scheduler_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'heun'"):
        sd.set_scheduler(sd.build_tiny_pipeline(32, seed=0), "heun")


def test_save_pipeline_replaces_only_when_complete(saved_tiny: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model"
    shutil.copytree(saved_tiny, target)
    before = sd.model_hash(target)
    pipe = sd.build_tiny_pipeline(32, seed=1)

    def die(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(pipe), "save_pretrained", die)
    with pytest.raises(OSError, match="disk full"):
        sd.save_pipeline(pipe, target)
    assert sd.model_hash(target) == before  # the old model is intact
