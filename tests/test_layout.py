"""The house by wings (docs/ARCHITECTURE.md): no module imports a stage module (only ``tasks.stage`` loads them,
by name), and files and classes stay small enough to read."""

from __future__ import annotations

import ast

import pytest

from tasks.codedeps import ROOT, module_path, project_imports, project_modules
from tasks.params import STAGES
from tasks.stage import stage_module

STAGE_MODULES = frozenset(stage_module(s) for s in STAGES)
MAX_LINES = 400
MAX_CLASS_LINES = 120


def stage_imports(imports: set[str]) -> set[str]:
    """The stage modules among ``imports``: a stage gets its inputs from tables, never from another stage."""
    return imports & STAGE_MODULES


@pytest.mark.parametrize("module", project_modules())
def test_no_module_imports_a_stage_module(module: str):
    assert stage_imports(project_imports(module)) == set(), f"{module} imports a stage module"


def test_stage_import_check_sees_lazy_imports_inside_functions(tmp_path):
    pkg = tmp_path / "tasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "retrain.py").write_text("def run():\n    from tasks.baseline import run as other\n    return other\n")
    (pkg / "baseline.py").write_text("def run():\n    return 1\n")
    assert stage_imports(project_imports("tasks.retrain", tmp_path)) == {"tasks.baseline"}


@pytest.mark.parametrize("module", project_modules())
def test_files_and_classes_stay_small(module: str):
    path = module_path(module)
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_LINES, f"{path.relative_to(ROOT)} has over {MAX_LINES} lines: split it"
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            assert above.startswith("#"), (f"class {node.name} in {path.name} is over {MAX_CLASS_LINES} lines "
                                           "without a comment above it saying why")
