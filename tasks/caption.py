"""Stage ``caption``: the ingested train/val images as Hugging Face imagefolders with captions and prompts.

Writes ``train/`` and ``val/`` (never the test split: it stays with evaluate), each holding
``<label>/<image>.png`` (hard links to the ingest output where the file system allows, else copies) and a
``metadata.csv`` with ``file_name,text,label,...`` where ``file_name`` is relative to that folder — the layout
``datasets.load_dataset("imagefolder", data_dir=...)`` reads. ``text`` is the user's caption when the input had
one, else ``caption.template`` formatted with ``{label}``, ``{angle}``, ``{left_angle}``, ``{right_angle}``,
``{thing}`` (and any other manifest column). ``prompts.json`` holds the DreamBooth instance prompt per class and
the class prompt. Text cells are neutralised against spreadsheet formulas; tables pass the GX suite.
"""

from __future__ import annotations

import logging
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.io import (TEMP_PREFIX, atomic_write_bytes, atomic_write_json, clean_stale_temp,
                      restore_numeric)
from tasks.diffusion.prompts import PROMPT_SEPARATOR, class_prompt
from tasks.params import Params
from tasks.stage import StageError, cli_main
from tasks.tables import read_ingest_manifest, write_imagefolder_metadata

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
#: Ingest bookkeeping that means nothing to a captioned data set; every other manifest column is carried over.
#: Columns caption writes itself; the rest (user metadata such as angles) may be numbers.
CORE_COLUMNS = ("file_name", "text", "label", "caption_source", "source")
DROPPED_COLUMNS = ("split", "sha256", "phash", "group", "width", "height", "orig_width", "orig_height", "caption",
                   "ingest_note")


class CaptionError(StageError):
    """A caption cannot be built (unknown template field, missing value) or the input is unusable."""


@dataclass(frozen=True)
class CaptionOutputs:
    train: Path
    val: Path
    prompts: Path
    metrics: dict[str, float]


def template_fields(template: str) -> list[str]:
    """Names of the ``{fields}`` a caption template uses."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as err:
        raise CaptionError(f"caption.template {template!r} is not a valid format string: {err}") from None


def _typed(value: Any) -> Any:
    """Numbers read back from CSV as text become floats, so ``{angle:.1f}`` works."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def format_caption(template: str, fields: dict[str, Any]) -> str:
    """``template`` filled from ``fields``; CaptionError names a field the record does not have."""
    values = {k: _typed(v) for k, v in fields.items() if v is not None and v == v and v != ""}
    missing = [f for f in template_fields(template) if f not in values]
    if missing:
        raise CaptionError(f"caption.template uses field(s) {missing} that record {fields.get('file_name', '?')} "
                           f"does not have; available: {sorted(values)}")
    try:
        return template.format(**values)
    except (ValueError, TypeError, IndexError, KeyError) as err:
        raise CaptionError(f"caption.template {template!r} cannot format record "
                           f"{fields.get('file_name', '?')}: {err}") from None


def caption_table(manifest: pd.DataFrame, template: str, thing: str) -> pd.DataFrame:
    """Imagefolder metadata for one split: ``file_name`` relative to the split folder, ``text``, ``label``, extras.

    A non-empty user caption wins over the template.
    """
    rows = []
    for rec in manifest.to_dict("records"):
        user = str(rec.get("caption") or "").strip()
        text = user or format_caption(template, {**rec, "thing": thing})
        name = Path(rec["file_name"]).relative_to(rec["split"]).as_posix()
        extras = {k: v for k, v in rec.items() if k not in (*DROPPED_COLUMNS, "file_name", "label")}
        rows.append({"file_name": name, "text": text, "label": rec["label"], "caption_source":
                     "user" if user else "template", **extras})
    return pd.DataFrame(rows)


