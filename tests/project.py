"""Build a throw-away copy of the project (code + dvc.yaml + a shrunk params.yaml) to run DVC and Prefect in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, SHRINK, _merge

#: Never copied: outputs and local state of the developer's own runs.
SKIP_TOP = {"data", "metrics", "reports", "mlflow.db", ".venv", ".git", ".prefect", "benchmarks"}


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return [f for f in out if f and f.split("/")[0] not in SKIP_TOP and (REPO / f).is_file()]


def make_project(dest: Path, overrides: dict | None = None) -> Path:
    """Copy the project to ``dest`` with a shrunk params.yaml (relative paths, as a user's would be)."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(_merge(_merge(data, SHRINK), overrides or {}), sort_keys=False))
    from tasks.overrides import record_resolved

    # What a checkout gets from its first `synthloop` command: DVC tracks params.resolved.yaml beside params.yaml.
    record_resolved(dest / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], cwd=dest,
                   check=True)
    return dest


def copy_project(src: Path, dest: Path, overrides: dict | None = None, *, drop: tuple[str, ...] = ()) -> Path:
    """A copy of a project that has already run (code, params, data, DVC cache and lock), params overridden.

    The MLflow store is not copied (its artifact paths point into ``src``): the copy starts a fresh one. ``drop``
    removes folders of the copy first, e.g. ``data/review`` to start the review over as a user would.
    """
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlruns", ".prefect"))
    for rel in drop:
        shutil.rmtree(dest / rel)
    if overrides:
        data = yaml.safe_load((dest / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(_merge(data, overrides), sort_keys=False))
    return dest


def run_loop(dest: Path, *args: str, env: dict[str, str] | None = None,
             timeout: int = 900) -> subprocess.CompletedProcess:
    """``synthloop run`` in ``dest`` (a subprocess, as a user runs it); fails the test with the output tail."""
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", *args], cwd=dest, env=env or env_for(dest),
                          text=True, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, f"synthloop run {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def env_for(dest: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{dest / 'mlflow.db'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SYNTHLOOP_PARENT_RUN_ID", None)
    return env


def dvc(dest: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=dest, env=env_for(dest), text=True,
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc
