"""Progress a person sees, wherever they look: a tqdm bar in a terminal, one-line log records elsewhere.

Stage processes usually run with stderr piped (``dvc repro`` under the flow, ``make run 2>&1 | cat``, CI), where a
bar is either hidden or a smear of carriage returns. There ``progress`` logs ``<desc>: 40% (400/1000) ETA 1m20s``
every ``SYNTHLOOP_PROGRESS_S`` seconds (default 10), plus the first and the last step. The flow turns these lines
into Prefect log records and progress artifacts (flows/pipeline.py parses them with ``PROGRESS_LINE``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)

INTERVAL_ENV = "SYNTHLOOP_PROGRESS_S"
#: A progress log line: ``<desc>: <pct>% (<n>/<total>)`` (what flows/pipeline.py recognises).
PROGRESS_LINE = re.compile(r"(?P<desc>[\w][\w .-]*): (?P<pct>\d{1,3})% \((?P<n>\d+)/(?P<total>\d+)\)")


def format_eta(seconds: float) -> str:
    """``80`` → ``1m20s``; ``3700`` → ``1h01m``; unknown → ``?``."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class LogProgress:
    """tqdm's small interface (iterate, ``update``, ``set_postfix``, ``close``, context manager) as log lines."""

    def __init__(self, iterable: Iterable | None, desc: str, total: int | None, unit: str, initial: int,
                 interval_s: float):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self._start_n, self.interval_s = initial, initial, interval_s
        self._t0 = time.monotonic()
        self._last: float | None = None
        self._logged_n: int | None = None
        self._postfix = ""

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:  # also when the loop breaks early (early stopping): the last line says where it stopped
            self.close()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def line(self) -> str:
        """The current progress as one line (what is logged)."""
        if not self.total:
            return f"{self.desc}: {self.n} {self.unit}{self._postfix}"
        done = self.n - self._start_n
        elapsed = time.monotonic() - self._t0
        eta = (self.total - self.n) * elapsed / done if done > 0 else float("nan")
        pct = int(100 * self.n / self.total)
        return f"{self.desc}: {pct}% ({self.n}/{self.total}) ETA {format_eta(eta)}{self._postfix}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval_s or (self.total and self.n >= self.total):
            self._emit(now)

    def set_postfix(self, **values: Any) -> None:
        self._postfix = "".join(f" {k}={v}" for k, v in values.items())

    def _emit(self, now: float) -> None:
        self._last, self._logged_n = now, self.n
        log.info("%s", self.line())

    def close(self) -> None:
        """Log where the loop ended unless that was the last line logged (a loop cut short says so)."""
        if self._logged_n != self.n:
            self._emit(time.monotonic())


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             initial: int = 0, disable: bool = False) -> Any:
    """A progress reporter for a loop longer than a few seconds: tqdm in a terminal, log lines otherwise.

    ``disable`` silences it (e.g. every process but the main one under ``accelerate``).
    """
    from tqdm import tqdm

    if disable:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial)
    return LogProgress(iterable, desc, total, unit, initial, float(os.environ.get(INTERVAL_ENV, "10")))
