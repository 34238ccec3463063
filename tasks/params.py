"""The one typed params model: ``params.yaml`` is parsed here and nowhere else.

Every section is a frozen pydantic model with ``extra="forbid"``, so a typo or a wrong type fails at load time
with the offending key in the message, not after an hour of GPU. One sub-model per stage (named as the stage)
plus ``paths``. Cross-field rules live in validators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: Like DVC, everything is relative to the project directory the command runs in (where dvc.yaml lives).
PARAMS_FILE = "params.yaml"

#: The stages of the loop, in DAG order. One name everywhere: tasks/<stage>.py, params section, dvc.yaml stage,
#: output folder under data/. flows/pipeline.py and dvc.yaml must list exactly these (tested).
STAGES: tuple[str, ...] = (
    "phantom",
    "ingest",
    "caption",
    "pretrain",
    "dreambooth",
    "generate",
    "baseline",
    "predict",
    "review",
    "retrain",
    "evaluate",
)


class ParamsError(ValueError):
    """Invalid params: the message names the file, the key and what is wrong."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Section):
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


class Phantom(_Section):
    """Procedural hip-phantom X-rays: the embedded default data set, labels known by construction."""

    classes: tuple[str, ...] = ("small", "big")
    thresholds: tuple[float, ...] = (105.0,)
    angle_range: tuple[float, float] = (88.0, 122.0)
    image_size: int = Field(64, ge=32, le=1024)
    per_class: int = Field(320, ge=1)
    unlabeled: int = Field(3000, ge=0)

    @model_validator(mode="after")
    def _classes_match_thresholds(self) -> "Phantom":
        if len(self.classes) < 2:
            raise ValueError("phantom.classes needs at least two classes")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"phantom.classes has duplicates: {list(self.classes)}")
        if len(self.thresholds) != len(self.classes) - 1:
            raise ValueError(
                f"phantom.thresholds needs len(classes)-1 = {len(self.classes) - 1} cut points, "
                f"got {len(self.thresholds)}"
            )
        if list(self.thresholds) != sorted(self.thresholds):
            raise ValueError("phantom.thresholds must be increasing")
        lo, hi = self.angle_range
        if not lo < self.thresholds[0] <= self.thresholds[-1] < hi:
            raise ValueError(f"phantom.thresholds must lie inside angle_range {list(self.angle_range)}")
        return self


class Split(_Section):
    train: float = Field(0.1, gt=0, lt=1)
    val: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.7, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> "Split":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"ingest.split fractions must sum to 1, got {total:.4f}")
        return self


class Ingest(_Section):
    image_size: int = Field(64, ge=16, le=2048)
    channels: Literal[1, 3] = 1
    split: Split = Split()
    near_duplicate_distance: int = Field(6, ge=0, le=256)  # bits of the 256-bit pHash (tasks/ingest.py)
    max_pixels: int = Field(50_000_000, ge=1)


class Caption(_Section):
    template: str = "X-ray of a dog hip, {label} hip angle"
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


class Pretrain(_Section):
    """The base generator: ``tiny`` is pretrained here on the unlabeled pool; anything else is referenced."""

    base_model: str = "tiny"  # "tiny", a local diffusers folder, or a hub id (runwayml/stable-diffusion-v1-5)
    variant: str = ""  # weight variant of a hub/folder base, e.g. "fp16" for SD1.5 ("" = default files)
    steps: int = Field(1500, ge=0)  # UNet denoising steps on the pool
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(50, ge=0)
    caption: str = "X-ray of a dog hip"
    caption_dropout: float = Field(0.1, ge=0, lt=1)  # empty caption this often, so CFG has an unconditional
    vae_steps: int = Field(400, ge=0)  # the tiny VAE is first trained as an autoencoder on the pool
    vae_batch_size: int = Field(16, ge=1)
    vae_learning_rate: float = Field(1e-3, gt=0)
    vae_kl_weight: float = Field(1e-6, ge=0)
    precision: Literal["no", "bf16", "fp16"] = "no"  # autocast; trainable weights stay fp32
    sample_images: int = Field(16, ge=1, le=64)  # samples.png: a fixed-seed look at the pretrained base
    sample_steps: int = Field(20, ge=1)


class Dreambooth(_Section):
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


class Generate(_Section):
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


#: Classifier backbones (tasks/classifier.py builds them; torchvision ones with weights=None).
Backbone = Literal["custom_cnn", "resnet18", "resnet50", "vgg19", "vit_b_16", "inception_v3"]


class Augment(_Section):
    """Training-time augmentation. Rotations stay small: a large one changes the measured hip angle."""

    hflip: bool = True  # left/right hip symmetry: a mirrored hip X-ray has the same label
    max_rotation: float = Field(3.0, ge=0, le=10)
    translate: float = Field(0.05, ge=0, le=0.3)
    scale: tuple[float, float] = (0.95, 1.05)
    brightness: float = Field(0.1, ge=0, le=1)
    contrast: float = Field(0.1, ge=0, le=1)


class Baseline(_Section):
    """The one training recipe (tasks/classifier.py). retrain and evaluate reuse it so arms differ only in data."""

    backbone: Backbone = "custom_cnn"
    pretrained_weights: Path | None = None  # local torchvision state dict (.safetensors or .pt); never downloaded
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


