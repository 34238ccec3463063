"""The whole embedded-default loop on this machine: wall time, per-stage breakdown, and the no-op re-run.

Runs ``synthloop run`` in a fresh copy of the project (so the developer's data/ is untouched), then again with
nothing changed. Goals (issue 7): whole loop ≤ 10 min on 2 cores after install, no-op re-run ≤ 30 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _copy_project(dest: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from project import make_project  # the same copy the pipeline tests use

    make_project(dest, overrides=_embedded_default())


def _embedded_default() -> dict:
    """No shrinking: undo the test SHRINK by re-applying the real params.yaml values."""
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


def _run(dest: Path) -> float:
    from project import env_for

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "run"], cwd=dest, env=env_for(dest), check=True)
    return time.perf_counter() - start


def main() -> dict:
    with tempfile.TemporaryDirectory(prefix="synthloop-bench-") as tmp:
        dest = Path(tmp) / "proj"
        _copy_project(dest)
        full = _run(dest)
        stages = {p.stem: json.loads(p.read_text()).get("stage_seconds") for p in sorted((dest / "metrics").glob("*.json"))}
        noop = _run(dest)
    result = {"loop_seconds": round(full, 1), "noop_rerun_seconds": round(noop, 1), "stage_seconds": stages}
    print(f"whole loop: {full:.1f} s (goal ≤ 600 s) | no-op re-run: {noop:.1f} s (goal ≤ 30 s)")
    for stage, sec in sorted(stages.items(), key=lambda kv: -(kv[1] or 0)):
        print(f"  {stage:<11} {sec:>7.1f} s")
    return result


if __name__ == "__main__":
    main()
