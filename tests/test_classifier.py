"""The one training implementation: backbones, losses, determinism, data selection, model files."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_classifier import make_caption, make_corrections, make_generated  # noqa: E402

from tasks.classifier import (ModelLoadError, TrainingDiverged, WeightedLoss, build_model, class_weights,  # noqa: E402
                              load_model, read_corrections, read_generated, read_imagefolder, resolve_under,
                              reviewed_synthetic, save_model, select_synthetic, train_arm, train_classifier)
from tasks.stage import StageError  # noqa: E402


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


def test_focal_loss_matches_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 0])
    alpha = torch.tensor([0.25, 0.75])
    p = [math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)]  # probability of the true class
    per = [0.25 * (1 - q) ** 2 * -math.log(q) for q in p]
    expected = sum(per) / (0.25 + 0.25)
    got = WeightedLoss(gamma=2.0, class_weights=alpha)(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_loss_with_gamma_zero_is_weighted_cross_entropy_and_honours_sample_weights():
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([1.0, 2.0, 0.5])
    assert WeightedLoss(0.0, w)(logits, target).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target, weight=w).item(), rel=1e-6)
    sw = torch.tensor([1.0, 0, 0, 0, 0, 0])  # only the first sample counts
    assert WeightedLoss(0.0)(logits, target, sw).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits[:1], target[:1]).item(), rel=1e-6)


def test_class_weights_balanced_and_missing_class_is_an_error():
    assert class_weights(np.array([0, 0, 0, 1]), 2).tolist() == pytest.approx([4 / 6, 2.0])
    with pytest.raises(StageError, match="without training images"):
        class_weights(np.array([0, 0]), 2)


def _tables(tmp_path: Path):
    cap = make_caption(tmp_path / "caption", n_train=8, n_val=8)
    return read_imagefolder(cap / "train", ("small", "big")), read_imagefolder(cap / "val", ("small", "big"))


def test_training_is_deterministic_on_cpu(params, tmp_path):
    train, val = _tables(tmp_path)
    cfg = params.baseline.model_copy(update={"epochs": 2})
    kw = {"classes": params.classes, "channels": 1, "image_size": 32, "seed": 7}
    a, b = train_classifier(cfg, train, val, **kw), train_classifier(cfg, train, val, **kw)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    c = train_classifier(cfg, train, val, **{**kw, "seed": 8})
    assert not torch.equal(a.model.head.weight, c.model.head.weight)
    assert list(a.history.columns[:3]) == ["epoch", "train_loss", "train_accuracy"] and len(a.history) == 2


def test_nan_loss_stops_training_with_a_clear_error(params, tmp_path):
    train, val = _tables(tmp_path)
    cfg = params.baseline.model_copy(update={"epochs": 3, "learning_rate": 1e30, "optimizer": "sgd"})
    with pytest.raises(TrainingDiverged, match="loss became"):
        train_classifier(cfg, train, val, classes=params.classes, channels=1, image_size=32, seed=0)


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


def test_resolve_under_refuses_escaping_paths(tmp_path):
    assert resolve_under(tmp_path, "a/b.png") == (tmp_path / "a/b.png").resolve()
    with pytest.raises(StageError, match="outside"):
        resolve_under(tmp_path, "../x.png")


def test_reviewed_synthetic_honours_reject_and_correct(tmp_path):
    man = make_generated(tmp_path / "gen", n=6)
    names = man["file_name"].tolist()
    make_corrections(tmp_path / "review", man, {names[0]: ("reject", ""), names[1]: ("correct", "small")})
    gen = read_generated(tmp_path / "gen", ("small", "big"))
    assert len(gen) == 6  # the 2 black images are not ok
    syn = reviewed_synthetic(gen, read_corrections(tmp_path / "review", ("small", "big")))
    assert names[0] not in set(syn["file_name"])
    assert syn.set_index("file_name").loc[names[1], "label"] == "small"  # intended 'big', corrected
    assert len(syn) == 5


def test_reviewed_synthetic_leaves_out_corrections_made_on_a_different_image(tmp_path, caplog):
    man = make_generated(tmp_path / "gen", n=6)
    names = man["file_name"].tolist()
    make_corrections(tmp_path / "review", man)
    # names[2] is regenerated after review: new bytes and a new manifest sha256 at the same file name
    disc = tmp_path / "gen" / names[2]
    disc.write_bytes(disc.read_bytes() + b"regenerated")
    man.loc[2, "sha256"] = "f" * 64
    man.to_csv(tmp_path / "gen" / "manifest.csv", index=False)
    gen = read_generated(tmp_path / "gen", ("small", "big"))
    assert gen.loc[gen["file_name"] == names[2], "sha256"].item() == "f" * 64
    with caplog.at_level(logging.WARNING):
        syn = reviewed_synthetic(gen, read_corrections(tmp_path / "review", ("small", "big")))
    assert names[2] not in set(syn["file_name"]) and len(syn) == 5
    assert "1 reviewed items were decided on a different image" in caplog.text
    assert list(syn.columns) == ["file_name", "label", "path"]


def test_reviewed_synthetic_never_trusts_an_empty_sha256_and_needs_the_column(tmp_path, caplog):
    man = make_generated(tmp_path / "gen", n=4, bad=0)
    corrections = make_corrections(tmp_path / "review", man)
    gen = read_generated(tmp_path / "gen", ("small", "big"))
    corrections.loc[0, "sha256"] = ""  # a decision that predates content hashes cannot be verified
    with caplog.at_level(logging.WARNING):
        assert len(reviewed_synthetic(gen, corrections)) == 3
    assert "1 reviewed items were decided on a different image" in caplog.text
    with pytest.raises(StageError, match="corrections has no sha256"):
        reviewed_synthetic(gen, corrections.drop(columns="sha256"))


def test_read_generated_keeps_all_digit_sha256_as_text(tmp_path):
    man = make_generated(tmp_path / "gen", n=2, bad=0)
    man["sha256"] = ["0" * 64, "1" * 64]  # would parse as an integer without an explicit dtype
    man.to_csv(tmp_path / "gen" / "manifest.csv", index=False)
    gen = read_generated(tmp_path / "gen", ("small", "big")).set_index("file_name")["sha256"]
    assert gen.to_dict() == dict(zip(man["file_name"], ["0" * 64, "1" * 64]))


def test_select_synthetic_caps_ratio_and_absolute_and_stays_balanced(caplog):
    syn = pd.DataFrame({"file_name": [f"{i}" for i in range(40)], "label": ["a", "b"] * 20, "path": "x"})
    got = select_synthetic(syn, n_real=5, ratio=2.0, cap=None, seed=0)
    assert len(got) == 10 and got["label"].value_counts().tolist() == [5, 5]
    assert len(select_synthetic(syn, n_real=5, ratio=4.0, cap=6, seed=0)) == 6
    assert select_synthetic(syn, 5, 2.0, None, 0).equals(select_synthetic(syn, 5, 2.0, None, 0))
    with caplog.at_level(logging.WARNING):
        select_synthetic(syn, n_real=1, ratio=12.0, cap=None, seed=0)
    assert "above 10:1" in caplog.text


def test_train_arm_pretrain_then_finetune(params, tmp_path):
    train, val = _tables(tmp_path)
    syn = train.assign(source="synthetic").iloc[:4]
    p = params.model_copy(update={"baseline": params.baseline.model_copy(update={"epochs": 1}),
                                  "retrain": params.retrain.model_copy(update={"pretrain_on_synthetic": True,
                                                                               "pretrain_epochs": 1})})
    res = train_arm(p, train, val, syn)
    assert res.meta["pretrained_on_synthetic"] == 4 and res.meta["n_train"] == len(train)
