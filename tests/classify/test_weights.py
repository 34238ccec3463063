"""Local initial weights: torchvision state dicts (.safetensors and .pt, made here, never downloaded) load through
baseline.pretrained_weights, the head is rebuilt, grayscale stems are summed, ViT positions interpolated; bad
files fail with a message naming the file and the keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.classify.models import build_classifier, build_model
from tasks.classify.weights import ModelLoadError, _resize_positions, load_state_file
from tasks.params import ParamsError


def _resnet18_file(folder: Path, suffix: str, seed: int = 123) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random torchvision ResNet18 state dict (ImageNet layout: 1000-class fc), as torchvision ships it."""
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in resnet18(weights=None).state_dict().items()}
    for k in [k for k in state if k.endswith("running_var")]:  # trained statistics, not the init's ones
        state[k] = torch.rand_like(state[k]) + 0.5
    path = folder / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_torchvision_state_dict_loads_and_replaces_the_initial_weights(tmp_path, suffix):
    path, state = _resnet18_file(tmp_path, suffix)
    torch.manual_seed(0)
    fresh = build_model("resnet18", 2, 3)
    torch.manual_seed(0)
    model = build_model("resnet18", 2, 3, pretrained=path)
    assert torch.equal(model.body.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.body.bn1.running_var, state["bn1.running_var"])
    assert not torch.equal(model.body.layer3[1].conv2.weight, fresh.body.layer3[1].conv2.weight)
    assert model.head.weight.shape == (2, 512)  # rebuilt for the data's classes, not the file's 1000
    report = model.init_weights
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"] and report.loaded == len(state) - 2
    assert model.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])  # ImageNet statistics
    assert fresh.mean.flatten().tolist() == pytest.approx([0.5] * 3) and fresh.init_weights is None


def test_grayscale_data_sums_the_rgb_stem(tmp_path):
    path, state = _resnet18_file(tmp_path, ".safetensors")
    model = build_model("resnet18", 2, 1, pretrained=path)
    assert model.body.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.body.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert "conv1.weight summed over RGB" in model.init_weights.adapted[0]
    assert model.mean.flatten().tolist() == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    # why summing is right: on a gray image copied to R, G, B the RGB filter answers as the summed one does
    gray = torch.rand(1, 1, 16, 16)
    rgb_out = torch.nn.functional.conv2d(gray.expand(-1, 3, -1, -1), state["conv1.weight"], stride=2, padding=3)
    assert torch.allclose(model.body.conv1(gray), rgb_out, atol=1e-5)


def test_params_take_one_path_for_the_backbone_or_a_mapping(params, tmp_path):
    path, _ = _resnet18_file(tmp_path, ".pt")
    one = params.baseline.model_validate({"backbone": "resnet18", "pretrained_weights": str(path)})
    assert one.pretrained_weights == {"resnet18": path}
    # evaluate swaps the backbone with model_copy: another backbone never gets resnet18's file
    assert one.model_copy(update={"backbone": "vgg19"}).weights_for("vgg19") is None
    many = params.baseline.model_validate({"backbone": "custom_cnn",
                                           "pretrained_weights": {"resnet18": str(path), "vgg19": "w/vgg.pth"}})
    assert many.weights_for("custom_cnn") is None and many.weights_for("vgg19") == Path("w/vgg.pth")
    model = build_classifier(one, 3, 1)
    assert model.init_weights.path == str(path) and len(model.init_weights.sha256) == 64


def test_params_refuse_a_weights_file_of_another_type_or_an_unknown_backbone(tmp_path):
    from conftest import make_params

    with pytest.raises(ParamsError, match="baseline.pretrained_weights"):
        make_params(tmp_path, {"baseline": {"pretrained_weights": "weights/resnet18.bin"}})
    with pytest.raises(ParamsError, match="baseline.pretrained_weights"):
        make_params(tmp_path, {"baseline": {"pretrained_weights": {"resnet19": "w.pt"}}})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="weights file not found: .*nope.safetensors"):
        build_model("resnet18", 2, 1, pretrained=tmp_path / "nope.safetensors")


def test_keys_or_shapes_that_do_not_fit_are_named(tmp_path):
    from safetensors.torch import save_file

    _, state = _resnet18_file(tmp_path, ".pt")
    state["layer9.conv.weight"] = state.pop("layer1.0.conv1.weight")
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelLoadError) as err:
        build_model("resnet18", 2, 3, pretrained=tmp_path / "bad.safetensors")
    msg = str(err.value)
    assert "bad.safetensors does not fit the resnet18 backbone" in msg
    assert "missing: layer1.0.conv1.weight" in msg and "not in the backbone: layer9.conv.weight" in msg
    assert "layer2.0.conv1.weight (128, 64, 5, 5) vs (128, 64, 3, 3)" in msg


def test_another_backbones_file_does_not_fit(tmp_path):
    path, _ = _resnet18_file(tmp_path, ".safetensors")
    with pytest.raises(ModelLoadError, match="does not fit the resnet50 backbone.*missing: .*conv3"):
        build_model("resnet50", 2, 3, pretrained=path)


class _Payload:
    """An object whose unpickling would run code (touch a file): what weights_only must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_is_not_weights_only_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": torch.zeros(1), "hook": _Payload(marker)}, tmp_path / "evil.pt")
    marker.unlink(missing_ok=True)  # saving does not run it; make sure
    with pytest.raises(ModelLoadError, match="evil.pt is not a weights-only pickle"):
        load_state_file(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a whole module, not its state dict
    with pytest.raises(ModelLoadError, match="not a weights-only pickle.*state_dict"):
        build_model("custom_cnn", 2, 1, pretrained=tmp_path / "module.pth")


def test_a_file_that_is_not_a_state_dict_is_named(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match="list.pt does not hold a state dict .* list"):
        load_state_file(tmp_path / "list.pt")
    torch.save({"conv1.weight": torch.zeros(2), "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelLoadError, match="entries that are not tensors: epoch"):
        load_state_file(tmp_path / "ckpt.pt")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unsupported type '.bin'"):
        load_state_file(tmp_path / "w.bin")


def test_vit_position_embeddings_are_interpolated_to_the_input_size():
    pos = torch.randn(1, 1 + 14 * 14, 768)  # a 224² ViT-B/16 file: class token + 14×14 patches
    state = {"encoder.pos_embedding": pos}
    assert _resize_positions(state, torch.empty(1, 1 + 4 * 4, 768), 64)
    new = state["encoder.pos_embedding"]
    assert new.shape == (1, 17, 768) and torch.equal(new[:, 0], pos[:, 0])  # the class token is kept
    # the 14×14 grid is resampled onto 4×4 (bicubic, corners aligned): the corner patches keep their positions
    old_grid, new_grid = pos[0, 1:].view(14, 14, 768), new[0, 1:].view(4, 4, 768)
    assert torch.allclose(new_grid[0, 0], old_grid[0, 0], atol=1e-5)
    assert torch.allclose(new_grid[-1, -1], old_grid[-1, -1], atol=1e-5)
    assert not _resize_positions(state, torch.empty(1, 17, 768), 64)  # already fits: untouched
