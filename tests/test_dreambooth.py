"""dreambooth stage: tiny end-to-end fine-tunes (full, LoRA, prior preservation), checkpoints and resume, NaN stop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import free_port, make_params
from dreambooth_fixtures import CLASSES, SIZE, disc_image, write_caption
from tasks import dreambooth, pretrain
from tasks.diffusion import checkpoints, trainer
from tasks.diffusion.checkpoints import list_checkpoints
from tasks.diffusion.dreambooth_data import DreamboothError, data_hash
from tasks.diffusion.training import NonFiniteLoss


def write_trainval(folder: Path, n: int) -> Path:
    """An ingest trainval split of ``n`` disc images (what pretrain learns the domain from)."""
    folder.mkdir(parents=True)
    names = [f"train/img-{i:03d}.png" for i in range(n)]
    (folder / "train").mkdir()
    for i, name in enumerate(names):
        disc_image(CLASSES[i % 2], i).save(folder / name)
    pd.DataFrame({"file_name": names, "label": [CLASSES[i % 2] for i in range(n)], "split": "train",
                  "sha256": [f"{i:064x}" for i in range(n)], "group": [str(i) for i in range(n)],
                  "width": SIZE, "height": SIZE}).to_csv(folder / "manifest.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A pretrained tiny base (a few steps) and a caption folder, shared by the module's tests."""
    root = tmp_path_factory.mktemp("db")
    params = make_params(root, {"pretrain": {"steps": 3, "vae_steps": 3, "batch_size": 4, "sample_images": 2,
                                             "sample_steps": 2}})
    pretrain.run(params, trainval=write_trainval(root / "trainval", 8), out_dir=params.paths.pretrain)
    return {"root": root, "base": params.paths.pretrain, "caption": write_caption(root / "caption")}


def db_params(tmp_path: Path, **over) -> object:
    base = {"steps": 4, "batch_size": 2, "num_class_images": 2, "checkpoint_every": 2, "validation_every": 4,
            "validation_images": 2, "inference_steps": 2, "prior_preservation": False, "log_model": False}
    source = "captions" if over.get("caption_mode") == "per_image" else "instance"  # what generate must match
    return make_params(tmp_path, {"dreambooth": {**base, **over}, "generate": {"prompt_source": source}})


def run_db(params, world) -> dreambooth.DreamboothOutputs:
    return dreambooth.run(params, base=world["base"], caption=world["caption"], out_dir=params.paths.dreambooth)


