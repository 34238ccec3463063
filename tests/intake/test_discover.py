"""Discovery: unsafe metadata file names are rejected, plain ones accepted."""

from __future__ import annotations

import pytest

from tasks.intake import discover


@pytest.mark.parametrize("name, reason", [("../x.png", "escapes"), ("/etc/x.png", "absolute"),
                                          ("C:/x.png", "absolute"), ("a/../../x.png", "escapes"), ("", "empty")])
def test_check_relative_rejects_unsafe_names(name: str, reason: str) -> None:
    assert reason in discover.check_relative(name)


def test_check_relative_accepts_plain_names() -> None:
    assert discover.check_relative("images/a b/é.png") is None
