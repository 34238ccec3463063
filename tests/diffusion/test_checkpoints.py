"""tasks/diffusion/checkpoints.py: only complete checkpoints count."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.diffusion.checkpoints import COMPLETE, list_checkpoints


def test_list_checkpoints_skips_incomplete(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for step, complete in ((2, True), (10, True), (12, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / COMPLETE).write_text("")
    (tmp_path / ".partial-checkpoint-14").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 10]  # numeric order, not lexical
    assert "checkpoint-12" in caplog.text and ".partial-checkpoint-14" in caplog.text
