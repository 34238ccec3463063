"""The data set's colour mode: generated pictures of a grayscale data set are grayscale, RGB stays RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.diffusion.colour import to_data_channels, to_data_mode


def test_grayscale_is_the_luma_of_pils_convert() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.random((2, 5, 7, 3)).astype(np.float32)
    gray = to_data_channels(rgb, 1)
    assert gray.shape == (2, 5, 7, 1) and gray.dtype == np.float32
    pil = np.asarray(Image.fromarray(np.rint(rgb[0] * 255).astype(np.uint8)).convert("L"), dtype=np.float32)
    assert np.abs(np.rint(gray[0, :, :, 0] * 255) - pil).max() <= 1  # PIL rounds in integers
    assert to_data_channels(rgb, 3) is rgb


def test_nan_survives_so_the_filters_still_see_it() -> None:
    rgb = np.zeros((1, 2, 2, 3), dtype=np.float32)
    rgb[0, 0, 0, 1] = np.nan
    assert np.isnan(to_data_channels(rgb, 1)[0, 0, 0, 0])


def test_bad_channels_or_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="ingest.channels"):
        to_data_channels(np.zeros((1, 2, 2, 3)), 4)
    with pytest.raises(ValueError, match="expected RGB"):
        to_data_channels(np.zeros((1, 2, 2, 1)), 1)
    with pytest.raises(ValueError, match="ingest.channels"):
        to_data_mode(Image.new("RGB", (2, 2)), 2)


def test_pil_images_take_the_data_mode() -> None:
    img = Image.new("RGB", (3, 3), (200, 10, 10))
    assert to_data_mode(img, 1).mode == "L" and to_data_mode(img, 3) is img
    assert to_data_mode(Image.new("L", (3, 3)), 3).mode == "RGB"