def build_prompts(classes: tuple[str, ...], token: str, thing: str, class_negatives: bool = False,
                  captions: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """DreamBooth prompts: one instance prompt per class (``photo of <token> <class> <thing>``) and the class prompt.

    With ``class_negatives``, ``negative_prompts`` maps each class to the other classes' instance prompts, joined by
    ``tasks.diffusion.prompts.PROMPT_SEPARATOR`` (their text embeddings are averaged; with two classes it is simply the other one).
    ``captions`` (class → its train images' captions) become ``caption_prompts``: distinct, sorted, for
    ``generate.prompt_source: captions``.
    """
    if not classes:
        raise CaptionError("no classes to build prompts for")
    instance = {c: f"photo of {token} {c} {thing}" for c in classes}
    prompts: dict[str, Any] = {"classes": list(classes), "instance_prompts": instance,
                               "class_prompt": class_prompt(thing)}
    if captions is not None:
        missing = [c for c in classes if not captions.get(c)]
        if missing:
            raise CaptionError(f"no train captions for class(es) {missing}: every class needs train images")
        prompts["caption_prompts"] = {c: sorted(set(captions[c])) for c in classes}
    if class_negatives and len(classes) > 1:
        prompts["negative_prompts"] = {c: PROMPT_SEPARATOR.join(instance[o] for o in classes if o != c)
                                       for c in classes}
    return prompts


def link_or_copy(src: Path, dst: Path) -> bool:
    """Place ``src`` at ``dst`` atomically, as a hard link when possible (no copy of the bytes); True if linked."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return True
    tmp = dst.with_name(f"{TEMP_PREFIX}{dst.name}")
    try:
        os.link(src, tmp)
    except OSError:  # other device, or a file system without hard links
        atomic_write_bytes(dst, src.read_bytes(), durable=False)
        return False
    os.replace(tmp, dst)
    return True


def _write_split(manifest: pd.DataFrame, trainval: Path, folder: Path, params: Params) -> tuple[pd.DataFrame, int]:
    table = caption_table(manifest, params.caption.template, params.caption.thing)
    table = restore_numeric(table, [c for c in table.columns if c not in CORE_COLUMNS])
    n_linked = sum(link_or_copy(trainval / src, folder / name)
                   for src, name in zip(manifest["file_name"], table["file_name"]))
    write_imagefolder_metadata(folder, table, params.classes)
    keep = set(table["file_name"])
    for p in folder.rglob("*.png"):  # images of a previous run that are no longer listed
        if p.relative_to(folder).as_posix() not in keep:
            p.unlink()
    return table, n_linked


def run(params: Params, *, trainval: Path, out_dir: Path) -> CaptionOutputs:
    """Caption the train and val splits of ``trainval`` into imagefolders under ``out_dir``, plus prompts.json."""
    trainval, out_dir = Path(trainval), Path(out_dir)
    clean_stale_temp(out_dir)
    manifest = read_ingest_manifest(trainval, params.classes)
    leaked = sorted(set(manifest["split"]) - set(SPLITS))
    if leaked:
        raise CaptionError(f"{trainval / 'manifest.csv'} holds split(s) {leaked}; caption reads train/val only")
    metrics: dict[str, float] = {}
    captions: dict[str, list[str]] = {}
    for split in SPLITS:
        part = manifest[manifest["split"] == split]
        if part.empty:
            raise CaptionError(f"split {split!r} of {trainval / 'manifest.csv'} is empty")
        table, n_linked = _write_split(part, trainval, out_dir / split, params)
        if split == "train":
            captions = table.groupby("label")["text"].agg(list).to_dict()
        metrics[f"n_{split}"] = float(len(table))
        metrics[f"n_{split}_user_captions"] = float((table["caption_source"] == "user").sum())
        metrics[f"n_{split}_linked"] = float(n_linked)
    prompts = build_prompts(params.classes, params.caption.instance_token, params.caption.thing,
                            params.caption.class_negatives, captions)
    atomic_write_json(out_dir / "prompts.json", prompts)
    log.info("caption: %s", metrics)
    return CaptionOutputs(out_dir / "train", out_dir / "val", out_dir / "prompts.json", metrics)


if __name__ == "__main__":
    cli_main("caption")
