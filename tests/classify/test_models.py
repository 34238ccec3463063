"""Classifier backbones (grayscale and big-input ones), their input size and normalisation, and model files: round
trip, bad files, local weights."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.classify.models import ModelLoadError, build_model, load_model, model_meta, save_model
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
    model.train()
    _, aux = model.forward_train(torch.rand(2, 1, 64, 64))
    assert (aux is not None and aux.shape == (2, 2)) == (backbone == "inception_v3")  # aux logits: training only
    model.eval()
    with torch.no_grad():
        assert model.forward_train(torch.rand(1, 1, 64, 64))[1] is None
        assert model(torch.rand(1, 1, 64, 64)).shape == (1, 2)


def test_resize_to_the_backbone_input_is_explicit():
    assert build_model("resnet18", 2, 1).input_size is None  # the data's size: no resize
    assert build_model("resnet18", 2, 1, input_size=64).prepare(torch.rand(2, 1, 32, 32)).shape == (2, 1, 64, 64)
    vit = build_model("vit_b_16", 2, 3, input_size=32)
    assert vit.prepare(torch.rand(2, 3, 64, 64)).shape == (2, 3, 32, 32)
    assert vit.body.encoder.pos_embedding.shape == (1, 1 + 2 * 2, 768)  # 2×2 patches + class token
    vit.eval()
    with torch.no_grad():
        assert vit(torch.rand(2, 3, 64, 64)).shape == (2, 2)
    with pytest.raises(StageError, match="vit_b_16 cannot take 40"):
        build_model("vit_b_16", 2, 1, input_size=40)
    with pytest.raises(StageError, match="inception_v3 cannot take 224"):
        build_model("inception_v3", 2, 1, input_size=224)


def test_params_check_input_sizes_per_backbone(tmp_path):
    from conftest import make_params

    from tasks.params import ParamsError

    p = make_params(tmp_path, {"baseline": {"backbone": "vit_b_16", "input_size": 64}})
    assert p.baseline.input_size_for("vit_b_16") == 64 and p.baseline.input_size_for("inception_v3") == 299
    assert p.baseline.input_size_for("resnet18") is None
    with pytest.raises(ParamsError, match="input_size 40 does not fit vit_b_16.*multiple of its 16-pixel patch"):
        make_params(tmp_path, {"baseline": {"input_size": {"vit_b_16": 40}}})
    with pytest.raises(ParamsError, match="does not fit inception_v3: at least 299"):
        make_params(tmp_path, {"baseline": {"input_size": {"inception_v3": 128}}})


def test_inception_normalisation_is_torchvisions_transform_input():
    """Google's Inception weights want inputs in [-1, 1]: torchvision feeds ImageNet-normalised images through
    ``transform_input=True``; our 0.5/0.5 normalisation with transform_input=False gives the same tensor."""
    from torchvision.models import Inception3

    from tasks.classify.models import IMAGENET_MEAN, IMAGENET_STD, _normalisation

    x = torch.rand(2, 3, 8, 8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    tv = Inception3(transform_input=True, init_weights=False)._transform_input((x - mean) / std)
    ours_mean, ours_std = _normalisation("inception_v3", 3, imagenet=True)
    assert torch.allclose(tv, (x - torch.tensor(ours_mean).view(1, 3, 1, 1)) / torch.tensor(ours_std).view(1, 3, 1, 1),
                          atol=1e-6)
    assert _normalisation("resnet18", 3, imagenet=True) == (IMAGENET_MEAN, IMAGENET_STD)
    assert _normalisation("resnet18", 3, imagenet=False) == ((0.5,) * 3, (0.5,) * 3)


def test_saved_torchvision_model_keeps_its_input_size(tmp_path):
    model = build_model("resnet18", 2, 1, input_size=64).eval()
    meta = model_meta(model, backbone="resnet18", classes=["a", "b"], channels=1, image_size=32)
    save_model(tmp_path, model, meta)
    loaded, meta2 = load_model(tmp_path)
    x = torch.rand(2, 1, 32, 32)
    assert loaded.input_size == 64 and meta2["format"] == 2 and meta2["init_weights"] is None
    assert torch.allclose(model(x), loaded(x), atol=1e-6)



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
