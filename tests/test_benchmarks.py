"""The GPU benchmark scripts run on the CPU in --smoke mode (so they cannot rot between GPU sessions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import gpu_dreambooth  # noqa: E402
import gpu_generate  # noqa: E402


def test_gpu_dreambooth_smoke_runs_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "db.json"
    assert gpu_dreambooth.main(["--smoke", "--batches", "1", "--steps", "1", "--warmup", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["mode"] for r in results] == ["lora", "full"]
    lora, full = results
    assert all(r["steps_per_s"] > 0 and r["images_per_step"] == 2 for r in results)
    assert 0 < lora["trainable_params_m"] < full["trainable_params_m"], "LoRA trains a small share of the UNet"


def test_gpu_generate_smoke_compares_with_the_naive_loop(capsys: pytest.CaptureFixture) -> None:
    assert gpu_generate.main(["--smoke", "--images", "4", "--naive-images", "1", "--batch-size", "2",
                              "--shard-size", "2"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["images"] == 4 and result["synthloop_images_per_s"] > 0 and result["naive_images_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["synthloop_images_per_s"] / result["naive_images_per_s"], rel=0.02)


def test_gpu_scripts_refuse_to_measure_without_cuda(capsys: pytest.CaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert gpu_dreambooth.main([]) == 2 and gpu_generate.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_train_speed_times_each_setting_against_the_one_it_replaced() -> None:
    import bench_train_speed

    out = bench_train_speed.main(["--repeats", "1"])
    for row in ("adamw", "classifier", "vae_encode"):
        assert out[f"{row}_speedup"] > 0
    assert out["adamw_speedup"] == pytest.approx(out["adamw_loop_ms"] / out["adamw_fused_ms"])
    assert out["classifier_speedup"] == pytest.approx(out["classifier_nchw_ms"] / out["classifier_channels_last_ms"])


@pytest.fixture
def tiny_generator(tmp_path: Path) -> tuple[Path, Path]:
    """An untrained tiny pipeline and a two-class prompts.json, laid out as make run leaves them."""
    from tasks.diffusion.pipeline import save_pipeline
    from tasks.diffusion.tiny import build_tiny_pipeline

    model = save_pipeline(build_tiny_pipeline(32, 0, words=["small", "big", "hip"]), tmp_path / "model")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"classes": ["small", "big"],
                                   "instance_prompts": {"small": "photo of zwx small hip", "big": "photo of zwx big hip"},
                                   "negative_prompts": {"small": "photo of zwx big hip", "big": "photo of zwx small hip"}}))
    return model, prompts


def test_sampler_steps_compares_settings_with_ddim20_on_the_same_seeds(tiny_generator: tuple[Path, Path]) -> None:
    import bench_sampler_steps

    model, prompts = tiny_generator
    out = bench_sampler_steps.main(["--model", str(model), "--prompts", str(prompts), "--per-class", "2",
                                    "--settings", "ddim:20", "ddim:3"])
    rows = {(r["sampler"], r["steps"], r["class"]): r for r in out["results"]}
    assert set(rows) == {(s, n, c) for s, n in (("ddim", 20), ("ddim", 3)) for c in ("small", "big")}
    for label in ("small", "big"):
        # the same seeds at the reference setting give the reference images; fewer steps give other ones
        assert rows[("ddim", 20, label)]["mean_abs_diff_vs_ddim20"] == 0
        assert rows[("ddim", 3, label)]["mean_abs_diff_vs_ddim20"] > 0
        assert rows[("ddim", 3, label)]["s_per_image"] > 0


def test_sampler_steps_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import bench_sampler_steps

    out = bench_sampler_steps.main(["--model", str(tmp_path / "none"), "--prompts", str(tmp_path / "p.json")])
    assert "skipped" in out and "make run" in capsys.readouterr().err


def test_machine_speed_index_times_the_tiny_unet_step() -> None:
    import bench_machine

    out = bench_machine.main(["--repeats", "2", "--steps", "1"])
    assert out["unet_step_ms_best"] > 0 and out["unet_step_ms_best"] <= out["unet_step_ms_median"]
    assert out["matmul_gflops"] > 0


def test_fidelity_scores_both_negative_arms_per_class(tiny_generator: tuple[Path, Path]) -> None:
    import bench_fidelity

    model, prompts = tiny_generator
    out = bench_fidelity.main(["--model", str(model), "--prompts", str(prompts), "--per-class", "2",
                               "--guidance", "5"])
    rows = {(r["arm"], r["class"]): r for r in out["results"]}
    assert set(rows) == {(a, c) for a in ("empty negative", "class negatives") for c in ("small", "big")}
    for r in rows.values():
        assert 0 <= r["as_prompted"] <= 1 and 0 <= r["rejected"] <= 1 and r["guidance"] == 5


def test_fidelity_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import bench_fidelity

    out = bench_fidelity.main(["--model", str(tmp_path / "none"), "--prompts", str(tmp_path / "p.json")])
    assert "skipped" in out and "bench_fidelity" in capsys.readouterr().err
