"""Generation filters: image status (nan, black, constant), quantisation, duplicate marking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.generation import filters as F


def test_image_status_flags_nan_black_constant():
    rng = np.random.default_rng(0)
    ok = rng.random((8, 8, 3), dtype=np.float32)
    nan = ok.copy()
    nan[3, 3, 1] = np.nan
    assert F.image_status(ok) == "ok"
    assert F.image_status(nan) == "nan"
    assert F.image_status(np.zeros((8, 8, 3), np.float32)) == "black"
    assert F.image_status(np.full((8, 8, 3), 0.5, np.float32)) == "constant"
    with pytest.raises(ValueError, match="empty"):
        F.image_status(np.zeros((0, 8, 3), np.float32))


def test_quantise_is_rounded_clipped_and_nan_safe():
    q = F.quantise(np.array([np.nan, -1.0, 0.5 / 255, 1.5 / 255, 2.0], np.float32))
    assert q.dtype == np.uint8 and q.tolist() == [0, 0, 0, 2, 255]


def test_mark_duplicates_flags_later_copies_only():
    m = pd.DataFrame({"index": [2, 0, 1, 3], "sha256": ["a", "a", "b", "a"], "status": ["ok", "ok", "ok", "black"]})
    out = F.mark_duplicates(m)
    assert out["status"].tolist() == ["ok", "ok", "duplicate", "black"]
    with pytest.raises(ValueError, match="sha256"):
        F.mark_duplicates(m.drop(columns="sha256"))
