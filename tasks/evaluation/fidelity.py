"""Synthetic-vs-real image quality with torch-fidelity (FID, KID, precision/recall), offline.

Without local Inception weights the features are the frozen baseline classifier's penultimate layer, registered
as a torch-fidelity extractor: such values are not comparable with published Inception FIDs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from tasks.classify.models import MODEL_FILE, load_model
from tasks.evaluation.sets import EvalSet
from tasks.params import Params
from tasks.stage import StageError

EXTRACTOR_NAME = "synthloop-baseline-penultimate"


def _register_extractor() -> None:
    """Register the frozen-baseline feature extractor with torch-fidelity (once per process)."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if EXTRACTOR_NAME in FEATURE_EXTRACTORS_REGISTRY:
        return

    class FrozenClassifierFeatures(FeatureExtractorBase):
        """Penultimate-layer features of a saved synthloop classifier; weights path = its model.safetensors."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise StageError("the baseline feature extractor needs feature_extractor_weights_path")
            self.net, meta = load_model(Path(feature_extractor_weights_path).parent)
            self.channels, self.size = int(meta["channels"]), int(meta["image_size"])

        @staticmethod
        def get_provided_features_list():
            return ("penultimate",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "penultimate"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return (torch.rand([1, 3, 64, 64]) * 255).to(torch.uint8)

        def forward(self, x):
            x = x.float().div(255)[:, : self.channels]  # torch-fidelity hands over 3 channels; gray ones are equal
            if x.shape[-1] != self.size:
                x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear")
            return (self.net.features(x).double(),)

    torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, FrozenClassifierFeatures)



class _RGBUint8(torch.utils.data.Dataset):
    """uint8 N×C×H×W images as the 3×H×W uint8 tensors torch-fidelity expects."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x



def fidelity(synthetic: torch.Tensor, real: torch.Tensor, *, extractor: str, weights: Path,
             prc_neighborhood: int = 3) -> dict[str, float]:
    """FID, KID (mean, std) and precision/recall of ``synthetic`` vs ``real`` with a given extractor.

    The KID subset size shrinks to the smaller set; sets too small for a statistic give NaN for it.
    """
    import torch_fidelity

    n = min(len(synthetic), len(real))
    nan = {"fid": math.nan, "kid_mean": math.nan, "kid_std": math.nan, "precision": math.nan, "recall": math.nan}
    if n < 2:
        return nan
    layer = "penultimate" if extractor == EXTRACTOR_NAME else "2048"
    k = min(prc_neighborhood, n - 1)
    res = torch_fidelity.calculate_metrics(
        input1=_RGBUint8(synthetic), input2=_RGBUint8(real), fid=True, kid=True, prc=True,
        feature_extractor=extractor, feature_extractor_weights_path=str(weights), feature_layer_fid=layer,
        feature_layer_kid=layer, feature_layer_prc=layer, kid_subset_size=min(1000, n), prc_neighborhood=k,
        cuda=torch.cuda.is_available(), verbose=False, cache=False, save_cpu_ram=True, rng_seed=2020)
    return {"fid": float(res["frechet_inception_distance"]), "kid_mean": float(res["kernel_inception_distance_mean"]),
            "kid_std": float(res["kernel_inception_distance_std"]), "precision": float(res["precision"]),
            "recall": float(res["recall"])}



def fidelity_table(params: Params, synth: EvalSet, real: EvalSet, baseline_dir: Path) -> tuple[pd.DataFrame, str]:
    """Overall and per-class fidelity rows, and a sentence naming the extractor used."""
    weights = params.evaluate.fid.inception_weights
    if weights is not None:
        if not Path(weights).is_file():
            raise StageError(f"evaluate.fid.inception_weights {weights} is not a file")
        extractor, weights_path = "inception-v3-compat", Path(weights)
        described = f"torch-fidelity InceptionV3 (pool3, 2048-d) with local weights {Path(weights).name}"
    else:
        _register_extractor()
        extractor, weights_path = EXTRACTOR_NAME, baseline_dir / MODEL_FILE
        described = ("the frozen baseline classifier's penultimate layer (registered torch-fidelity extractor "
                     f"'{EXTRACTOR_NAME}'); values are not comparable with published Inception FIDs")
    cap = params.evaluate.fid.max_images
    rows = [{"class": "all", "n_synthetic": len(synth.y), "n_real": len(real.y),
             **fidelity(synth.images[:cap], real.images[:cap], extractor=extractor, weights=weights_path,
                        prc_neighborhood=params.evaluate.fid.prc_neighborhood)}]
    for i, c in enumerate(params.classes):
        s, r = synth.images[synth.y == i][:cap], real.images[real.y == i][:cap]
        rows.append({"class": c, "n_synthetic": len(s), "n_real": len(r),
                     **fidelity(s, r, extractor=extractor, weights=weights_path,
                                prc_neighborhood=params.evaluate.fid.prc_neighborhood)})
    return pd.DataFrame(rows), described
