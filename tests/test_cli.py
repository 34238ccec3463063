"""The `synthloop` CLI (flows/cli.py): subcommands, the printed answer, errors."""

from __future__ import annotations

import pytest

from flows import cli


def test_parser_knows_the_subcommands_and_refuses_unknown_stages(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["stage", "ingest"]).name == "ingest"
    assert parser.parse_args(["run", "--stages", "baseline", "predict"]).stages == ["baseline", "predict"]
    with pytest.raises(SystemExit):
        parser.parse_args(["stage", "ingset"])
    assert "invalid choice" in capsys.readouterr().err


def test_headline_is_the_answer_and_first_tables_without_the_data_line(tmp_path):
    report = tmp_path / "report.md"
    assert cli._headline(report) == ""
    report.write_text("# T\n\nAnswer: helped.\n\nData: 10 images\n\n## A\n\n|x|\n\n## B\n\n|y|\n\n## C\n\nrest\n")
    got = cli._headline(report)
    assert got.startswith("# T") and "Answer: helped." in got and "|y|" in got
    assert "Data:" not in got and "rest" not in got


def test_bad_params_exit_1_with_the_key_named(tmp_path, monkeypatch, caplog):
    (tmp_path / "params.yaml").write_text("seed: 1\npaths: {}\nbaselin: {}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["stage", "ingest"])
    assert exit_info.value.code == 1 and "baselin" in caplog.text


def test_params_subcommand_keeps_overrides_out_of_params_yaml(tmp_path, monkeypatch, capsys):
    import json

    from conftest import REPO

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNTHLOOP_SET", raising=False)
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["params", "--set", "generate.num_images=7"])
    assert exit_info.value.code == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"layers": {"local_set": ["generate.num_images=7"]}, "changed": {"generate.num_images": 7}}
    assert (tmp_path / "params.yaml").read_text() == before
    assert "num_images: 7" in (tmp_path / "params.resolved.yaml").read_text()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["params", "--set", "generate.num_images=-1"])
    assert exit_info.value.code == 1, "an invalid override is refused"
    assert "generate.num_images=7" in (tmp_path / "params.local.yaml").read_text(), "and the kept layer survives"
