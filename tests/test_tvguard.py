"""The torchvision guard: stubs op schemas only when torchvision's extension cannot load, in both states."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks import tvguard

REPO = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=180)


def _extension_loads_here() -> bool:
    probe = _python("import torch, tasks.tvguard as g; p = g.extension_path(); "
                    "print(p is not None and g._extension_loads(p))")
    return probe.stdout.strip().endswith("True")


def test_guarded_entry_point_imports_everything_that_needs_torchvision():
    """Through `import tasks` (what every entry point does first), the broken-by-default imports work."""
    proc = _python(
        "import tasks, torchvision, torchvision.transforms.v2, torch_fidelity\n"
        "from torchvision.models import resnet18\n"
        "from transformers import CLIPTextModel\n"
        "from diffusers import StableDiffusionPipeline\n"
        "import tasks.tvguard as g; print('state', g._state); resnet18()"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = proc.stdout.split("state")[-1].strip()
    assert state == ("native" if _extension_loads_here() else "stubbed")


def test_unguarded_import_fails_on_this_cpu_machine_or_guard_does_nothing():
    """Documents the problem the guard exists for: without it, a CUDA torchvision next to CPU torch dies."""
    proc = _python("import torchvision")
    if _extension_loads_here():
        assert proc.returncode == 0  # a normal install: nothing to fix, and the guard must stay out of the way
    else:
        assert proc.returncode != 0 and "torchvision::nms" in proc.stderr


def test_guard_does_nothing_when_the_extension_loads(monkeypatch: pytest.MonkeyPatch):
    """Normal CUDA (or CPU+CPU) install: the extension loads, no schema is defined."""
    monkeypatch.setattr(tvguard, "_state", None)
    monkeypatch.setattr(tvguard, "_stub_library", None)
    defined = []
    monkeypatch.setattr(tvguard, "_define_stubs", lambda: defined.append(True))
    monkeypatch.setattr(tvguard, "extension_path", lambda: Path("/fake/_C.so"))
    assert tvguard.ensure_torchvision_ops(extension_loads=lambda p: True) == "native"
    assert defined == []


def test_guard_stubs_when_the_extension_fails(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tvguard, "_state", None)
    defined = []
    monkeypatch.setattr(tvguard, "_define_stubs", lambda: defined.append(True))
    monkeypatch.setattr(tvguard, "extension_path", lambda: Path("/fake/_C.so"))
    assert tvguard.ensure_torchvision_ops(extension_loads=lambda p: False) == "stubbed"
    assert defined == [True]


def test_guard_without_torchvision_installed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tvguard, "_state", None)
    monkeypatch.setattr(tvguard, "extension_path", lambda: None)
    assert tvguard.ensure_torchvision_ops(extension_loads=lambda p: pytest.fail("must not probe")) == "absent"


def test_importing_tasks_and_flows_does_not_import_heavy_libraries():
    """The guard is lazy and flows are wiring: importing them pays for no torch, pandas or mlflow."""
    proc = _python("import sys, tasks, tasks.params, flows.cli, flows.pipeline, flows.schedule; "
                   "print(sorted(m for m in ('torch', 'pandas', 'mlflow', 'torchvision') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["tasks.phantom", "flows.cli"])
def test_stage_commands_arm_the_guard(module: str):
    """`python -m tasks.<stage>` imports the tasks package first, so the guard is armed in DVC commands too."""
    proc = _python(f"import sys, importlib; importlib.import_module('{module}'); "
                   "import tasks.tvguard as g; print(any(isinstance(f, g._TorchvisionGuard) for f in sys.meta_path)"
                   " or 'torchvision' in sys.modules)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("True")
