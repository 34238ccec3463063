"""FID/KID with the registered baseline-feature extractor (offline)."""

from __future__ import annotations

import numpy as np
import torch

from tasks.classify.models import build_model, save_model
from tasks.evaluation import fidelity


def test_custom_fid_extractor_zero_for_identical_sets_larger_for_different(tmp_path):
    torch.manual_seed(0)
    model = build_model("custom_cnn", 2, 1).eval()
    save_model(tmp_path, model, {"backbone": "custom_cnn", "classes": ["a", "b"], "channels": 1, "image_size": 32,
                                 "mean": [0.5], "std": [0.5]})
    fidelity._register_extractor()
    g = torch.Generator().manual_seed(0)
    dark = (torch.rand(24, 1, 32, 32, generator=g) * 60).to(torch.uint8)
    bright = (155 + torch.rand(24, 1, 32, 32, generator=g) * 100).to(torch.uint8)
    kw = {"extractor": fidelity.EXTRACTOR_NAME, "weights": tmp_path / "model.safetensors"}
    same = fidelity.fidelity(dark, dark.clone(), **kw)
    diff = fidelity.fidelity(dark, bright, **kw)
    assert abs(same["fid"]) < 1e-3 * max(diff["fid"], 1e-9) and diff["fid"] > 0
    assert same["precision"] == 1.0 and diff["precision"] < same["precision"]
    assert np.isnan(fidelity.fidelity(dark[:1], bright[:1], **kw)["fid"])  # too small: NaN, not a crash
