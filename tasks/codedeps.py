"""The code each stage runs, derived from the import graph: what dvc.yaml must list as the stage's code deps.

DVC re-runs a stage only when one of its deps changes, so a stage's deps must name every project module its
command imports, directly or not (lazy imports inside functions included: they run too). This module walks the
imports with ``ast`` (nothing is imported or executed), so the answer is the same on every machine.

``python -m tasks.codedeps`` prints the difference between dvc.yaml and the import graph;
``python -m tasks.codedeps --write`` (``make deps``) rewrites each stage's code deps in dvc.yaml, keeping its data
deps and every comment. ``tests/test_dag.py`` fails when the two disagree.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import yaml

from tasks.params import STAGES

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "tasks"


def module_path(module: str, root: Path = ROOT) -> Path | None:
    """The file of a project module (``tasks.x.y`` → tasks/x/y.py or tasks/x/y/__init__.py); None if not ours."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name an ``import`` anywhere in the file may load (``from a import b``: a, and a.b if a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def project_imports(module: str, root: Path = ROOT) -> set[str]:
    """The project modules ``module`` imports directly (anywhere in the file)."""
    return {name for name in _imported_names(module_path(module, root), module) if module_path(name, root)}


def project_modules(root: Path = ROOT) -> list[str]:
    """Every module of the ``tasks`` package, by dotted name."""
    names = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _with_parents(module: str) -> list[str]:
    """A module and the packages above it: importing tasks.a.b runs tasks/__init__.py and tasks/a/__init__.py."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(entry: str, root: Path = ROOT) -> set[str]:
    """The project modules that running ``entry`` may import, ``entry`` included."""
    seen: set[str] = set()
    todo = _with_parents(entry)
    while todo:
        module = todo.pop()
        path = module_path(module, root)
        if module in seen or path is None:
            continue
        seen.add(module)
        for name in project_imports(module, root):
            todo.extend(_with_parents(name))
    return seen


def stage_entry_modules(stage: str, root: Path = ROOT) -> list[str]:
    """What ``python -m tasks.<stage>`` executes: the stage module (and the package's ``__main__`` if it has one)."""
    if (root / PACKAGE / stage).is_dir():
        return [f"{PACKAGE}.{stage}.__main__", f"{PACKAGE}.{stage}.stage"]
    return [f"{PACKAGE}.{stage}"]


def stage_code_deps(stage: str, root: Path = ROOT) -> list[str]:
    """dvc.yaml code deps of ``stage``: repository-relative paths of every module its command may import."""
    modules: set[str] = set()
    for entry in stage_entry_modules(stage, root):
        modules |= closure(entry, root)
    return sorted(module_path(m, root).relative_to(root).as_posix() for m in modules)


def is_code(dep: str) -> bool:
    return dep.endswith(".py") and dep.startswith(PACKAGE + "/")


def declared(dvc_yaml: Path) -> dict[str, list[str]]:
    """Each stage's deps as dvc.yaml lists them (uninterpolated)."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    return {name: list(stage.get("deps", [])) for name, stage in stages.items()}


def differences(dvc_yaml: Path, root: Path = ROOT) -> dict[str, tuple[list[str], list[str]]]:
    """Per stage whose code deps are wrong: (missing from dvc.yaml, listed but not imported)."""
    out = {}
    for stage, deps in declared(dvc_yaml).items():
        want, have = set(stage_code_deps(stage, root)), {d for d in deps if is_code(d)}
        if want != have:
            out[stage] = (sorted(want - have), sorted(have - want))
    return out


def _deps_block(code: list[str], data: list[str]) -> list[str]:
    lines = ["    deps:  # code: the stage's import graph (make deps); then its data\n"]
    lines += [f"      - {dep}\n" for dep in code]
    lines += [f'      - "{dep}"\n' if "$" in dep else f"      - {dep}\n" for dep in data]
    return lines


def rewrite(dvc_yaml: Path, root: Path = ROOT) -> list[str]:
    """Rewrite every stage's ``deps:`` block in place (code from the import graph, data deps kept); return the
    stages whose deps changed."""
    deps = declared(dvc_yaml)
    lines = dvc_yaml.read_text(encoding="utf-8").splitlines(keepends=True)
    out, stage, changed, i = [], None, [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip()[:-1]
        if stage in deps and line.startswith("    deps:"):
            j = i + 1
            text = line
            # the old block: a flow list (maybe over several lines) or "      - item" lines
            while j < len(lines) and (lines[j].startswith("      ") or (text.count("[") > text.count("]"))):
                text += lines[j]
                j += 1
            data = [d for d in deps[stage] if not is_code(d)]
            new = _deps_block(stage_code_deps(stage, root), data)
            if new != lines[i:j]:
                changed.append(stage)
            out += new
            i = j
            continue
        out.append(line)
        i += 1
    if changed:
        dvc_yaml.write_text("".join(out), encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.codedeps", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps from the import graph")
    args = parser.parse_args(argv)
    dvc_yaml = ROOT / "dvc.yaml"
    if args.write:
        changed = rewrite(dvc_yaml)
        print(f"dvc.yaml: code deps rewritten for {', '.join(changed)}" if changed else "dvc.yaml: code deps up to date")
        return 0
    diff = differences(dvc_yaml)
    for stage, (missing, extra) in diff.items():
        print(f"{stage}: missing {missing}; not imported {extra}")
    unknown = set(declared(dvc_yaml)) - set(STAGES)
    if unknown:
        print(f"dvc.yaml stages not in tasks.params.STAGES: {sorted(unknown)}")
    return 1 if diff or unknown else 0


if __name__ == "__main__":
    sys.exit(main())