def unet_state(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


class Interrupt(Exception):
    """Stands in for a kill right after a checkpoint was written."""


def interrupt_after(monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    original = trainer.save_checkpoint

    def save_then_die(accelerator, folder, step, state, keep):
        path = original(accelerator, folder, step, state, keep)
        if step == at_step:
            raise Interrupt(step)
        return path

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)


# --------------------------------------------------------------------------------------------- refusals


def test_fp16_on_cpu_is_refused(tmp_path: Path, world: dict) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 is allowed")
    with pytest.raises(DreamboothError, match="fp16 needs CUDA"):
        run_db(db_params(tmp_path, precision="fp16"), world)


# --------------------------------------------------------------------------------------------- end to end


def test_full_finetune_output_loads_and_generates(tmp_path: Path, world: dict) -> None:
    from diffusers import StableDiffusionPipeline

    from tasks.diffusion.pipeline import model_hash

    out = run_db(db_params(tmp_path, mode="full"), world)
    pipe = StableDiffusionPipeline.from_pretrained(out.model)
    image = pipe("photo of zwx big hip xray", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, SIZE, SIZE, 3) and np.isfinite(image).all()
    base = unet_state(world["base"] / "pipeline")
    tuned = unet_state(out.model)
    assert any(not torch.equal(base[k], tuned[k]) for k in base)  # it actually trained
    card = json.loads(out.model_card.read_text())
    assert card["base_hash"] == model_hash(world["base"] / "pipeline")
    assert card["model_hash"] == model_hash(out.model) and card["steps_trained"] == 4
    assert card["data_hash"] == data_hash(world["caption"])
    assert pd.read_csv(out.loss_csv)["step"].tolist() == [1, 2, 3, 4]
    assert (out.validation / "step-000004.png").is_file()
    assert out.metrics["validation_flagged"] == 0


def test_lora_fused_model_equals_base_plus_adapters(tmp_path: Path, world: dict) -> None:
    from diffusers import StableDiffusionPipeline

    out = run_db(db_params(tmp_path, mode="lora", lora_rank=4, lora_alpha=4, learning_rate=1e-2), world)
    assert (out.lora / "pytorch_lora_weights.safetensors").is_file()
    fused = StableDiffusionPipeline.from_pretrained(out.model)
    assert not hasattr(fused.unet, "peft_config")  # a plain pipeline: no peft needed to load it
    base = StableDiffusionPipeline.from_pretrained(world["base"] / "pipeline")
    base.load_lora_weights(out.lora)
    x = torch.randn(1, 4, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = fused.unet(x, 500, encoder_hidden_states=emb).sample
        b = base.unet(x, 500, encoder_hidden_states=emb).sample
        base.unload_lora_weights()
        c = base.unet(x, 500, encoder_hidden_states=emb).sample
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a, c, atol=1e-4)  # the adapters changed the model


def test_prior_preservation_generates_and_caches_class_images(tmp_path: Path, world: dict) -> None:
    params = db_params(tmp_path, prior_preservation=True, num_class_images=3, steps=2, checkpoint_every=2)
    out = run_db(params, world)
    folder = params.paths.dreambooth / "class_images"
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 3
    stamps = [p.stat().st_mtime_ns for p in pngs]
    run_db(params, world)
    assert [p.stat().st_mtime_ns for p in pngs] == stamps  # cached: not regenerated
    assert out.metrics["final_loss"] > 0


def test_per_image_caption_mode_trains(tmp_path: Path, world: dict) -> None:
    out = run_db(db_params(tmp_path, caption_mode="per_image", steps=2, checkpoint_every=2, validation_every=2),
                 world)
    assert (out.model / "model_index.json").is_file()
    assert json.loads(out.model_card.read_text())["params"]["caption_mode"] == "per_image"


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path: Path, world: dict, mode: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    over = {"mode": mode, "lr_scheduler": "cosine", "lr_warmup_steps": 1, "gradient_accumulation_steps": 2,
            "learning_rate": 1e-3}
    straight = run_db(db_params(tmp_path / "a", **over), world)
    params = db_params(tmp_path / "b", **over)
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(Interrupt):
            run_db(params, world)
    resumed = run_db(db_params(tmp_path / "b", resume="latest", **over), world)
    assert resumed.metrics["resumed_from_step"] == 2
    assert_same_state(unet_state(straight.model), unet_state(resumed.model))
    pd.testing.assert_frame_equal(pd.read_csv(straight.loss_csv), pd.read_csv(resumed.loss_csv))


def test_kill_during_checkpoint_write_resumes_from_previous(tmp_path: Path, world: dict,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    params = db_params(tmp_path, steps=6)
    with monkeypatch.context() as m:
        interrupt_after(m, 4)
        with pytest.raises(Interrupt):
            run_db(params, world)
    ckpts = params.paths.dreambooth / "checkpoints"
    # A kill mid-write of checkpoint-4: the renamed folder lost its marker, and a temp folder is left over.
    (ckpts / "checkpoint-4" / checkpoints.COMPLETE).unlink()
    shutil.copytree(ckpts / "checkpoint-4", ckpts / ".partial-checkpoint-6")
    out = run_db(db_params(tmp_path, steps=6, resume="latest"), world)
    assert out.metrics["resumed_from_step"] == 2
    assert "checkpoint-4" in caplog.text and "skipping" in caplog.text
    assert [s for s, _ in list_checkpoints(ckpts)] == [4, 6]


def test_resume_without_checkpoint_fails_loudly(tmp_path: Path, world: dict) -> None:
    with pytest.raises(DreamboothError, match="no complete checkpoint"):
        run_db(db_params(tmp_path, resume="latest"), world)
    assert not (tmp_path / "data" / "dreambooth" / "model").exists()


def test_resume_with_changed_settings_fails(tmp_path: Path, world: dict) -> None:
    run_db(db_params(tmp_path, steps=2, checkpoint_every=2), world)
    with pytest.raises(DreamboothError, match="learning_rate"):
        run_db(db_params(tmp_path, steps=4, resume="latest", learning_rate=5e-3), world)


def test_nan_loss_stops_with_no_checkpoint_after(tmp_path: Path, world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = trainer.denoising_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(trainer, "denoising_loss", poisoned)
    params = db_params(tmp_path, checkpoint_every=1, checkpoints_total_limit=5)
    with pytest.raises(NonFiniteLoss, match="step 3"):
        run_db(params, world)
    ckpts = params.paths.dreambooth / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpts)] == [1, 2]
    assert not list(ckpts.glob(".partial-*"))
    assert pd.read_csv(params.paths.dreambooth / "loss.csv")["step"].tolist() == [1, 2]
    assert not (params.paths.dreambooth / "model").exists()


def test_rotation_keeps_the_newest_k(tmp_path: Path, world: dict) -> None:
    params = db_params(tmp_path, steps=6, checkpoint_every=2, checkpoints_total_limit=2)
    run_db(params, world)
    assert [s for s, _ in list_checkpoints(params.paths.dreambooth / "checkpoints")] == [4, 6]


LAUNCHED = '''
import sys
sys.path.insert(0, {tests!r})
import tasks
from pathlib import Path
from conftest import make_params
from tasks import dreambooth
root = Path({root!r})
params = make_params(root, {{"dreambooth": {over!r}}})
out = dreambooth.run(params, base=Path({base!r}), caption=Path({caption!r}), out_dir=params.paths.dreambooth)
print("RANK-DONE", out.metrics["final_loss"])
'''


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path: Path, world: dict) -> None:
    """`accelerate launch --num_processes 2` (what multi-GPU uses) runs the stage on 2 CPU processes."""
    import os
    import subprocess
    import sys

    over = {"steps": 2, "batch_size": 1, "checkpoint_every": 2, "validation_every": 2, "validation_images": 1,
            "inference_steps": 2, "prior_preservation": False, "log_model": False}
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED.format(tests=str(Path(__file__).parent), root=str(tmp_path), over=over,
                                      base=str(world["base"]), caption=str(world["caption"])))
    accelerate = Path(sys.executable).parent / "accelerate"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --multi_gpu on a machine without CUDA is accelerate's multi-CPU (gloo) launcher; --cpu would run one process.
    proc = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--main_process_port", str(free_port()),
                           "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
                          capture_output=True, text=True, timeout=480, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("RANK-DONE") == 2
    model = tmp_path / "data" / "dreambooth" / "model"
    assert (model / "model_index.json").is_file() and [s for s, _ in list_checkpoints(model.parent / "checkpoints")] == [2]


