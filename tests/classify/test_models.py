"""Classifier backbones (grayscale and big-input ones) and model files: round trip, bad files, local weights."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.classify.models import ModelLoadError, build_model, load_model, save_model
from tasks.stage import StageError

def _train_step(model, size: int, channels: int = 1) -> float:
    model.train()
    x, y = torch.rand(2, channels, size, size), torch.tensor([0, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    logits, aux = model.forward_train(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    if aux is not None:
        loss = loss + 0.4 * torch.nn.functional.cross_entropy(aux, y)
    loss.backward()
    opt.step()
    assert logits.shape == (2, 2)
    return float(loss.detach())


@pytest.mark.parametrize("backbone", ["custom_cnn", "resnet18", "resnet50", "vgg19"])
def test_backbone_builds_and_trains_on_grayscale(backbone):
    model = build_model(backbone, 2, in_channels=1)
    assert math.isfinite(_train_step(model, 32))
    model.eval()
    assert model.features(torch.rand(2, 1, 32, 32)).ndim == 2


@pytest.mark.slow
@pytest.mark.parametrize("backbone,size", [("vit_b_16", 224), ("inception_v3", 299)])
def test_big_backbone_trains_at_its_size_and_resizes_small_inputs(backbone, size):
    model = build_model(backbone, 2, in_channels=1)
    assert model.input_size == size
    assert math.isfinite(_train_step(model, 64))  # the wrapper resizes 64² to the backbone's input size
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 64, 64)).shape == (1, 2)  # eval: no aux logits



def test_saved_model_round_trips(tmp_path):
    model = build_model("custom_cnn", 2, 1).eval()
    meta = {"backbone": "custom_cnn", "classes": ["small", "big"], "channels": 1, "image_size": 32,
            "mean": [0.5], "std": [0.5]}
    save_model(tmp_path, model, meta)
    loaded, meta2 = load_model(tmp_path)
    x = torch.rand(3, 1, 32, 32)
    assert torch.allclose(model(x), loaded(x)) and meta2["classes"] == ["small", "big"]


def test_missing_or_unreadable_model_file_gives_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no model in"):
        load_model(tmp_path)
    save_model(tmp_path, build_model("custom_cnn", 2, 1), {"backbone": "custom_cnn", "classes": ["a", "b"],
                                                            "channels": 1, "image_size": 32, "mean": [0.5],
                                                            "std": [0.5]})
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot read weights file"):
        load_model(tmp_path)
    assert issubclass(ModelLoadError, StageError)


def test_pretrained_weights_file_must_fit_and_is_loaded(tmp_path):
    from safetensors.torch import save_file

    body = build_model("custom_cnn", 2, 1).body
    save_file({k: v.contiguous() for k, v in body.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = build_model("custom_cnn", 2, 1, pretrained=tmp_path / "w.safetensors")
    assert torch.equal(loaded.body.blocks[0][0].weight, body.blocks[0][0].weight)
    with pytest.raises(ModelLoadError, match="does not fit"):
        build_model("custom_cnn", 2, 3, pretrained=tmp_path / "w.safetensors")  # 3-channel stem, 1-channel weights
