"""Great-expectations suites: a failure names the failing rows by file_name."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.validation import SUITES, ValidationFailed, validate

CLASSES = ["small", "big"]


def _captions() -> pd.DataFrame:
    return pd.DataFrame({"file_name": ["a.png", "b.png", "c.png"], "text": ["t", "t", "t"],
                         "label": ["small", "big", "big"]})


def test_valid_table_passes():
    validate(_captions(), "caption_metadata", classes=CLASSES)


def test_failure_names_rows_and_expectation():
    df = _captions()
    df.loc[1, "label"] = "huge"
    df.loc[2, "file_name"] = "../../etc/passwd"
    with pytest.raises(ValidationFailed) as info:
        validate(df, "caption_metadata", classes=CLASSES)
    msg = str(info.value)
    assert "b.png" in msg and "expect_column_values_to_be_in_set" in msg
    assert "../../etc/passwd" in msg and "a.png" not in msg


def test_missing_column_and_empty_table_fail():
    with pytest.raises(ValidationFailed, match="expect_column_to_exist"):
        validate(_captions().drop(columns=["text"]), "caption_metadata", classes=CLASSES)
    with pytest.raises(ValidationFailed, match="empty"):
        validate(_captions().iloc[0:0], "caption_metadata", classes=CLASSES)


def test_unknown_suite_is_an_error():
    with pytest.raises(KeyError, match="no great-expectations suite"):
        validate(_captions(), "nope", classes=CLASSES)


def test_every_hand_off_table_has_a_suite():
    assert {"ingest_manifest", "caption_metadata", "generate_manifest", "predictions",
            "review_corrections"} <= set(SUITES)
