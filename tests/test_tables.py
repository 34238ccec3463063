"""The hand-off contract: readers refuse escaping paths and keep content hashes as text."""

from __future__ import annotations


import pytest
from fixtures_classifier import make_generated

from tasks.stage import StageError
from tasks.tables import read_generated, resolve_under

def test_resolve_under_refuses_escaping_paths(tmp_path):
    assert resolve_under(tmp_path, "a/b.png") == (tmp_path / "a/b.png").resolve()
    with pytest.raises(StageError, match="outside"):
        resolve_under(tmp_path, "../x.png")



def test_read_generated_keeps_all_digit_sha256_as_text(tmp_path):
    man = make_generated(tmp_path / "gen", n=2, bad=0)
    man["sha256"] = ["0" * 64, "1" * 64]  # would parse as an integer without an explicit dtype
    man.to_csv(tmp_path / "gen" / "manifest.csv", index=False)
    gen = read_generated(tmp_path / "gen", ("small", "big")).set_index("file_name")["sha256"]
    assert gen.to_dict() == dict(zip(man["file_name"], ["0" * 64, "1" * 64]))
