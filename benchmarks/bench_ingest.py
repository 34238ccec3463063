"""Ingest throughput on 2,000 phantom images (images/s) and peak memory.

Renders 2,000 labeled phantoms (embedded-default size, 64 px) into a temporary folder, then times
``tasks.ingest.run`` on them twice: once plain (throughput) and once under tracemalloc (peak Python/NumPy heap
of the ingest call). The process's peak RSS (``ru_maxrss``) is reported as well; it includes rendering.
``python -m benchmarks.run ingest`` or ``python -m benchmarks.bench_ingest``.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import tasks  # noqa: F401  (offline defaults)

REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 2000


def _params(root: Path):
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_params  # the real params.yaml, paths under root

    return make_params(root, {"phantom": {"per_class": N_IMAGES // 2, "unlabeled": 0, "image_size": 64},
                              "ingest": {"image_size": 64}})


def main() -> dict[str, float]:
    """Run the benchmark; print and return images/s, seconds and peak memory (MiB)."""
    from tasks import ingest, phantom

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        params = _params(Path(tmp))
        start = time.perf_counter()
        phantom.run(params, out_dir=params.paths.phantom)
        render_s = time.perf_counter() - start
        start = time.perf_counter()
        out = ingest.run(params, raw=params.paths.raw, out_dir=params.paths.ingest)
        ingest_s = time.perf_counter() - start
        tracemalloc.start()
        ingest.run(params, raw=params.paths.raw, out_dir=Path(tmp) / "again")
        heap_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    result = {"images": out.metrics["n_ok"], "phantom_seconds": round(render_s, 2),
              "ingest_seconds": round(ingest_s, 2), "images_per_s": round(out.metrics["n_ok"] / ingest_s, 1),
              "ingest_heap_peak_mib": round(heap_peak / 2**20, 1),
              "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(f"ingest: {result['images']:.0f} images in {ingest_s:.1f} s = {result['images_per_s']} images/s; "
          f"heap peak {result['ingest_heap_peak_mib']} MiB, process peak RSS {result['process_peak_rss_mib']} MiB "
          f"(phantom render {render_s:.1f} s)")
    return result


if __name__ == "__main__":
    main()
