"""The sections of ``params.yaml``: one frozen pydantic model per stage (named as the stage), plus ``paths``.

``tasks.params.Params`` puts them together and is the only parser of params.yaml; wing modules that take one
section (a training recipe, a generation setting) import its model from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(Section):
    """Where each stage writes. Relative paths are relative to the repo root (where dvc.yaml lives)."""

    phantom: Path
    raw: Path
    ingest: Path
    caption: Path
    pretrain: Path
    dreambooth: Path
    generate: Path
    baseline: Path
    predict: Path
    review: Path
    retrain: Path
    evaluate: Path
    reports: Path
    metrics: Path

    def resolve(self, root: Path) -> "Paths":
        """Return a copy with every relative path anchored at ``root``."""
        return Paths(**{k: (v if v.is_absolute() else root / v) for k, v in self.__dict__.items()})


#: The phantom demo's class names (low → high angle) when ``dataset.classes`` is null and the source is the phantom.
PHANTOM_CLASSES: tuple[str, ...] = ("small", "big")


class Dataset(Section):
    """What the loop learns from: the embedded phantom demo, or the user's own images at ``paths.raw``.

    ``Params.classes`` is the one accessor of the class tuple: ``classes`` when set, else (source ``folder``) the
    class folder names / metadata.csv labels of ``paths.raw`` sorted by name, else the demo's ``PHANTOM_CLASSES``.
    """

    source: Literal["phantom", "folder"] = "phantom"
    classes: tuple[str, ...] | None = None
    #: Ordinal classes (e.g. scores 1-4, in the order of ``classes``): evaluate adds quadratic kappa and MAE.
    ordered: bool = False

    @field_validator("classes")
    @classmethod
    def _distinct(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None:
            check_class_names(v, "dataset.classes")
        return v


def check_class_names(classes: tuple[str, ...], where: str) -> None:
    """Raise ValueError unless ``classes`` has at least two distinct, non-empty names (``where`` says whence)."""
    if len(classes) < 2:
        raise ValueError(f"{where} needs at least two classes, got {list(classes)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{where} has duplicates: {list(classes)}")
    if any(not c.strip() for c in classes):
        raise ValueError(f"{where} has an empty class name: {list(classes)}")
    if "reject" in classes:  # tasks.tables.REJECT: the review label of an unusable image
        raise ValueError(f"{where}: 'reject' is reserved for the review decision, rename that class")


class Phantom(Section):
    """The embedded phantom demo (procedural X-ray-like images, tasks/phantom.py) (``dataset.source: phantom``), labels known by construction.

    Its class names are ``dataset.classes``; ``thresholds`` holds one cut point between each two of them (checked
    in ``Params``, which sees both sections).
    """

    thresholds: tuple[float, ...] = (105.0,)
    angle_range: tuple[float, float] = (88.0, 122.0)
    image_size: int = Field(64, ge=32, le=1024)
    per_class: int = Field(320, ge=1)
    unlabeled: int = Field(3000, ge=0)

    @model_validator(mode="after")
    def _thresholds_in_range(self) -> "Phantom":
        if not self.thresholds:
            raise ValueError("phantom.thresholds needs at least one cut point")
        if list(self.thresholds) != sorted(self.thresholds):
            raise ValueError("phantom.thresholds must be increasing")
        lo, hi = self.angle_range
        if not lo < self.thresholds[0] <= self.thresholds[-1] < hi:
            raise ValueError(f"phantom.thresholds must lie inside angle_range {list(self.angle_range)}")
        return self


class Split(Section):
    train: float = Field(0.1, gt=0, lt=1)
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.7, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> "Split":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"ingest.split fractions must sum to 1, got {total:.4f}")
        return self


class Ingest(Section):
    image_size: int = Field(64, ge=16, le=2048)
    channels: Literal[1, 3] = 1
    split: Split = Split()
    near_duplicate_distance: int = Field(6, ge=0, le=256)  # bits of the 256-bit pHash (tasks/intake/decode.py)
    max_pixels: int = Field(50_000_000, ge=1)
    #: A multi-frame file (TIFF stack, animated GIF/PNG, multi-frame DICOM): use frame 1 and note it in the
    #: manifest's ``ingest_note``, or quarantine the file (tasks/intake/decode.py).
    multi_frame: Literal["first", "quarantine"] = "first"
    #: Grayscale DICOM to 8 bit: ``voi`` applies its VOI LUT or first window centre/width when it has one (else
    #: min/max); ``minmax`` always maps the image's own min/max (after the modality rescale) to 0..255.
    dicom_window: Literal["voi", "minmax"] = "voi"


class Caption(Section):
    template: str = "photo of a {thing}, {label}"
    thing: str = "image"  # what the images show, e.g. "teat end" (the phantom demo sets its own in params.yaml)
    instance_token: str = "zwx"
    #: prompts.json also gets a negative prompt per class: the other classes' instance prompts. Generation and the
    #: DreamBooth validation grid then guide each image *away from the other classes* instead of away from the
    #: empty prompt (classifier-free guidance between classes; see README "Class negatives").
    class_negatives: bool = True

    @field_validator("instance_token")
    @classmethod
    def _one_word(cls, v: str) -> str:
        if not v or " " in v:
            raise ValueError("caption.instance_token must be a single word such as 'zwx'")
        return v


#: Classifier backbones (tasks/classify/models.py builds them; torchvision ones with weights=None).
Backbone = Literal["custom_cnn", "resnet18", "resnet50", "vgg19", "vit_b_16", "inception_v3"]
#: Input size when baseline.input_size sets none (others: the data's size), and the least each takes: ResNet/VGG
#: halve 5 times, Inception-v3's auxiliary classifier needs 299². Weights files: tasks/classify/weights.py.
NATIVE_INPUT_SIZE = {"vit_b_16": 224, "inception_v3": 299}
MIN_INPUT_SIZE = {"custom_cnn": 16, "resnet18": 32, "resnet50": 32, "vgg19": 32, "vit_b_16": 16, "inception_v3": 299}
VIT_PATCH, WEIGHT_SUFFIXES = 16, (".safetensors", ".pt", ".pth")


class Augment(Section):
    """Training-time augmentation. Keep each transform label-preserving for your data: e.g. for classes defined by an
    angle, large rotations change the label."""

    hflip: bool = True  # only if a mirrored image keeps its label (true for the phantom demo)
    max_rotation: float = Field(3.0, ge=0, le=10)
    translate: float = Field(0.05, ge=0, le=0.3)
    scale: tuple[float, float] = (0.95, 1.05)
    brightness: float = Field(0.1, ge=0, le=1)
    contrast: float = Field(0.1, ge=0, le=1)
    #: Generic strong policy on top of the light one (per image, uint8); the evaluate arm real+augment uses
    #: strong_policy / strong_mix whatever these say, so the control exists without changing the baseline.
    policy: Literal["none", "trivial", "randaugment"] = "none"
    mix: Literal["none", "mixup", "cutmix"] = "none"  # batch mixing (soft labels)
    strong_policy: Literal["trivial", "randaugment"] = "randaugment"
    strong_mix: Literal["none", "mixup", "cutmix"] = "none"
    randaugment_ops: int = Field(2, ge=1, le=6)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    mix_alpha: float = Field(1.0, gt=0)


class Baseline(Section):
    """The one training recipe (tasks/classify/train.py). retrain and evaluate reuse it so arms differ only in data."""

    backbone: Backbone = "custom_cnn"
    #: Local initial weights per backbone (.safetensors/.pt/.pth state dict, never downloaded); a single path in
    #: params.yaml belongs to ``backbone`` (evaluate's other backbones then start from random weights).
    pretrained_weights: dict[Backbone, Path] = Field(default_factory=dict)
    #: Input size per backbone (images resized to it); a single number belongs to ``backbone``. Unset: ViT-B/16
    #: 224, Inception-v3 299, the others the data's image size.
    input_size: dict[Backbone, int] = Field(default_factory=dict)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    scheduler: Literal["none", "cosine", "step"] = "cosine"
    step_size: int = Field(10, ge=1)  # epochs between lr drops (scheduler: step)
    step_gamma: float = Field(0.1, gt=0, le=1)
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    focal_gamma: float = Field(2.0, ge=0)
    class_weights: Literal["none", "balanced"] = "balanced"  # also the focal loss alpha
    patience: int = Field(8, ge=1)  # early stopping on the validation set only
    monitor: Literal["val_loss", "val_balanced_accuracy"] = "val_loss"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 (else fp16) on CUDA, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)
    #: Re-estimate BatchNorm running statistics on the (unaugmented) train images before each validation.
    #: ``auto``: for Inception-v3 from random weights only. torchvision initialises it with a truncated normal of
    #: std 0.1 whatever the fan-in, so its ~90 BN layers see activations far from the unit variance their running
    #: statistics start at; after a few hundred steps eval-mode outputs still saturate (measured on the stripe
    #: fixture of tests/classify/test_models_train.py: every val epoch at chance without it, 1.00 with it).
    #: The other backbones (fan-in-scaled init) measured no better with it; ``always`` turns it on for them.
    bn_refresh: Literal["auto", "always", "never"] = "auto"
    augment: Augment = Augment()

    def refreshes_bn(self) -> bool:
        """Whether training re-estimates BatchNorm statistics before validating (``bn_refresh``)."""
        if self.bn_refresh != "auto":
            return self.bn_refresh == "always"
        return self.backbone == "inception_v3" and self.weights_for(self.backbone) is None

    @model_validator(mode="before")
    @classmethod
    def _per_backbone(cls, data):
        # One value in params.yaml belongs to `backbone`; kept per backbone, so an evaluate arm that swaps the
        # backbone (model_copy) never gets another backbone's weights file or input size.
        if isinstance(data, dict):
            b = data.get("backbone", cls.model_fields["backbone"].default)
            data = {**data, **{k: {} if data[k] is None else data[k] if isinstance(data[k], dict) else {b: data[k]}
                               for k in ("pretrained_weights", "input_size") if k in data}}
        return data

    @model_validator(mode="after")
    def _files_and_sizes_fit(self) -> "Baseline":
        bad = {b: str(p) for b, p in self.pretrained_weights.items() if p.suffix not in WEIGHT_SUFFIXES}
        if bad:
            raise ValueError(f"baseline.pretrained_weights must be {'/'.join(WEIGHT_SUFFIXES)} files: {bad}")
        for b, size in self.input_size.items():
            if size < MIN_INPUT_SIZE[b] or (b == "vit_b_16" and size % VIT_PATCH):
                raise ValueError(f"baseline.input_size {size} does not fit {b}: at least {MIN_INPUT_SIZE[b]}"
                                 + (f", a multiple of its {VIT_PATCH}-pixel patch" if b == "vit_b_16" else ""))
        return self

    def weights_for(self, backbone: str) -> Path | None:
        """The initial weights file for ``backbone``, if one is configured."""
        return self.pretrained_weights.get(backbone)

    def input_size_for(self, backbone: str) -> int | None:
        """The configured input size for ``backbone``, else its native size (None: the data's size)."""
        return self.input_size.get(backbone, NATIVE_INPUT_SIZE.get(backbone))


class Predict(Section):
    batch_size: int = Field(128, ge=1)
    #: temperature: one scalar T fitted by NLL on the real val split (tasks/classify/calibration.py); none: raw.
    calibration: Literal["temperature", "none"] = "temperature"
    calibration_bins: int = Field(10, ge=2, le=50)  # equal-width confidence bins of the ECE / reliability diagram
    #: Quality gate (tasks/generation/quality.py): a class whose generated images have k-NN precision below this
    #: against its real train images (baseline features) is flagged "out of the real manifold".
    min_class_precision: float = Field(0.1, ge=0, le=1)
    prc_neighborhood: int = Field(3, ge=1)  # k of the k-NN precision/recall (Kynkäänniemi et al. 2019)
    #: Memorisation check (tasks/generation/memorisation.py): within this many pHash bits of a real train image, or
    #: feature_ratio × the real images' median neighbour distance (features), a generated image is a copy.
    memorisation_phash_distance: int = Field(12, ge=0, le=256)
    memorisation_feature_ratio: float = Field(0.1, ge=0, le=1)


class Review(Section):
    mode: Literal["manual", "accept-confident", "reference"] = "reference"
    confidence_threshold: float = Field(0.95, gt=0, le=1)
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    #: How long a Prefect run waits paused at the checkpoint before it fails (resume later with `synthloop run`).
    pause_timeout_s: int = Field(7 * 24 * 3600, ge=10)
    #: Decisions a person makes (None: every item). The queue spends them where they pay (tasks/review/budget.py).
    budget: int | None = Field(None, ge=1)
    #: What items past the budget get: the prompt's class, the prediction if its calibrated confidence >=
    #: confidence_threshold (else dropped), or dropped (kept out of retraining).
    beyond_budget: Literal["intended", "predicted-if-confident", "drop"] = "drop"
    #: Random share of the queue always reviewed by a person (the unbiased estimate of each policy's error).
    audit_share: float = Field(0.05, ge=0, le=1)
    #: Share of the reviewed items that two different reviewers decide (inter-rater agreement).
    overlap_share: float = Field(0.0, ge=0, le=1)
    #: The page hides intended class, prediction and confidence until the item is decided (the reviewer can
    #: toggle it with B; each decision's audit entry records whether it was blind).
    blind: bool = False
    #: The Label Studio origin (scheme://host:port) allowed to load /image/ cross-origin (CORS on image routes
    #: only, never on the decision API); None: no cross-origin image access.
    labelstudio_origin: str | None = None

    @field_validator("labelstudio_origin")
    @classmethod
    def _one_origin(cls, v: str | None) -> str | None:
        import re

        origin = r"https?://([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\])(:\d{1,5})?"  # no path, no wildcard
        if v is not None and not re.fullmatch(origin, v):
            raise ValueError(f"review.labelstudio_origin must be one origin like http://127.0.0.1:8080 (scheme, "
                             f"host, optional port; no path, no '*'), got {v!r}")
        return v


class Retrain(Section):
    """Real + reviewed synthetic data, trained with the baseline recipe."""

    synthetic_ratio: float = Field(4.0, ge=0)  # max synthetic:real; published gains saturate near 10:1
    synthetic_cap: int | None = Field(None, ge=0)  # absolute max synthetic images (None: ratio only)
    synthetic_weight: float = Field(1.0, ge=0)  # per-sample loss weight of a synthetic image (real: 1)
    pretrain_on_synthetic: bool = False  # train on synthetic first, then fine-tune on real only
    pretrain_epochs: int = Field(10, ge=1)


class Schedule(Section):
    """The scheduled deployment of the loop (``synthloop serve`` / prefect.yaml)."""

    name: str = "nightly"
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    #: Overrides for unattended runs (``section.key=value``). Empty by default: a scheduled run with your own data
    #: pauses at the review checkpoint for a person. The demo's params.yaml sets ``review.mode=reference``.
    set_params: tuple[str, ...] = ()

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"schedule.cron must have 5 fields (min hour day month weekday), got {v!r}")
        return v
