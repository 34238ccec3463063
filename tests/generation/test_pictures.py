"""Generation pictures: tiling images into a grid."""

from __future__ import annotations

import pytest

from tasks.generation.pictures import tile


def test_tile_rejects_no_images():
    with pytest.raises(ValueError, match="no images"):
        tile([])


def test_tile_fills_rows_of_a_square_grid():
    from PIL import Image

    grid = tile([Image.new("L", (4, 3), v) for v in (10, 20, 30)])
    assert grid.size == (8, 6) and grid.getpixel((5, 1)) == 20 and grid.getpixel((1, 4)) == 30
    assert tile([Image.new("L", (4, 3))] * 3, columns=3).size == (12, 3)
