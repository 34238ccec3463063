"""The one training recipe: losses, class weights, CPU determinism, NaN stop, BatchNorm refresh."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from fixtures_classifier import make_caption

from tasks.classify.train import TrainingDiverged, WeightedLoss, class_weights, refresh_bn, train_classifier
from tasks.stage import StageError
from tasks.tables import read_imagefolder

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


def test_class_weights_missing_ok_gives_the_absent_class_weight_zero_and_balances_the_rest():
    assert class_weights(np.array([0, 0, 2]), 3, missing_ok=True).tolist() == pytest.approx([0.75, 0.0, 1.5])


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


def test_refresh_bn_sets_population_statistics_and_keeps_weights_momentum_and_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, momentum=0.1))
    images = torch.randint(0, 256, (7, 1, 4, 4), dtype=torch.uint8)
    before = copy.deepcopy(model.state_dict())
    model.eval()
    refresh_bn(model, images, batch_size=3, device=torch.device("cpu"))
    with torch.no_grad():
        out = model[0](images.float() / 255)
    chunks = torch.tensor_split(out, 3)  # near-equal batches of 3, 2, 2: no batch of one
    assert [len(c) for c in chunks] == [3, 2, 2]
    expected = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks]).mean(0)
    assert torch.allclose(model[1].running_mean, expected, atol=1e-6)
    assert not torch.allclose(model[1].running_var, torch.ones(2))
    assert model[1].momentum == 0.1 and not model.training
    assert torch.equal(model[0].weight, before["0.weight"]) and torch.equal(model[1].weight, before["1.weight"])


def test_bn_refresh_auto_is_for_inception_from_random_weights(params, tmp_path):
    base = params.baseline
    assert base.model_copy(update={"backbone": "inception_v3"}).refreshes_bn()
    assert not any(base.model_copy(update={"backbone": b}).refreshes_bn() for b in ("custom_cnn", "resnet50", "vgg19"))
    loaded = base.model_copy(update={"backbone": "inception_v3",
                                     "pretrained_weights": {"inception_v3": tmp_path / "w.pt"}})
    assert not loaded.refreshes_bn()
    assert base.model_copy(update={"backbone": "custom_cnn", "bn_refresh": "always"}).refreshes_bn()
    assert not base.model_copy(update={"backbone": "inception_v3", "bn_refresh": "never"}).refreshes_bn()
