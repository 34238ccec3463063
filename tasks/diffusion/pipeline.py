"""Load, save, hash and re-schedule Stable Diffusion pipelines (the tiny model and SD1.5 alike).

A base model is a hub id (``runwayml/stable-diffusion-v1-5``) or a local diffusers folder — loaded with
``from_pretrained``; offline when ``HF_HUB_OFFLINE`` is set (the project default, see ``tasks/env.py``).
No training code lives here: this module only knows how to load, save and describe pipelines.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import tasks  # noqa: F401  (torchvision guard before diffusers imports torchvision)
from tasks.io import sha256_file
from tasks.stage import StageError

#: Component folders of a diffusers SD pipeline: what ``model_hash`` covers.
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

SCHEDULERS = ("ddim", "dpm++", "euler", "pndm")

#: Prefix of a folder being written (pipeline, checkpoint); a leftover one is a killed write, never loaded.
PARTIAL_PREFIX = ".partial-"


class ModelNotAvailable(StageError):
    """The base model's weights are not where params say (wrong path, or a hub id not in the offline cache)."""


def save_pipeline(pipe: Any, folder: Path | str) -> Path:
    """Save ``pipe`` as a diffusers folder (safetensors) via a temp sibling + rename, so a kill leaves no half model.

    An existing folder is replaced only after the new one is complete.
    """
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f"{PARTIAL_PREFIX}{folder.name}"
    old = folder.parent / f"{PARTIAL_PREFIX}{folder.name}.old"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------------------------- loading


def _looks_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") != 1 or Path(ref).exists()


def load_pipeline(ref: str | Path, *, dtype: Any = None, device: Any = None, variant: str | None = None) -> Any:
    """Load a ``StableDiffusionPipeline`` from a local diffusers folder or a hub id.

    Hub ids resolve from the local cache when ``HF_HUB_OFFLINE`` is set. ``variant="fp16"`` picks SD1.5's fp16
    weight files. Missing weights raise ``ModelNotAvailable`` naming the reference and the fix.
    """
    from diffusers import StableDiffusionPipeline

    ref_s = str(ref)
    local = isinstance(ref, Path) or _looks_local(ref_s)
    if local and not (Path(ref_s).expanduser() / "model_index.json").is_file():
        raise ModelNotAvailable(
            f"no diffusers pipeline at {ref_s!r} (model_index.json missing). Run the stage that writes it "
            f"(`dvc repro pretrain` / `dvc repro dreambooth`) or point params at a folder saved with "
            f"StableDiffusionPipeline.save_pretrained().")
    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if variant:
        kwargs["variant"] = variant
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(Path(ref_s).expanduser()) if local else ref_s, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelNotAvailable(_missing_message(ref_s, local, variant, err)) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


def _missing_message(ref: str, local: bool, variant: str | None, err: Exception) -> str:
    import os

    if local:
        return (f"could not load the diffusers pipeline in {ref!r}: {err}. The folder is incomplete or corrupt; "
                f"re-create it (`dvc repro` the stage that wrote it).")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "false", "False", "")
    how = (f"download it once on a connected machine with HF_HUB_OFFLINE=0 "
           f"(`huggingface-cli download {ref}` or run the stage with HF_HUB_OFFLINE=0), "
           f"or set the base model to a local folder")
    mode = "offline (HF_HUB_OFFLINE is set) and it is not in the local cache" if offline else "not reachable"
    var = f" (variant={variant!r})" if variant else ""
    return f"base model {ref!r}{var} is {mode}: {err}. Fix: {how}."


def model_hash(folder: Path | str) -> str:
    """Stable content hash of a pipeline folder's model files (component folders + model_index.json).

    Top-level extras such as ``model_card.json`` are left out so writing a card does not change the hash.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ModelNotAvailable(f"model_hash: {folder} is not a diffusers pipeline folder (no model_index.json)")
    h = hashlib.sha256()
    files = [folder / "model_index.json"] + sorted(
        p for c in COMPONENTS if (folder / c).is_dir() for p in (folder / c).rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- schedulers


def set_scheduler(pipe: Any, name: str) -> Any:
    """Swap ``pipe.scheduler`` for ``name`` (ddim | dpm++ | euler | pndm), keeping the trained noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    classes = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
               "pndm": PNDMScheduler}
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpm++" else {}
    pipe.scheduler = classes[name].from_config(pipe.scheduler.config, **extra)
    return pipe
