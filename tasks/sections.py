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


#: The demo's class names (low → high hip angle) when ``dataset.classes`` is null and the source is the phantom.
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
    """Procedural hip-phantom X-rays: the embedded demo (``dataset.source: phantom``), labels known by construction.

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
    thing: str = "hip xray"
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


class Pretrain(Section):
    """The base generator: ``tiny`` is pretrained here on the data set's own trainval images (+ ``pool``); a
    hub/folder base (SD1.5) is referenced as it is."""

    base_model: str = "tiny"  # "tiny", a local diffusers folder, or a hub id (runwayml/stable-diffusion-v1-5)
    variant: str = ""  # weight variant of a hub/folder base, e.g. "fp16" for SD1.5 ("" = default files)
    steps: int = Field(1500, ge=0)  # UNet denoising steps on the pool
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(50, ge=0)
    #: Extra unlabeled images (a folder, optionally with metadata.csv) besides the trainval split; null = none
    #: (with dataset.source phantom: the demo's unlabeled pool, paths.phantom/unlabeled). See Params.pretrain_pool.
    pool: Path | None = None
    #: The one caption of every pretraining image; null = caption's class prompt ("photo of a <caption.thing>").
    caption: str | None = None
    caption_dropout: float = Field(0.1, ge=0, lt=1)  # empty caption this often, so CFG has an unconditional
    vae_steps: int = Field(400, ge=0)  # the tiny VAE is first trained as an autoencoder on the pool
    vae_batch_size: int = Field(16, ge=1)
    vae_learning_rate: float = Field(1e-3, gt=0)
    vae_kl_weight: float = Field(1e-6, ge=0)
    precision: Literal["no", "bf16", "fp16"] = "no"  # autocast; trainable weights stay fp32
    sample_images: int = Field(16, ge=1, le=64)  # samples.png: a fixed-seed look at the pretrained base
    sample_steps: int = Field(20, ge=1)


class Dreambooth(Section):
    """DreamBooth fine-tuning of the base generator (tasks/dreambooth.py); keys follow diffusers' script."""

    caption_mode: Literal["class", "per_image"] = "class"  # class: one concept per class; per_image: metadata text
    mode: Literal["full", "lora"] = "full"
    steps: int = Field(400, ge=1)  # optimizer steps (each = batch_size × gradient_accumulation_steps examples)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    adam_weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_accumulation_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False  # only honoured with bitsandbytes + CUDA (logged fallback to AdamW otherwise)
    precision: Literal["no", "bf16", "fp16"] = "no"  # autocast; trainable weights always stay fp32
    train_text_encoder: bool = False
    lora_rank: int = Field(8, ge=1)
    lora_alpha: int = Field(8, ge=1)
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    snr_gamma: float = Field(0.0, ge=0)  # min-SNR-γ loss weighting; 0 = off (5.0 is the paper's value)
    offset_noise: float = Field(0.0, ge=0)  # 0.05–0.1 helps very dark/bright images
    prior_preservation: bool = True
    prior_loss_weight: float = Field(1.0, ge=0)
    num_class_images: int = Field(64, ge=0)  # generated by the base model with the class prompt, cached
    inference_steps: int = Field(20, ge=1)  # class images and validation grids
    guidance_scale: float = Field(3.0, ge=0)
    checkpoint_every: int = Field(100, ge=1)
    checkpoints_total_limit: int = Field(2, ge=1)
    resume: Literal["none", "latest"] = "none"
    validation_every: int = Field(200, ge=1)
    validation_images: int = Field(4, ge=1, le=16)  # per class, fixed seeds
    log_model: bool = True  # copy the output pipeline into MLflow artifacts

    @model_validator(mode="after")
    def _prior_needs_images(self) -> "Dreambooth":
        if self.prior_preservation and self.num_class_images < 1:
            raise ValueError("dreambooth.prior_preservation needs num_class_images >= 1")
        if self.lr_warmup_steps > self.steps:
            raise ValueError("dreambooth.lr_warmup_steps cannot exceed dreambooth.steps")
        return self


class Generate(Section):
    num_images: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    guidance_scale: float = Field(8.0, ge=0)
    num_inference_steps: int = Field(20, ge=1)
    scheduler: Literal["ddim", "dpm++", "euler", "pndm"] = "ddim"
    negative_prompt: str = ""
    shard_size: int = Field(250, ge=1)
    engine: Literal["local", "dask"] = "local"
    #: Share of each class in the generated set (keys = classes); null = balanced.
    class_ratios: dict[str, float] | None = None
    #: Where each image's prompt comes from: ``instance`` = the class's instance prompt (``photo of zwx <class>
    #: <thing>``, what ``dreambooth.caption_mode: class`` trains); ``captions`` = the class's real train captions,
    #: cycled (prompts.json ``caption_prompts``, what ``caption_mode: per_image`` trains).
    prompt_source: Literal["instance", "captions"] = "instance"
    #: Prompt variations, cycled per class; each must contain "{prompt}" (the prompt chosen by prompt_source).
    prompt_templates: tuple[str, ...] = ()
    #: Output size in pixels; null = the model's native size.
    image_size: int | None = Field(None, ge=16, le=2048)
    #: auto (fp16 on CUDA, fp32 on CPU) | fp32 | bf16 (CPU: autocast; CUDA: weights) | fp16 (CUDA only).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: Torch CPU threads per shard worker. Fixed because CPU float results depend on the thread count.
    cpu_threads: int = Field(2, ge=1)
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    writer_threads: int = Field(2, ge=1)
    grid_per_class: int = Field(16, ge=1)
    #: Frames of a latent slerp between two seeds (grids/interpolation.png); 0 = off.
    interpolation_frames: int = Field(0, ge=0)
    top_up_rounds: int = Field(2, ge=0, le=10)  # rounds replacing filtered images per class (generation/topup.py)

    @field_validator("prompt_templates")
    @classmethod
    def _templates_have_prompt(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in v if "{prompt}" not in t]
        if bad:
            raise ValueError(f"generate.prompt_templates must each contain '{{prompt}}': {bad}")
        return v

    @field_validator("class_ratios")
    @classmethod
    def _ratios_positive(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and (not v or any(r < 0 for r in v.values()) or sum(v.values()) <= 0):
            raise ValueError("generate.class_ratios needs non-negative shares with a positive sum")
        return v


#: Classifier backbones (tasks/classify/models.py builds them; torchvision ones with weights=None).
Backbone = Literal["custom_cnn", "resnet18", "resnet50", "vgg19", "vit_b_16", "inception_v3"]
#: Input size when baseline.input_size sets none (others: the data's size), and the least each takes: ResNet/VGG
#: halve 5 times, Inception-v3's auxiliary classifier needs 299². Weights files: tasks/classify/weights.py.
NATIVE_INPUT_SIZE = {"vit_b_16": 224, "inception_v3": 299}
MIN_INPUT_SIZE = {"custom_cnn": 16, "resnet18": 32, "resnet50": 32, "vgg19": 32, "vit_b_16": 16, "inception_v3": 299}
VIT_PATCH, WEIGHT_SUFFIXES = 16, (".safetensors", ".pt", ".pth")


class Augment(Section):
    """Training-time augmentation. Rotations stay small: a large one changes the measured hip angle."""

    hflip: bool = True  # left/right hip symmetry: a mirrored hip X-ray has the same label
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
    augment: Augment = Augment()

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
    #: Overrides for unattended runs: nobody is there to review at 2 a.m. unless you say so.
    set_params: tuple[str, ...] = ("review.mode=reference",)

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"schedule.cron must have 5 fields (min hour day month weekday), got {v!r}")
        return v
