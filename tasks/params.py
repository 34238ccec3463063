"""The one typed params model: ``params.yaml`` is parsed here and nowhere else.

Every section is a frozen pydantic model with ``extra="forbid"``, so a typo or a wrong type fails at load time
with the offending key in the message, not after an hour of GPU. One sub-model per stage (named as the stage)
plus ``paths``. Cross-field rules live in validators.
"""

from __future__ import annotations

import csv
import os
import unicodedata
from pathlib import Path
from typing import Any

import yaml
from pydantic import PrivateAttr, ValidationError, model_validator

from tasks.sections import (PHANTOM_CLASSES, Baseline, Caption, Dataset, Ingest, Paths, Phantom, Predict, Retrain,
                            Review, Schedule, Section, check_class_names)
from tasks.sections_diffusion import Dreambooth, Generate, Pretrain
from tasks.sections_evaluate import Evaluate

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



def _sets(item: str, key: str, value: Any) -> bool:
    """Whether the override ``item`` sets ``key`` to ``value``, parsed as ``tasks.overrides`` applies it."""
    from tasks.overrides import parse_item  # imports this module: not at the top

    try:
        parts, parsed = parse_item(item, "schedule.set_params")
    except ParamsError:
        return False  # a malformed override is reported where it is applied
    return ".".join(parts) == key and parsed == value


class Params(Section):
    """The whole of params.yaml."""

    seed: int = 100
    profile: str = "embedded"
    paths: Paths
    dataset: Dataset = Dataset()
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
    #: Class names discovered in paths.raw (dataset.classes null, source folder): read once per Params object.
    _discovered: tuple[str, ...] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _dataset_rules(self) -> "Params":
        if self.dataset.source == "phantom":
            n = len(self.dataset.classes or PHANTOM_CLASSES)
            if len(self.phantom.thresholds) != n - 1:
                raise ValueError(f"phantom.thresholds needs len(dataset.classes)-1 = {n - 1} cut points, "
                                 f"got {len(self.phantom.thresholds)}")
        elif any(_sets(o, "review.mode", "reference") for o in self.schedule.set_params):
            raise ValueError("schedule.set_params sets review.mode=reference, the simulated reviewer of the phantom "
                             "demo; with dataset.source folder a scheduled run has no reference labeler: use [] "
                             "(the run pauses for a person) or review.mode=accept-confident")
        elif self.review.mode == "reference":
            raise ValueError("review.mode reference is the simulated reviewer of the phantom demo; with "
                             "dataset.source folder there is no reference labeler for your images: set review.mode "
                             "to manual or accept-confident")
        elif self.paths.raw == self.paths.phantom or self.paths.phantom in self.paths.raw.parents:
            raise ValueError(f"dataset.source folder reads your images at paths.raw, but paths.raw ({self.paths.raw}) "
                             f"is inside paths.phantom ({self.paths.phantom}): point paths.raw at your folder")
        return self

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
        """Class names of the loop, the one accessor every stage uses.

        ``dataset.classes`` when set; else, for ``dataset.source: folder``, the classes found in ``paths.raw``
        (``discover_classes``: sorted by name, so every stage sees the same tuple); else the demo's names.
        """
        if self.dataset.classes is not None:
            return self.dataset.classes
        if self.dataset.source == "phantom":
            return PHANTOM_CLASSES
        if self._discovered is None:
            self._discovered = discover_classes(self.paths.raw)
        return self._discovered

    @property
    def ordered(self) -> bool:
        """Whether the classes are ordinal (in the order of ``classes``): evaluate then reports kappa and MAE."""
        return self.dataset.ordered

    def pretrain_pool(self) -> Path | None:
        """Unlabeled images pretrain adds to the trainval images: ``pretrain.pool``, else the demo's pool."""
        if self.pretrain.pool is not None:
            return self.pretrain.pool
        return self.paths.phantom / "unlabeled" if self.dataset.source == "phantom" else None

    def flat(self) -> dict[str, Any]:
        """Flattened ``section.key`` dict, as logged to MLflow."""
        return _flatten(self.model_dump(mode="json"))


def discover_classes(raw: Path) -> tuple[str, ...]:
    """Class names of a user's folder, sorted by name: the ``label`` values of ``raw/metadata.csv`` when it exists,
    else the names of the class folders (non-hidden, not symlinked, as ingest walks them). Unicode NFC, as ingest."""
    raw = Path(raw)
    if not raw.is_dir():
        raise ParamsError(f"dataset.classes is null, so the classes are read from paths.raw, but {raw} is not a "
                          f"folder: put your images there or list dataset.classes")
    meta = raw / "metadata.csv"
    if meta.is_file():
        with meta.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "label" not in (reader.fieldnames or []):
                raise ParamsError(f"{meta} has no 'label' column, so dataset.classes cannot be read from it")
            found = {unicodedata.normalize("NFC", (row["label"] or "").strip()) for row in reader} - {""}
        where = f"the labels of {meta}"
    else:
        found = {unicodedata.normalize("NFC", e.name) for e in os.scandir(raw)
                 if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")}
        where = f"the class folders of {raw}"
    classes = tuple(sorted(found))
    try:
        check_class_names(classes, f"dataset.classes (null: read from {where})")
    except ValueError as err:
        raise ParamsError(str(err)) from None
    return classes


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


def load_params(path: Path | str | None = None, *, layers: bool = True) -> Params:
    """Load params from ``path``, else ``params.yaml`` in the working directory (as DVC does).

    With ``layers`` (the default) the checkout's profile and overrides are applied on top (``params.local.yaml``,
    ``$SYNTHLOOP_SET``: tasks/overrides.py), so every caller sees the values the stages run with;
    ``layers=False`` reads the file alone.
    """
    if layers:
        from tasks.overrides import load_layered

        return load_layered(path)[0]
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
