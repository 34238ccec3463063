"""Params layers: profiles and overrides without rewriting the tracked params.yaml.

The values a stage runs with are ``params.yaml`` ⊕ profile ⊕ local ``set`` ⊕ this run's overrides:

* ``params.local.yaml`` (untracked, this checkout's choice), written by ``synthloop params --profile/--set/--clear``:
  ``profile: gpu-sd15`` (``configs/<name>.yaml``, or a path to any params file, complete or partial) and
  ``set: [section.key=value, ...]``. After editing it by hand, run ``synthloop params`` (it re-resolves): DVC only
  sees what params.resolved.yaml holds.
* ``SYNTHLOOP_SET`` (environment; a JSON list of ``section.key=value``): one run's overrides — a scheduled run's
  ``schedule.set_params``, ``synthloop run --set``. The flow exports it to its stage processes; it ends with the run.
* ``params.resolved.yaml`` (committed as params.yaml alone resolves, so a fresh clone's ``dvc repro`` finds it):
  the resolved values, rewritten by every stage entry and by the flow.
  dvc.yaml tracks each stage's sections in it as well as in params.yaml, so DVC sees the values each stage used
  (dvc.lock records them) and an edit of either file makes the stages that read it stale.

``paths`` always come from params.yaml: dvc.yaml interpolates its deps and outs from there, so a profile's
``paths`` are ignored and a ``paths.*`` override is refused — a stage must never read a folder DVC does not track.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.io import atomic_write_text
from tasks.params import ParamsError, load_params

log = logging.getLogger(__name__)

LOCAL_FILE = "params.local.yaml"
RESOLVED_FILE = "params.resolved.yaml"
RUN_ENV = "SYNTHLOOP_SET"
_LOCAL_KEYS = ("profile", "set")


@dataclass(frozen=True)
class Layers:
    """What is layered over params.yaml, in order: a profile file, the checkout's ``set``, this run's ``set``."""

    profile: Path | None = None
    local_set: tuple[str, ...] = ()
    run_set: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The layers as logged to MLflow and shown in the report (empty when params.yaml is used as it is)."""
        out: dict[str, Any] = {}
        if self.profile is not None:
            out["profile"] = str(self.profile)
        if self.local_set:
            out["local_set"] = list(self.local_set)
        if self.run_set:
            out["run_set"] = list(self.run_set)
        return out


def describe_layers(root: Path | str = ".") -> str:
    """One line for a report: ``params.yaml`` alone, or what was layered over it (profile, kept and run overrides)."""
    layers = read_layers(root)
    parts = [f"profile {layers.profile.name}"] if layers.profile is not None else []
    if layers.local_set:
        parts.append("kept overrides " + ", ".join(layers.local_set))
    if layers.run_set:
        parts.append("this run's overrides " + ", ".join(layers.run_set))
    return "params.yaml" + (" + " + "; ".join(parts) if parts else " as it is (no profile, no overrides)")


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ParamsError(f"{what} {path} is not valid YAML: {err}") from None


