"""Discovery: unsafe metadata file names are rejected, plain ones accepted; metadata paths resolved without reading."""

from __future__ import annotations

import pytest

from tasks.intake import discover


@pytest.mark.parametrize("name, reason", [("../x.png", "escapes"), ("/etc/x.png", "absolute"),
                                          ("C:/x.png", "absolute"), ("a/../../x.png", "escapes"), ("", "empty")])
def test_check_relative_rejects_unsafe_names(name: str, reason: str) -> None:
    assert reason in discover.check_relative(name)


def test_check_relative_accepts_plain_names() -> None:
    assert discover.check_relative("images/a b/é.png") is None


def test_check_relative_rejects_control_characters() -> None:
    assert discover.check_relative("a\nb.png") == "file_name contains control characters"


@pytest.mark.timeout(30)
def test_resolve_in_root_checks_metadata_only_never_reads(tmp_path) -> None:
    import os

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.mkfifo(outside / "trap")  # reading it would block: resolving must not
    (root / "ok.png").write_bytes(b"x")
    os.mkfifo(root / "pipe.png")
    links = {"dangling.png": "gone.png", "out.png": str(outside / "trap"), "loop.png": "loop.png", "in.png": "ok.png"}
    for name, target in links.items():
        os.symlink(target, root / name)
    assert discover.resolve_in_root(root, "in.png") == ((root / "ok.png").resolve(), "in.png")
    for name, reason in [("dangling.png", "dangling symlink"), ("out.png", "symlink leaves the data root"),
                         ("loop.png", "symlink loop"), ("pipe.png", "not a regular file (named pipe)"),
                         ("nope.png", "file not found")]:
        with pytest.raises(discover.BadImage, match=reason.replace("(", "\\(").replace(")", "\\)")):
            discover.resolve_in_root(root, name)


def test_metadata_symlink_leaving_the_root_is_refused(tmp_path) -> None:
    import os

    (tmp_path / "root").mkdir()
    (tmp_path / "meta.csv").write_text("file_name,label\n")
    os.symlink(tmp_path / "meta.csv", tmp_path / "root" / "metadata.csv")
    with pytest.raises(discover.IngestError, match="symlink leading out of the data root"):
        discover.discover(tmp_path / "root")
