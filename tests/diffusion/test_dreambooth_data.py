"""tasks/diffusion/dreambooth_data.py: derived batch order and the caption-input checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreambooth_fixtures import write_caption
from tasks.diffusion.dreambooth_data import DreamboothError, batch_indices, read_caption


def test_batch_indices_cover_each_epoch_and_are_reproducible() -> None:
    steps = [batch_indices(6, 2, seed=1, micro_step=s) for s in range(3)]
    assert sorted(torch.cat(steps).tolist()) == list(range(6))  # one epoch = every example once
    assert torch.equal(batch_indices(6, 2, 1, 4), batch_indices(6, 2, 1, 4))
    assert not torch.equal(torch.cat(steps), torch.cat([batch_indices(6, 2, 1, s) for s in range(3, 6)]))
    assert len(batch_indices(3, 5, 0, 0)) == 5  # fewer examples than a batch: repeated, not short


def test_read_caption_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DreamboothError, match="metadata.csv is missing"):
        read_caption(tmp_path, "class")
    folder = write_caption(tmp_path / "c", per_class=1)
    prompts = json.loads((folder / "prompts.json").read_text())
    del prompts["instance_prompts"]["big"]
    (folder / "prompts.json").write_text(json.dumps(prompts))
    with pytest.raises(DreamboothError, match=r"labels \['big'\] without an instance prompt"):
        read_caption(folder, "class")