class Predict(_Section):
    batch_size: int = Field(128, ge=1)


class Review(_Section):
    mode: Literal["manual", "accept-confident", "reference"] = "reference"
    confidence_threshold: float = Field(0.95, gt=0, le=1)
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    #: How long a Prefect run waits paused at the checkpoint before it fails (resume later with `synthloop run`).
    pause_timeout_s: int = Field(7 * 24 * 3600, ge=10)


class Retrain(_Section):
    """Real + reviewed synthetic data, trained with the baseline recipe."""

    synthetic_ratio: float = Field(4.0, ge=0)  # max synthetic:real; published gains saturate near 10:1
    synthetic_cap: int | None = Field(None, ge=0)  # absolute max synthetic images (None: ratio only)
    synthetic_weight: float = Field(1.0, ge=0)  # per-sample loss weight of a synthetic image (real: 1)
    pretrain_on_synthetic: bool = False  # train on synthetic first, then fine-tune on real only
    pretrain_epochs: int = Field(10, ge=1)


class Fid(_Section):
    """Synthetic-vs-real quality (torch-fidelity), offline."""

    inception_weights: Path | None = None  # local pt_inception weights file; else the baseline's features
    max_images: int = Field(2000, ge=10)  # per set, for speed
    prc_neighborhood: int = Field(3, ge=1)


class Evaluate(_Section):
    backbones: tuple[Backbone, ...] = ("custom_cnn",)
    seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    grid_per_class: int = Field(8, ge=1, le=64)
    fid: Fid = Fid()

    @field_validator("seeds")
    @classmethod
    def _enough_seeds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("evaluate.seeds needs at least two distinct seeds for a confidence interval")
        return v


class Schedule(_Section):
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


class Params(_Section):
    """The whole of params.yaml."""

    seed: int = 100
    profile: str = "embedded"
    paths: Paths
    phantom: Phantom = Phantom()
    ingest: Ingest = Ingest()
    caption: Caption = Caption()
    pretrain: Pretrain = Pretrain()
    dreambooth: Dreambooth = Dreambooth()
    generate: Generate = Generate()
    baseline: Baseline = Baseline()
    predict: Predict = Predict()
    review: Review = Review()
    retrain: Retrain = Retrain()
    evaluate: Evaluate = Evaluate()
    schedule: Schedule = Schedule()

    @model_validator(mode="after")
    def _prompts_match_training(self) -> "Params":
        # A model fine-tuned on per-image captions never saw the instance prompts: generating with them would
        # give images that follow no class.
        if self.dreambooth.caption_mode == "per_image" and self.generate.prompt_source == "instance":
            raise ValueError("dreambooth.caption_mode per_image trains on the images' own captions; set "
                             "generate.prompt_source: captions so generation prompts with them (not with the "
                             "instance prompts the model never saw)")
        return self

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names of the loop. For user data, ingest discovers them; they must match phantom.classes."""
        return self.phantom.classes

    def flat(self) -> dict[str, Any]:
        """Flattened ``section.key`` dict, as logged to MLflow."""
        return _flatten(self.model_dump(mode="json"))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _format_error(source: str, err: ValidationError) -> str:
    lines = [f"invalid params in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_params(data: dict[str, Any], source: str = "<dict>") -> Params:
    """Validate a params dict; raise ParamsError with every problem listed by key."""
    if not isinstance(data, dict):
        raise ParamsError(f"invalid params in {source}: expected a mapping at the top level")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_error(source, err)) from None


def load_params(path: Path | str | None = None) -> Params:
    """Load params from ``path``, else ``params.yaml`` in the working directory (as DVC does).

    Profiles (configs/*.yaml) are complete params files: copy one over params.yaml so DVC and the code read
    the same file (see README, "Profiles").
    """
    path = Path(path or PARAMS_FILE)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ParamsError(f"params file {path} is not valid YAML: {err}") from None
    return parse_params(data, str(path))


def _coerce(text: str) -> Any:
    """Parse an override value the way YAML would (``0.9`` → float, ``[a, b]`` → list, ``x`` → str)."""
    value = yaml.safe_load(text)
    return text if value is None and text.strip() not in ("null", "~", "") else value


def apply_overrides(path: Path | str, overrides: list[str]) -> Params:
    """Set ``section.key=value`` overrides in a params file, as ``dvc exp run -S`` does, and return the result.

    The file keeps its comments and layout (ruamel round trip). The result is validated *before* anything is
    written, and written atomically, so a bad override leaves the file untouched.
    """
    from ruamel.yaml import YAML

    from tasks.io import atomic_write_text

    path = Path(path)
    rt = YAML()
    rt.preserve_quotes = True
    doc = rt.load(path.read_text(encoding="utf-8"))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"override {item!r} is not of the form section.key=value")
        node = doc
        *parents, leaf = key.strip().split(".")
        for part in parents:
            if part not in node:
                raise ParamsError(f"override {item!r}: unknown section {part!r}")
            node = node[part]
        node[leaf] = _coerce(raw)
    import io as _io

    buf = _io.StringIO()
    rt.dump(doc, buf)
    params = parse_params(yaml.safe_load(buf.getvalue()), f"{path} with overrides {overrides}")
    atomic_write_text(path, buf.getvalue())
    return params
