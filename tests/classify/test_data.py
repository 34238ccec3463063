"""Images into tensors: the decode cache, the batched light policy, the strong per-image policy, mixup's soft
labels in the loss."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tasks.classify.data import augment_batch, build_mix, build_policy, load_images
from tasks.classify.train import WeightedLoss
from tasks.sections import Augment
from tasks.stage import StageError


def test_load_images_cache_decodes_once_and_bad_file_is_named(tmp_path):
    Image.new("L", (8, 8), 200).save(tmp_path / "a.png")
    cache: dict = {}
    first = load_images([str(tmp_path / "a.png")], 1, 8, cache)
    (tmp_path / "a.png").write_bytes(b"not a png any more")
    again = load_images([str(tmp_path / "a.png")], 1, 8, cache)  # served from the cache
    assert torch.equal(first, again) and first.dtype == torch.uint8 and int(first.max()) == 200
    with pytest.raises(StageError, match="a.png"):
        load_images([str(tmp_path / "a.png")], 1, 8)


def test_augment_batch_is_seeded_per_image_and_identity_when_off():
    x = torch.rand(6, 1, 16, 16)
    cfg = Augment()
    a = augment_batch(x.clone(), cfg, torch.Generator().manual_seed(0))
    b = augment_batch(x.clone(), cfg, torch.Generator().manual_seed(0))
    c = augment_batch(x.clone(), cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    off = Augment(hflip=False, max_rotation=0, translate=0, scale=(1.0, 1.0), brightness=0, contrast=0)
    assert torch.allclose(augment_batch(x.clone(), off, torch.Generator().manual_seed(0)), x)
    flip_only = Augment(hflip=True, max_rotation=0, translate=0, scale=(1.0, 1.0), brightness=0, contrast=0)
    out = augment_batch(x.clone(), flip_only, torch.Generator().manual_seed(3))
    for i in range(len(x)):  # every image is either itself or its mirror image
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))


def test_strong_policy_and_mix_are_built_from_the_section():
    assert build_policy(Augment()) is None and build_mix(Augment(), 2) is None
    img = torch.randint(0, 255, (1, 16, 16), dtype=torch.uint8)
    for policy in ("trivial", "randaugment"):
        out = build_policy(Augment(policy=policy))(img)
        assert out.dtype == torch.uint8 and out.shape == img.shape
    mixed, soft = build_mix(Augment(mix="mixup"), 2)(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]))
    assert soft.shape == (4, 2) and torch.allclose(soft.sum(1), torch.ones(4))


def test_soft_labels_in_the_loss_equal_hard_labels_when_one_hot_and_mix_class_weights():
    logits, target = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    w = torch.tensor([1.0, 2.0, 0.5])
    loss = WeightedLoss(0.0, w)
    assert loss(logits, torch.nn.functional.one_hot(target, 3).float()).item() == pytest.approx(
        loss(logits, target).item(), rel=1e-6)
    # a 50/50 mix of classes 0 and 1 (weight 1.5 = the mixed class weight) next to a pure class-2 sample (0.5)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    logp = torch.log_softmax(logits[:2], 1)
    per = torch.stack([-(0.5 * logp[0, 0] + 0.5 * logp[0, 1]), -logp[1, 2]])
    expected = (1.5 * per[0] + 0.5 * per[1]) / 2.0
    assert loss(logits[:2], soft).item() == pytest.approx(expected.item(), rel=1e-6)
