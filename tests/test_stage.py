"""The stage entry point: which module runs a stage, exit codes of `python -m tasks.<stage>`, metrics files."""

from __future__ import annotations

import importlib
import json
import logging

import pytest

from tasks import stage as stage_mod
from tasks.params import STAGES
from tasks.stage import StageError, WaitingForReview, cli_main, stage_module, write_metrics


def test_every_stage_module_has_run_and_review_is_its_own_wing():
    assert stage_module("ingest") == "tasks.ingest" and stage_module("review") == "tasks.review.stage"
    for name in STAGES:
        assert callable(importlib.import_module(stage_module(name)).run)


def test_unknown_stage_is_a_clear_error(params):
    with pytest.raises(StageError, match="unknown stage 'ingset'"):
        stage_mod.run_stage("ingset", params)


@pytest.mark.parametrize("raised,code,said", [(WaitingForReview("3 items wait"), 3, "3 items wait"),
                                              (StageError("bad input x"), 1, "bad input x")])
def test_cli_main_exit_codes_say_what_to_do(monkeypatch, caplog, params, raised, code, said):
    def fail(stage, p):
        raise raised

    def exit_now(status: int):  # the real one ends this (pytest's) process: tested in a subprocess below
        raise SystemExit(status)

    monkeypatch.setattr(stage_mod, "load_params", lambda: params)
    monkeypatch.setattr(stage_mod, "run_stage", fail)
    monkeypatch.setattr(stage_mod, "exit_now", exit_now)
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as exit_info:
        cli_main("ingest")
    assert exit_info.value.code == code and said in caplog.text
    if code == 1:
        assert "dvc repro ingest" in caplog.text


def test_write_metrics_is_the_dvc_metrics_file(params):
    path = write_metrics(params, "predict", {"n": 3, "rate": 0.5})
    assert path == params.paths.metrics / "predict.json" and json.loads(path.read_text()) == {"n": 3, "rate": 0.5}


def test_exit_now_runs_the_atexit_handlers_flushes_and_keeps_the_status(tmp_path):
    """The stage process skips the interpreter's teardown, not its cleanup: atexit handlers (temp folders, log
    handlers) run, buffered output is written, and the exit status is the one given."""
    import subprocess
    import sys

    log_file = tmp_path / "stage.log"
    code = (
        "import atexit, logging, shutil, sys, tempfile\n"
        "from tasks.stage import exit_now\n"
        "tmp = tempfile.mkdtemp(dir=sys.argv[1])\n"
        "atexit.register(shutil.rmtree, tmp)\n"
        "handler = logging.FileHandler(sys.argv[2])\n"
        "logging.getLogger().addHandler(handler)\n"
        "logging.getLogger().warning('written before exit')\n"
        "print('buffered', end='')\n"
        "exit_now(3)\n"
        "print('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(log_file)], capture_output=True, text=True)
    assert proc.returncode == 3 and proc.stdout == "buffered"
    assert log_file.read_text() == "written before exit\n"
    assert [p.name for p in tmp_path.iterdir()] == ["stage.log"], "the temporary folder was removed"
