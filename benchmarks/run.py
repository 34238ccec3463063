"""Run the CPU benchmarks: ``python -m benchmarks.run [name ...]`` (``make benchmark``).

Each ``benchmarks/bench_<name>.py`` exposes ``main() -> dict`` and prints its own side-by-side ratios. The GPU
scripts (``gpu_*.py``) are run by hand on a GPU machine. Results are summarised in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
from pathlib import Path

import tasks  # noqa: F401  (torchvision guard, offline defaults)

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = (argv if argv is not None else sys.argv[1:]) or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {unknown}; available: {available()}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        start = time.perf_counter()
        print(f"\n=== benchmark {name} ===", flush=True)
        results[name] = importlib.import_module(f"benchmarks.bench_{name}").main()
        print(f"=== {name}: {time.perf_counter() - start:.1f} s", flush=True)
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
