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

    monkeypatch.setattr(stage_mod, "load_params", lambda: params)
    monkeypatch.setattr(stage_mod, "run_stage", fail)
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as exit_info:
        cli_main("ingest")
    assert exit_info.value.code == code and said in caplog.text
    if code == 1:
        assert "dvc repro ingest" in caplog.text


def test_write_metrics_is_the_dvc_metrics_file(params):
    path = write_metrics(params, "predict", {"n": 3, "rate": 0.5})
    assert path == params.paths.metrics / "predict.json" and json.loads(path.read_text()) == {"n": 3, "rate": 0.5}
