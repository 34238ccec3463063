"""Atomic writes: a failure mid-write leaves the old file whole and no temp file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from tasks import io as sio


def test_atomic_write_replaces_whole_file(tmp_path: Path):
    target = tmp_path / "a" / "f.txt"
    sio.atomic_write_text(target, "old")
    sio.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert list(target.parent.iterdir()) == [target]


def test_failure_mid_write_keeps_old_version_and_no_temp(tmp_path: Path):
    target = tmp_path / "f.bin"
    sio.atomic_write_bytes(target, b"old")
    with pytest.raises(OSError, match="disk full"), sio.atomic_open(target) as fh:
        fh.write(b"partial")
        raise OSError(28, "disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_sigkill_during_write_leaves_old_or_new_and_temp_is_cleaned(tmp_path: Path):
    target = tmp_path / "big.bin"
    sio.atomic_write_bytes(target, b"A" * 10)
    script = textwrap.dedent(f"""
        import os, signal, tasks.io as sio
        with sio.atomic_open({str(target)!r}) as fh:
            fh.write(b"B" * 1000)
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"A" * 10
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(sio.TEMP_PREFIX)]
    assert len(leftovers) == 1, "the killed writer leaves its temp file ..."
    assert sio.clean_stale_temp(tmp_path) == 1, "... which the next start removes"
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


@pytest.mark.parametrize("cell", ["=1+1", "+SUM(A1)", "-cmd", "@x", "\tx"])
def test_formula_cells_are_neutralised(tmp_path: Path, cell: str):
    path = tmp_path / "t.csv"
    sio.atomic_write_csv(path, pd.DataFrame({"text": [cell, "plain"], "n": [-1, 2]}))
    back = pd.read_csv(path, keep_default_na=False)
    assert back.loc[0, "text"].startswith("'") and back.loc[0, "text"].lstrip("'").strip() == cell.strip()
    assert back.loc[1, "text"] == "plain" and back.loc[0, "n"] == -1


def test_tree_hash_depends_on_content_and_names(tmp_path: Path):
    (tmp_path / "a.txt").write_text("1")
    h1 = sio.tree_hash(tmp_path)
    (tmp_path / "a.txt").write_text("2")
    h2 = sio.tree_hash(tmp_path)
    os.rename(tmp_path / "a.txt", tmp_path / "b.txt")
    assert len({h1, h2, sio.tree_hash(tmp_path)}) == 3


def test_carriage_return_and_numbers():
    assert sio.safe_csv_cell("\rx") == "'\rx"
    assert sio.safe_csv_cell(-5) == -5 and sio.safe_csv_cell("a=b") == "a=b"


def test_restore_numeric_turns_numeric_text_back_into_numbers_only_where_asked():
    df = pd.DataFrame({"angle": ["-12.5", "101.0"], "label": ["1", "2"], "note": ["-x", "ok"]})
    out = sio.restore_numeric(df, ["angle", "note"])
    assert out["angle"].tolist() == [-12.5, 101.0], "negative angles are data again"
    assert out["label"].tolist() == ["1", "2"], "columns not named stay text (a label '1' is not a number)"
    assert out["note"].tolist() == ["-x", "ok"], "a column with any non-number stays text"
    assert df["angle"].tolist() == ["-12.5", "101.0"], "the input is not modified"


def test_offline_defaults_never_override_the_user(monkeypatch: pytest.MonkeyPatch):
    from tasks.env import apply_offline_defaults

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("DVC_NO_ANALYTICS", raising=False)
    apply_offline_defaults()
    assert os.environ["HF_HUB_OFFLINE"] == "0", "a user who allows downloads keeps that choice"
    assert os.environ["DVC_NO_ANALYTICS"] == "1"
