"""The teat-end sample set: deterministic RGB photos, four ordered scores whose ring is visible, written as a
folder per class that reads back as the user's classes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.params import discover_classes
from tasks.samples import teats


def test_render_is_deterministic_rgb_and_varies() -> None:
    a, b = teats.render(0, "score_3", 5, 64), teats.render(0, "score_3", 5, 64)
    assert a.mode == "RGB" and a.size == (64, 64) and a.tobytes() == b.tobytes()
    assert teats.render(1, "score_3", 5, 64).tobytes() != a.tobytes()
    assert teats.render(0, "score_3", 6, 64).tobytes() != a.tobytes()


def _centre_roughness(img: Image.Image) -> float:
    """High-frequency energy of the central crop, where the orifice and its keratin ring are."""
    x = np.asarray(img.convert("L"), dtype=np.float32)
    n = x.shape[0]
    c = x[n // 2 - n // 6:n // 2 + n // 6, n // 2 - n // 6:n // 2 + n // 6]
    lap = 4 * c[1:-1, 1:-1] - c[:-2, 1:-1] - c[2:, 1:-1] - c[1:-1, :-2] - c[1:-1, 2:]
    return float(np.abs(lap).mean())


def test_the_score_is_visible_and_ordered() -> None:
    rough = {c: np.mean([_centre_roughness(teats.render(0, c, i, 128)) for i in range(16)]) for c in teats.CLASSES}
    assert rough["score_4"] > rough["score_3"] > rough["score_1"], rough
    assert rough["score_4"] > 1.5 * rough["score_1"], rough


def test_write_makes_a_folder_per_class_read_back_in_order(tmp_path) -> None:
    counts = teats.write(tmp_path / "teats", per_class=2, size=32, seed=1)
    assert counts == dict.fromkeys(teats.CLASSES, 2)
    assert sorted(p.relative_to(tmp_path / "teats").as_posix() for p in (tmp_path / "teats").rglob("*.png")) == \
        sorted(f"{c}/teat-{i:05d}.png" for c in teats.CLASSES for i in range(2))
    assert discover_classes(tmp_path / "teats") == teats.CLASSES, "folder names sort into the score order"


def test_write_refuses_empty_or_tiny_sets(tmp_path) -> None:
    with pytest.raises(ValueError, match="per_class"):
        teats.write(tmp_path, per_class=0)
    with pytest.raises(ValueError, match="size"):
        teats.write(tmp_path, per_class=1, size=8)
    assert not any(tmp_path.iterdir())


def test_cli_writes_the_set(tmp_path) -> None:
    teats.main(["--out", str(tmp_path / "t"), "--per-class", "1", "--size", "24"])
    assert Image.open(tmp_path / "t" / "score_2" / "teat-00000.png").size == (24, 24)
