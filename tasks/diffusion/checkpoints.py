"""DreamBooth checkpoints: atomic writes with a COMPLETE marker, rotation, resume, and what a resume must match.

A checkpoint is written to ``.partial-checkpoint-<step>``, gets its marker, then is renamed; only complete ones are
resumed from. Only trainable tensors are stored (LoRA: the adapters), restored by name.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from tasks.diffusion.dreambooth_data import DreamboothError
from tasks.diffusion.pipeline import PARTIAL_PREFIX
from tasks.io import atomic_write_json, atomic_write_text
from tasks.sections_diffusion import Dreambooth

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
#: Keys whose change does not invalidate a checkpoint (how long / how often, not what is trained).
_RESUMABLE_KEYS = {"steps", "resume", "checkpoint_every", "checkpoints_total_limit", "validation_every",
                   "validation_images", "log_model"}


def fingerprint(cfg: Dreambooth, seed: int, base_hash: str, data: str) -> dict:
    """What a checkpoint must agree on to be resumed: training settings, seed, base model and data."""
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _RESUMABLE_KEYS}
    return {**settings, "seed": seed, "base_hash": base_hash, "data_hash": data}


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with the marker), oldest first; incomplete ones are logged and skipped."""
    found = []
    for d in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _CKPT.match(d.name)
        if d.name.startswith(PARTIAL_PREFIX):
            log.warning("skipping %s: a checkpoint write that never finished", d)
        elif m and not (d / COMPLETE).is_file():
            log.warning("skipping %s: no %s marker (interrupted write)", d, COMPLETE)
        elif m:
            found.append((int(m.group(1)), d))
    return sorted(found)


def save_checkpoint(accelerator: Any, folder: Path, step: int, state: dict, keep: int) -> Path:
    """Save the full training state atomically: temp dir → marker → rename; then rotate to ``keep``."""
    final = folder / f"checkpoint-{step}"
    tmp = folder / f"{PARTIAL_PREFIX}checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        atomic_write_json(tmp / "trainer_state.json", state)
        atomic_write_text(tmp / COMPLETE, f"step {step}\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for _, old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old)
            log.info("rotated out %s", old.name)
    accelerator.wait_for_everyone()
    return final


def resume_state(accelerator: Any, folder: Path, fingerprint: dict) -> dict:
    """Restore the newest complete checkpoint into ``accelerator``; return its trainer state. None → error."""
    checkpoints = list_checkpoints(folder)
    if not checkpoints:
        raise DreamboothError(
            f"dreambooth.resume is 'latest' but {folder} holds no complete checkpoint. Set dreambooth.resume: none "
            f"to train from the base model (a silent fresh start would hide a lost run).")
    step, path = checkpoints[-1]
    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    if state.get("fingerprint") != fingerprint:
        changed = sorted(k for k in fingerprint if state.get("fingerprint", {}).get(k) != fingerprint[k])
        raise DreamboothError(f"cannot resume from {path}: training settings changed since it was written "
                              f"({', '.join(changed)}); restore them or set dreambooth.resume: none")
    accelerator.load_state(str(path))
    log.info("resumed from %s (step %d)", path, step)
    return state


def register_trainable_io(accelerator: Any) -> None:
    """Checkpoint only trainable tensors (LoRA: adapters only), restored by name — the LoRA-resume bug designed out."""
    from safetensors.torch import load_file, save_file

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i, model in enumerate(models if accelerator.is_main_process else []):
            inner = accelerator.unwrap_model(model)
            tensors = {n: p.detach().float().cpu().contiguous() for n, p in inner.named_parameters()
                       if p.requires_grad}
            save_file(tensors, str(Path(output_dir) / f"trainable_{i}.safetensors"))
        weights.clear()  # accelerate writes nothing else for the models

    def load_hook(models: list, input_dir: str) -> None:
        for i in range(len(models)):
            inner = accelerator.unwrap_model(models[i])
            tensors = load_file(str(Path(input_dir) / f"trainable_{i}.safetensors"))
            expected = {n for n, p in inner.named_parameters() if p.requires_grad}
            if set(tensors) != expected:
                raise DreamboothError(f"checkpoint {input_dir} does not match the model being trained "
                                      f"({len(set(tensors) ^ expected)} parameter names differ)")
            with_dtype = {n: t.to(dict(inner.named_parameters())[n].dtype) for n, t in tensors.items()}
            inner.load_state_dict(with_dtype, strict=False)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