def test_run_stage_logs_loss_validation_and_model_to_mlflow(tmp_path: Path, world: dict) -> None:
    import mlflow
    from mlflow import MlflowClient

    from tasks.stage import run_stage

    params = db_params(tmp_path, log_model=True)
    shutil.copytree(world["base"], params.paths.pretrain)
    shutil.copytree(world["caption"], params.paths.caption)
    run_stage("dreambooth", params)
    client = MlflowClient()
    run = mlflow.search_runs(experiment_names=["synthloop"], filter_string="tags.`synthloop.stage` = 'dreambooth'",
                             output_format="list")[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3, 4]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "validation" in top
    # the pipeline is an MLflow model (tasks/generation/mlflow_pipeline.py), registered with an alias
    assert client.get_model_version_by_alias("synthloop-dreambooth", "dreambooth").run_id == run.info.run_id
    assert [a.path for a in client.list_artifacts(run.info.run_id, "validation")] == ["validation/step-000004.png"]
    assert json.loads((params.paths.metrics / "dreambooth.json").read_text())["validation_flagged"] == 0


@pytest.mark.parametrize("train_te", [False, True])
def test_text_encoder_trained_only_when_asked(tmp_path: Path, world: dict, train_te: bool) -> None:
    from safetensors.torch import load_file

    out = run_db(db_params(tmp_path, steps=2, checkpoint_every=2, validation_every=2, train_text_encoder=train_te,
                           learning_rate=1e-3), world)
    te = lambda d: load_file(str(next((d / "text_encoder").glob("*.safetensors"))))  # noqa: E731
    base, tuned = te(world["base"] / "pipeline"), te(out.model)
    changed = any(not torch.equal(base[k], tuned[k]) for k in base)
    assert changed == train_te
