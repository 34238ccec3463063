"""Progress a person sees: log lines with % and ETA when stderr is not a terminal, tqdm when it is."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from tasks import progress as progress_mod
from tasks.progress import PROGRESS_LINE, format_eta, progress


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tasks.progress"]


def test_non_tty_loop_logs_percent_count_and_eta(monkeypatch: pytest.MonkeyPatch, caplog):
    monkeypatch.setattr(sys, "stderr", _Pipe())
    monkeypatch.setenv(progress_mod.INTERVAL_ENV, "0")
    with caplog.at_level(logging.INFO, logger="tasks.progress"):
        assert list(progress(range(4), desc="generate", unit="img")) == [0, 1, 2, 3]
    lines = _lines(caplog)
    assert lines[0].startswith("generate: 25% (1/4) ETA ") and lines[-1].startswith("generate: 100% (4/4) ETA ")
    assert all(PROGRESS_LINE.search(line) for line in lines), "the flow must recognise every line"


def test_interval_limits_the_lines_to_first_and_last(monkeypatch: pytest.MonkeyPatch, caplog):
    monkeypatch.setattr(sys, "stderr", _Pipe())
    monkeypatch.setenv(progress_mod.INTERVAL_ENV, "3600")
    with caplog.at_level(logging.INFO, logger="tasks.progress"):
        with progress(total=1000, desc="dreambooth", unit="step", initial=100) as bar:
            for _ in range(900):
                bar.update(1)
                bar.set_postfix(loss="0.1234")
    assert _lines(caplog) == [_lines(caplog)[0], _lines(caplog)[-1]]
    assert _lines(caplog)[0].startswith("dreambooth: 10% (101/1000)")
    assert _lines(caplog)[-1].startswith("dreambooth: 100% (1000/1000)") and _lines(caplog)[-1].endswith("loss=0.1234")


def test_a_loop_cut_short_logs_where_it_stopped(monkeypatch: pytest.MonkeyPatch, caplog):
    monkeypatch.setattr(sys, "stderr", _Pipe())
    monkeypatch.setenv(progress_mod.INTERVAL_ENV, "3600")
    with caplog.at_level(logging.INFO, logger="tasks.progress"):
        with pytest.raises(RuntimeError):
            with progress(total=10, desc="evaluate arms") as bar:
                for i in range(10):
                    if i == 3:
                        raise RuntimeError("diverged")
                    bar.update(1)
    assert _lines(caplog)[-1].startswith("evaluate arms: 30% (3/10)")


def test_terminal_gets_a_tqdm_bar_and_disable_is_silent(monkeypatch: pytest.MonkeyPatch, caplog):
    from tqdm import tqdm

    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert isinstance(progress(range(3), desc="x"), tqdm)
    monkeypatch.setattr(sys, "stderr", _Pipe())
    with caplog.at_level(logging.INFO, logger="tasks.progress"):
        assert list(progress(range(3), desc="x", disable=True)) == [0, 1, 2]
    assert _lines(caplog) == []


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (80, "1m20s"), (3700, "1h01m"), (float("nan"), "?")])
def test_format_eta(seconds: float, text: str):
    assert format_eta(seconds) == text


def test_a_loop_left_early_logs_where_it_stopped(monkeypatch: pytest.MonkeyPatch, caplog):
    """Early stopping breaks out of the epoch loop: the last line says where."""
    monkeypatch.setattr(sys, "stderr", _Pipe())
    monkeypatch.setenv(progress_mod.INTERVAL_ENV, "3600")
    with caplog.at_level(logging.INFO, logger="tasks.progress"):
        for epoch in progress(range(1, 21), desc="train epochs", unit="epoch"):
            if epoch == 8:
                break
    assert _lines(caplog)[-1].startswith("train epochs: 35% (7/20)")
