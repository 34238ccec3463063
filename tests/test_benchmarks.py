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
