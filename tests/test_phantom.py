"""The phantom stage: a balanced labeled set and a pool, deterministic by seed; params validation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import make_params
from tasks import phantom
from tasks.io import tree_hash
from tasks.params import ParamsError


def test_run_writes_balanced_labeled_set_and_pool(params) -> None:
    out = phantom.run(params, out_dir=params.paths.phantom)
    meta = pd.read_csv(out.labeled / "metadata.csv")
    assert list(meta.columns) == ["file_name", "label", "caption", "left_angle", "right_angle", "angle"]
    assert meta.label.value_counts().to_dict() == {"small": 40, "big": 40}
    expected = [phantom.label_for_angle(a, (105.0,), ("small", "big")) for a in (meta.left_angle + meta.right_angle) / 2]
    assert meta.label.tolist() == expected
    assert all(f.startswith(f"{lab}/") for f, lab in zip(meta.file_name, meta.label))
    assert (meta.caption == [phantom.caption_for(l, r) for l, r in zip(meta.left_angle, meta.right_angle)]).all()
    with Image.open(out.labeled / meta.file_name[0]) as img:
        assert img.mode == "L" and img.size == (32, 32)
    pool = pd.read_csv(out.unlabeled / "metadata.csv")
    assert len(pool) == 64 and "label" not in pool and (out.unlabeled / pool.file_name[0]).is_file()
    assert out.metrics["n_labeled"] == 80


def test_run_is_deterministic_by_seed(tmp_path: Path) -> None:
    a, b = make_params(tmp_path / "a"), make_params(tmp_path / "b")
    c = make_params(tmp_path / "c", {"seed": 7})
    hashes = [tree_hash(phantom.run(p, out_dir=p.paths.phantom).labeled.parent) for p in (a, b, c)]
    assert hashes[0] == hashes[1] and hashes[0] != hashes[2]


def test_images_drawn_over_several_processes_equal_those_drawn_in_one(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing
    import os

    p = make_params(tmp_path / "a", {"phantom": {"per_class": 70, "unlabeled": 130}})  # >= 128 images: 2 workers
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    contexts: list[str] = []
    get_context = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda method: contexts.append(method) or get_context(method))
    shared = tree_hash(phantom.run(p, out_dir=p.paths.phantom).labeled.parent)
    assert contexts == ["fork", "fork"], "both sets were drawn by worker processes"
    q = make_params(tmp_path / "b", {"phantom": {"per_class": 70, "unlabeled": 130}})
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # no fork: drawn one by one
    assert tree_hash(phantom.run(q, out_dir=q.paths.phantom).labeled.parent) == shared


def test_run_supports_four_ordered_classes(tmp_path: Path) -> None:
    p = make_params(tmp_path, {"dataset": {"classes": ["1", "2", "3", "4"]},
                               "phantom": {"thresholds": [96, 104, 112], "per_class": 5, "unlabeled": 0}})
    meta = pd.read_csv(phantom.run(p, out_dir=p.paths.phantom).labeled / "metadata.csv", dtype={"label": str})
    assert meta.label.value_counts().to_dict() == {"1": 5, "2": 5, "3": 5, "4": 5}
    assert meta.groupby("label").angle.max().is_monotonic_increasing


@pytest.mark.parametrize("over, match", [
    ({"phantom": {"thresholds": [110.0, 100.0]}, "dataset": {"classes": ["a", "b", "c"]}}, "increasing"),
    ({"phantom": {"thresholds": [100.0, 110.0]}}, "cut points"),
    ({"phantom": {"thresholds": [105.0]}, "dataset": {"classes": ["a", "b", "c"]}}, "cut points"),
    ({"phantom": {"thresholds": [130.0]}}, "inside angle_range"),
    ({"dataset": {"classes": ["a", "a"]}}, "duplicates"),
    ({"phantom": {"image_size": 8}}, "phantom.image_size"),
])
def test_phantom_params_validation_names_the_problem(tmp_path: Path, over, match) -> None:
    with pytest.raises(ParamsError, match=match):
        make_params(tmp_path, over)


def test_run_with_folder_source_makes_no_phantoms(tmp_path: Path) -> None:
    p = make_params(tmp_path, {"dataset": {"source": "folder"}, "review": {"mode": "manual"},
                               "paths": {"raw": "mine"}})
    out = phantom.run(p, out_dir=p.paths.phantom)
    assert out.labeled is None and out.unlabeled is None and out.metrics["skipped"] == 1.0
    assert [f.name for f in p.paths.phantom.iterdir()] == [phantom.SKIPPED_FILE]
    assert "dataset.source is folder" in (p.paths.phantom / phantom.SKIPPED_FILE).read_text()