def _string_list(value: Any, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParamsError(f"{source}: expected a list of 'section.key=value' strings, got {value!r}")
    return tuple(value)


def profile_path(name: str, root: Path) -> Path:
    """``gpu-sd15`` → ``configs/gpu-sd15.yaml``; anything with a ``/`` or a ``.yaml`` suffix is a path."""
    path = Path(name) if ("/" in name or name.endswith((".yaml", ".yml"))) else Path("configs") / f"{name}.yaml"
    return path if path.is_absolute() else root / path


def read_layers(root: Path | str = ".") -> Layers:
    """The layers of the checkout at ``root``: ``params.local.yaml`` (if any) and ``SYNTHLOOP_SET`` (if set)."""
    root = Path(root)
    local = root / LOCAL_FILE
    data = _read_yaml(local, "params layer") if local.is_file() else None
    data = data or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{local}: expected a mapping with keys {', '.join(_LOCAL_KEYS)}")
    unknown = sorted(set(data) - set(_LOCAL_KEYS))
    if unknown:
        raise ParamsError(f"{local}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(_LOCAL_KEYS)}; "
                          f"put params values under 'set' as section.key=value)")
    profile = None
    if data.get("profile"):
        profile = profile_path(str(data["profile"]), root)
        if not profile.is_file():
            raise ParamsError(f"{local}: profile {data['profile']!r} not found (looked for {profile})")
    raw_env = os.environ.get(RUN_ENV, "").strip()
    try:
        run_set = _string_list(json.loads(raw_env), f"${RUN_ENV}") if raw_env else ()
    except json.JSONDecodeError:
        raise ParamsError(f"${RUN_ENV} must be a JSON list of 'section.key=value' strings, got {raw_env!r}") from None
    return Layers(profile, _string_list(data.get("set"), f"{local}: set"), run_set)


def _coerce(text: str) -> Any:
    """Parse an override value the way YAML would (``0.9`` → float, ``[a, b]`` → list, ``x`` → str)."""
    value = yaml.safe_load(text)
    return text if value is None and text.strip() not in ("null", "~", "") else value


def parse_item(item: str, source: str) -> tuple[list[str], Any]:
    """``section.key=value`` → (``["section", "key"]``, the value parsed as YAML); ParamsError if malformed."""
    key, sep, raw = item.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep or not all(parts):
        raise ParamsError(f"{source}: override {item!r} is not of the form section.key=value")
    try:
        return parts, _coerce(raw)
    except yaml.YAMLError as err:
        raise ParamsError(f"{source}: override {item!r}: the value is not valid YAML ({err})") from None


def set_item(data: dict[str, Any], item: str, source: str) -> None:
    """Apply one ``section.key=value`` override to a params dict in place (validation happens on the result)."""
    parts, value = parse_item(item, source)
    if parts[0] == "paths":
        raise ParamsError(f"{source}: override {item!r}: paths come from params.yaml only (dvc.yaml reads its deps "
                          f"and outs there); edit params.yaml to move a folder")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ParamsError(f"{source}: override {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``over`` replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(base: dict[str, Any], layers: Layers) -> tuple[dict[str, Any], dict[str, Any]]:
    """params.yaml's dict with the layers applied (not yet validated), and the profile's paths left out."""
    data, ignored = dict(base), {}
    if layers.profile is not None:
        profile = _read_yaml(layers.profile, "profile") or {}
        if not isinstance(profile, dict):
            raise ParamsError(f"profile {layers.profile}: expected a mapping at the top level")
        ignored = {k: v for k, v in (profile.pop("paths", None) or {}).items() if base.get("paths", {}).get(k) != v}
        if ignored:
            log.info("profile %s: paths come from params.yaml, ignoring its %s", layers.profile,
                     ", ".join(f"paths.{k}={v}" for k, v in ignored.items()))
        data = merge(data, profile)
    for source, items in ((LOCAL_FILE, layers.local_set), (f"${RUN_ENV}", layers.run_set)):
        for item in items:
            set_item(data, item, source)
    return data, ignored


def load_layered(path: Path | str | None = None):
    """Params of the checkout holding ``path`` (default ./params.yaml) with its layers applied, and the layers."""
    from tasks.params import PARAMS_FILE, parse_params

    path = Path(path or PARAMS_FILE)
    base = load_params(path, layers=False)  # validates params.yaml alone first, so its own errors name it
    layers = read_layers(path.parent)
    if not layers.describe():
        return base, layers, _read_yaml(path, "params file")
    data, ignored = resolve(_read_yaml(path, "params file"), layers)
    try:
        return parse_params(data, f"{path} + {json.dumps(layers.describe())}"), layers, data
    except ParamsError as err:
        if not ignored:
            raise
        hint = ", ".join(f"paths.{k}: {v}" for k, v in ignored.items())
        raise ParamsError(f"{err}\n  (the profile's paths were not applied — paths come from params.yaml, which "
                          f"dvc.yaml reads; set them there, e.g. {hint})") from None


def record_resolved(path: Path | str | None = None):
    """Resolve the layers, write ``params.resolved.yaml`` (what DVC tracks beside params.yaml), return the Params.

    Called at every stage entry and by the flow before it asks DVC what is stale. Written atomically and only when
    its content changes.
    """
    params, layers, data = load_layered(path)
    target = Path(path or "params.yaml").parent / RESOLVED_FILE
    text = ("# Written by synthloop (tasks/overrides.py): params.yaml + profile + overrides, the values the stages "
            f"run with.\n# Layers: {json.dumps(layers.describe()) if layers.describe() else 'none'}. Do not edit: "
            "change params.yaml or params.local.yaml.\n" + yaml.safe_dump(data, sort_keys=False))
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        atomic_write_text(target, text)
    if layers.describe():
        log.info("params: params.yaml with %s", json.dumps(layers.describe()))
    return params


def write_local(root: Path | str, *, profile: str | None = None, set_items: list[str] | None = None,
                clear: bool = False) -> Layers:
    """Update ``params.local.yaml`` (the checkout's profile and ``set``), validating the result before writing."""
    root = Path(root)
    current = {} if clear else ({"profile": None, "set": []} | _local_dict(root))
    if profile is not None:
        current["profile"] = None if profile in ("", "none") else profile
    if set_items:
        keys = {i.partition("=")[0].strip() for i in set_items}
        current["set"] = [i for i in current.get("set") or [] if i.partition("=")[0].strip() not in keys]
        current["set"] += list(set_items)
    current = {k: v for k, v in current.items() if v}
    text = ("# This checkout's params layers (untracked): see README 'Profiles and overrides'.\n"
            + (yaml.safe_dump(current, sort_keys=False) if current else "{}\n"))
    previous = (root / LOCAL_FILE).read_text(encoding="utf-8") if (root / LOCAL_FILE).is_file() else None
    atomic_write_text(root / LOCAL_FILE, text)
    try:
        record_resolved(root / "params.yaml")
    except ParamsError:
        # The new layer is invalid: put the old one back so nothing is lost, then say why.
        if previous is None:
            (root / LOCAL_FILE).unlink()
        else:
            atomic_write_text(root / LOCAL_FILE, previous)
        raise
    return read_layers(root)


def _local_dict(root: Path) -> dict[str, Any]:
    path = root / LOCAL_FILE
    data = _read_yaml(path, "params layer") if path.is_file() else None
    return dict(data or {})


@contextlib.contextmanager
def run_overrides(items: list[str] | None) -> Iterator[None]:
    """Export one run's overrides (``SYNTHLOOP_SET``) to this process and the stage processes it starts.

    When the run ends (or fails) the variable is restored and ``params.resolved.yaml`` re-resolved without them,
    so afterwards ``dvc status`` compares the data with the checkout's own params: a stage the overrides changed
    shows as changed, and nothing tracked was rewritten.
    """
    previous = os.environ.get(RUN_ENV)
    if items:
        for item in items:  # refuse a malformed item before anything runs
            set_item({}, item, "run overrides")
        os.environ[RUN_ENV] = json.dumps(list(items))
    else:
        os.environ.pop(RUN_ENV, None)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_ENV, None)
        else:
            os.environ[RUN_ENV] = previous
        if items:
            try:
                record_resolved()
            except ParamsError as err:  # the run's own error (if any) is the one to see; say why this failed
                log.error("could not re-resolve params after the run: %s", err)
