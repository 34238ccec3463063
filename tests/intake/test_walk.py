"""The safe walk: entries classified by lstat before anything opens them; names shown on one printable line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.intake import walk
from tasks.intake.walk import BadImage


def _entries(root: Path, **kw) -> dict[str, str | None]:
    return {e.rel: e.problem for e in walk.walk(root, **kw)}


def test_shown_escapes_undecodable_bytes_and_control_characters() -> None:
    assert walk.shown(os.fsdecode(b"bad\xff.png")) == "bad\\xff.png"
    assert walk.shown("new\nline\t\x1b.png") == "new\\nline\\t\\x1b.png"
    assert walk.shown("café ✓.png") == "café ✓.png"  # printable unicode stays as it is


def test_one_line_joins_lines_and_caps_length() -> None:
    assert walk.one_line("Unable to decode:\n  pylibjpeg: bad\r\n  pillow: worse\n") == \
        "Unable to decode: | pylibjpeg: bad | pillow: worse"
    long = walk.one_line("x" * 1000)
    assert len(long) == walk.MAX_REASON and long.endswith("…")


@pytest.mark.timeout(30)  # opening the FIFO would block forever
def test_special_files_are_entries_with_reasons_never_opened(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    os.mkfifo(tmp_path / "a" / "pipe.png")
    (tmp_path / "a" / "ok.png").write_bytes(b"x")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"x")
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / ".git" / "objects" / "1").write_bytes(b"x")
    with open(os.fsencode(tmp_path / "a") + b"/n\xe9.png", "wb") as fh:
        fh.write(b"x")
    assert _entries(tmp_path) == {
        ".git": "hidden folder (name starts with '.'): not searched",
        "a/.hidden.png": "hidden file (name starts with '.')",
        "a/ok.png": None,
        os.fsdecode(b"a/n\xe9.png"): "file name is not valid UTF-8",
        "a/pipe.png": "not a regular file (named pipe): not opened",
    }
    assert _entries(tmp_path, search_hidden=frozenset({".git"}))[".git/objects/1"] is None


def test_folder_symlinks_inside_are_followed_once_loops_and_escapes_are_not(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "real" / "x.png").write_bytes(b"x")
    (outside / "y.png").write_bytes(b"y")
    os.symlink("real", root / "alias")
    os.symlink("real", root / "alias2")
    os.symlink("..", root / "real" / "parent")
    os.symlink(outside, root / "out")
    entries = _entries(root)
    assert entries["alias/x.png"] is None and entries["real/x.png"] is None
    assert entries["alias2"] == "symlinked folder already searched through another symlink"
    assert entries["alias/parent"].startswith("symlinked folder loops back to .")
    assert entries["real/parent"].startswith("symlinked folder loops back to .")
    assert entries["out"] == "symlink leaves the data root: not read"
    assert not any(k.startswith("out/") for k in entries)


def test_file_symlinks_resolve_to_their_target_or_a_reason(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "t.png").write_bytes(b"t")
    os.symlink("t.png", tmp_path / "a" / "link.png")
    os.symlink("gone.png", tmp_path / "a" / "dangling.png")
    os.symlink("l2.png", tmp_path / "a" / "l1.png")
    os.symlink("l1.png", tmp_path / "a" / "l2.png")
    os.symlink("/etc/passwd", tmp_path / "a" / "passwd.png")
    found = {e.rel: e for e in walk.walk(tmp_path)}
    assert found["a/link.png"].problem is None and found["a/link.png"].path == (tmp_path / "a" / "t.png").resolve()
    assert found["a/dangling.png"].problem == "dangling symlink (its target does not exist)"
    assert found["a/l1.png"].problem == found["a/l2.png"].problem == "symlink loop"
    assert found["a/passwd.png"].problem == "symlink leaves the data root: not read"


@pytest.mark.timeout(30)
def test_read_regular_refuses_fifo_and_symlink_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "t.png").write_bytes(b"data")
    os.symlink("t.png", tmp_path / "link.png")
    assert walk.read_regular(tmp_path / "t.png") == b"data"
    with pytest.raises(BadImage, match="not a regular file \\(named pipe\\)"):
        walk.read_regular(tmp_path / "pipe")  # a file swapped for a FIFO after the walk: refused, not waited on
    with pytest.raises(BadImage, match="became a symlink"):
        walk.read_regular(tmp_path / "link.png")
    with pytest.raises(BadImage, match="cannot be opened"):
        walk.read_regular(tmp_path / "missing.png")


def test_unlistable_root_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        list(walk.walk(tmp_path / "missing"))


@pytest.mark.timeout(30)
def test_dvc_hazards_lists_what_dvc_hashing_cannot_take_hidden_folders_included(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / "a" / "ok.png").write_bytes(b"x")
    os.mkfifo(tmp_path / ".cache" / "pipe")
    os.symlink("/etc/passwd", tmp_path / "a" / "passwd.png")
    os.symlink("gone", tmp_path / "a" / "dangling.png")
    os.symlink("ok.png", tmp_path / "a" / "fine.png")
    with open(os.fsencode(tmp_path / "a") + b"/n\xe9.png", "wb") as fh:
        fh.write(b"x")
    assert {e.rel: e.problem for e in walk.dvc_hazards(tmp_path)} == {
        ".cache/pipe": "named pipe (DVC blocks or fails on it)",
        "a/dangling.png": "dangling or looping symlink (DVC stops)",
        os.fsdecode(b"a/n\xe9.png"): "name is not valid UTF-8 (DVC stops)",
        "a/passwd.png": "symlink leaves the folder (DVC reads its target)",
    }


@pytest.mark.timeout(30)
def test_dvc_preflight_refuses_a_folder_dvc_would_hang_on_naming_each_entry(tmp_path: Path) -> None:
    from tasks.stage import StageError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ok.png").write_bytes(b"x")
    walk.dvc_preflight(tmp_path)  # nothing DVC cannot hash: no error
    walk.dvc_preflight(tmp_path / "not-made-yet")  # ingest itself reports a missing folder
    for i in range(12):
        os.mkfifo(tmp_path / "a" / f"pipe{i:02d}.png")
    with pytest.raises(StageError, match=r"holds 12 entries that DVC cannot hash") as err:
        walk.dvc_preflight(tmp_path)
    text = str(err.value)
    assert "a/pipe00.png: named pipe" in text and "and 2 more" in text and "pipe11" not in text
    assert "\n" not in text and (tmp_path / "a" / "pipe00.png").exists(), "one line; nothing moved or deleted"


def test_walk_cli_exit_status_says_whether_dvc_can_hash(tmp_path: Path) -> None:
    (tmp_path / "ok.png").write_bytes(b"x")
    assert walk.main([str(tmp_path)]) == 0
    os.symlink("gone", tmp_path / "dangling.png")
    assert walk.main([str(tmp_path)]) == 1


def test_very_deep_tree_is_one_entry_not_a_recursion_error(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d"] * (walk.MAX_DEPTH + 5))
    deep.mkdir(parents=True)
    (deep / "x.png").write_bytes(b"x")
    (tmp_path / "d" / "y.png").write_bytes(b"y")
    entries = _entries(tmp_path)
    assert entries["d/y.png"] is None
    cut = "/".join(["d"] * walk.MAX_DEPTH)
    assert entries == {"d/y.png": None, cut: f"folder nested deeper than {walk.MAX_DEPTH} levels: not searched"}
