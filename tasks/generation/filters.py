"""Image filters: float images to the deterministic uint8 bytes that get written, and their manifest status.

A status is one of ``STATUSES``: ``ok``, or a reason the image is kept out of metadata.csv (non-finite values,
black, flat, or an exact duplicate of an earlier image).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STATUSES = ("ok", "black", "constant", "nan", "duplicate")
#: A uint8 image whose brightest pixel is below this is "black"; one whose range is at most CONSTANT_RANGE is flat.
BLACK_LEVEL = 8
CONSTANT_RANGE = 2


def quantise(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] → uint8 (round half to even, NaN → 0): the deterministic bytes that get written."""
    return np.clip(np.rint(np.nan_to_num(images, nan=0.0) * 255.0), 0, 255).astype(np.uint8)


def image_status(image: np.ndarray) -> str:
    """``nan`` (any non-finite value), ``black``, ``constant`` or ``ok`` for one float image in [0, 1]."""
    if image.size == 0:
        raise ValueError("image_status: empty image")
    if not np.isfinite(image).all():
        return "nan"
    q = quantise(image)
    if int(q.max()) < BLACK_LEVEL:
        return "black"
    if int(q.max()) - int(q.min()) <= CONSTANT_RANGE:
        return "constant"
    return "ok"


def mark_duplicates(manifest: pd.DataFrame) -> pd.DataFrame:
    """Flag exact duplicates (same sha256) of an earlier image, in plan order, as ``duplicate``."""
    if "sha256" not in manifest.columns or "index" not in manifest.columns:
        raise ValueError("mark_duplicates needs 'sha256' and 'index' columns")
    out = manifest.sort_values("index").reset_index(drop=True)
    dup = out["sha256"].duplicated(keep="first") & (out["status"] == "ok")
    out.loc[dup, "status"] = "duplicate"
    return out
