"""The data set's colour mode for every picture the generator draws.

The Stable Diffusion VAE always decodes three channels. A grayscale data set (``ingest.channels: 1``) must get
grayscale pictures — not RGB with colour fringes, which the review page would show as tinted X-rays and which a
1-channel classifier would silently average. The model's output is mapped to the data set's mode here, once, for
generate (images and the interpolation grid), DreamBooth (class images, validation grids) and pretrain's samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: ITU-R 601-2 luma, the weights of PIL's ``convert("L")``: the same rule ingest uses to make grayscale inputs.
LUMA = (0.299, 0.587, 0.114)


def to_data_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Float images (..., H, W, 3) in [0, 1] as the data set's ``channels`` (..., H, W, channels).

    ``channels`` 1: the luma (NaN stays NaN, so the black/constant/NaN filters still see it); 3: unchanged.
    """
    if channels == 3:
        return images
    if channels != 1:
        raise ValueError(f"channels must be 1 or 3 (ingest.channels), got {channels!r}")
    if images.shape[-1] != 3:
        raise ValueError(f"expected RGB images (..., H, W, 3), got shape {images.shape}")
    return (images @ np.asarray(LUMA, dtype=images.dtype))[..., None]


def to_data_mode(image: Any, channels: int) -> Any:
    """A PIL image in the data set's mode: ``L`` for ``channels`` 1, ``RGB`` for 3."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 (ingest.channels), got {channels!r}")
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)
