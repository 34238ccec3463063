"""The ``evaluate`` section of ``params.yaml`` (and its ``fid`` sub-section), apart from ``tasks/sections.py`` only
to keep that file small; ``tasks.params`` builds ``Params`` from both."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.sections import Backbone, Section


class Fid(Section):
    """Synthetic-vs-real quality (torch-fidelity), offline."""

    inception_weights: Path | None = None  # local pt_inception weights file; else the baseline's features
    max_images: int = Field(2000, ge=10)  # per set, for speed
    prc_neighborhood: int = Field(3, ge=1)


#: The arms of evaluate's comparison (README "Evaluation arms"); ``real`` is the reference of every paired test.
EvaluateArm = Literal["real", "real+augment", "real+synthetic_intended", "real+synthetic_pseudo",
                      "real+synthetic_reviewed", "synthetic->real"]


class Evaluate(Section):
    """Arms × repeats × backbones on the held-out test split, the two gain curves, fidelity, the report."""

    backbones: tuple[Backbone, ...] = ("custom_cnn",)
    arms: tuple[EvaluateArm, ...] = ("real", "real+augment", "real+synthetic_intended", "real+synthetic_pseudo",
                                     "real+synthetic_reviewed", "synthetic->real")
    repeats: int = Field(5, ge=2)  # repeat r: seed + r for classifier, synthetic draw and train/val re-split
    curve_repeats: int = Field(2, ge=0)  # repeats the two curves use (0: no curves)
    curve_ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # synthetic images per real train image
    effort_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # shares of the review decisions applied
    pseudo_threshold: float = Field(0.9, gt=0, le=1)  # min baseline confidence of a pseudo-labelled image
    workers: int = Field(2, ge=1)  # training processes (CPU threads are shared out between them)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    grid_per_class: int = Field(8, ge=1, le=64)
    fid: Fid = Fid()

    @model_validator(mode="before")
    @classmethod
    def _seeds_replaced(cls, data: object) -> object:
        if isinstance(data, dict) and "seeds" in data:
            raise ValueError("evaluate.seeds was replaced by evaluate.repeats: repeat r uses seed + r for the "
                             "classifier, the synthetic subset and a re-drawn train/val split; delete "
                             f"evaluate.seeds and set evaluate.repeats: {max(len(data['seeds'] or ()), 5)}")
        return data

    @field_validator("arms")
    @classmethod
    def _arms_with_reference(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "real" not in v or len(set(v)) != len(v):
            raise ValueError(f"evaluate.arms must list distinct arms including 'real' (the reference), got {list(v)}")
        return v

    @field_validator("curve_ratios", "effort_fractions")
    @classmethod
    def _non_negative(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(x < 0 for x in v):
            raise ValueError(f"curve points must be >= 0, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _curves_within_repeats(self) -> "Evaluate":
        if self.curve_repeats > self.repeats:
            raise ValueError(f"evaluate.curve_repeats ({self.curve_repeats}) exceeds evaluate.repeats "
                             f"({self.repeats})")
        if self.curve_repeats and "real" not in self.arms:
            raise ValueError("the curves are gains over the 'real' arm")
        return self
