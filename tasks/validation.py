"""Great-expectations suites for every hand-off table, and the one function that runs them.

A stage validates a table right after reading it and right before writing it. A failure raises
``ValidationFailed`` whose message names the table, the failed expectations and the failing rows (by
``file_name`` where the table has one), so a person can find the bad record; downstream stages do not run.

Suites are declared here as data (column, expectation, arguments). ``classes`` is passed at validation time
because the label set comes from the data, not from code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

Spec = tuple[str, dict[str, Any]]  # (GX expectation class name, kwargs)


class ValidationFailed(ValueError):
    """A hand-off table broke its suite. ``failures`` lists (expectation, column, row keys)."""

    def __init__(self, table: str, failures: list[tuple[str, str, list[Any]]]):
        self.table = table
        self.failures = failures
        lines = [f"great-expectations suite '{table}' failed:"]
        for expectation, column, rows in failures:
            shown = ", ".join(map(str, rows[:10])) + (f" … (+{len(rows) - 10})" if len(rows) > 10 else "")
            lines.append(f"  {expectation} on '{column}': failing rows: {shown or '(whole column)'}")
        super().__init__("\n".join(lines))


def _not_null(*cols: str) -> list[Spec]:
    return [("ExpectColumnValuesToNotBeNull", {"column": c}) for c in cols]


def _exist(*cols: str) -> list[Spec]:
    return [("ExpectColumnToExist", {"column": c}) for c in cols]


def _unique(col: str) -> Spec:
    return ("ExpectColumnValuesToBeUnique", {"column": col})


def _in_set(col: str, values: Sequence[Any]) -> Spec:
    return ("ExpectColumnValuesToBeInSet", {"column": col, "value_set": list(values)})


def _between(col: str, lo: float | None, hi: float | None) -> Spec:
    return ("ExpectColumnValuesToBeBetween", {"column": col, "min_value": lo, "max_value": hi})


def _relative_path(col: str) -> Spec:
    # No absolute paths, no parent traversal, no backslashes: files stay under the table's folder.
    return ("ExpectColumnValuesToNotMatchRegex", {"column": col, "regex": r"(?:^/|^[A-Za-z]:|\.\.|\\)"})


def _ingest_manifest(classes: Sequence[str]) -> list[Spec]:
    cols = ("file_name", "label", "split", "sha256", "group", "width", "height")
    return [*_exist(*cols), *_not_null(*cols), _unique("file_name"), _relative_path("file_name"),
            _in_set("label", classes), _in_set("split", ["train", "val", "test"]),
            _between("width", 1, None), _between("height", 1, None)]


def _ingest_quarantine(classes: Sequence[str]) -> list[Spec]:
    # One entry per row, one line each: a reason or name with a line break would split a row for grep/less users.
    one_line = [("ExpectColumnValuesToNotMatchRegex", {"column": c, "regex": r"[\r\n]"}) for c in ("source", "reason")]
    return [*_exist("source", "reason"), *_not_null("source", "reason"), *one_line,
            ("ExpectColumnValueLengthsToBeBetween", {"column": "reason", "min_value": 1, "max_value": None})]


def _caption_metadata(classes: Sequence[str]) -> list[Spec]:
    cols = ("file_name", "text", "label")
    return [*_exist(*cols), *_not_null(*cols), _unique("file_name"), _relative_path("file_name"),
            _in_set("label", classes)]


def _generate_manifest(classes: Sequence[str]) -> list[Spec]:
    cols = ("file_name", "intended_label", "prompt", "negative_prompt", "seed", "scheduler", "steps", "guidance",
            "model_hash", "status")
    return [*_exist(*cols), *_not_null("file_name", "intended_label", "prompt", "seed", "model_hash", "status"),
            _unique("file_name"), _relative_path("file_name"), _in_set("intended_label", classes),
            _in_set("status", ["ok", "black", "constant", "nan", "duplicate"]), _between("seed", 0, None),
            _between("steps", 1, None), _between("guidance", 0, None)]


def _predictions(classes: Sequence[str]) -> list[Spec]:
    # *_calibrated: the same uncertainty after temperature scaling (tasks.classify.calibration); raw kept.
    cols = ("file_name", "intended_label", "pred_label", "confidence", "margin", "entropy", "agrees", "review_rank",
            "confidence_calibrated", "margin_calibrated", "entropy_calibrated")
    return [*_exist(*cols, *(f"p_{c}" for c in classes)), *_not_null(*cols), _unique("file_name"),
            _in_set("pred_label", classes), _in_set("intended_label", classes),
            _between("confidence", 0, 1), _between("margin", 0, 1), _between("entropy", 0, None),
            _between("confidence_calibrated", 0, 1), _between("margin_calibrated", 0, 1),
            _between("entropy_calibrated", 0, None),
            *[_between(f"p_{c}", 0, 1) for c in classes], _unique("review_rank"), *_memorisation()]


def _memorisation() -> list[Spec]:
    # The memorisation check (tasks.generation.memorisation): nearest real train image by pHash (bits of 256) and
    # by classifier-feature cosine distance (0..2), and the flag that keeps a copy out of review and retrain.
    cols = ("nearest_real", "phash_distance", "nearest_real_feature", "feature_distance", "memorised")
    return [*_exist(*cols), *_not_null(*cols), _between("phash_distance", 0, 256),
            _between("feature_distance", 0, 2), _in_set("memorised", [True, False])]


def _class_quality(classes: Sequence[str]) -> list[Spec]:
    # One row per class; fid/precision/recall are NaN (not checked) where a class has too few images.
    cols = ("class", "n_generated", "n_real", "fid", "precision", "recall", "out_of_manifold", "note")
    return [*_exist(*cols), *_not_null("class", "n_generated", "n_real", "out_of_manifold"), _unique("class"),
            _in_set("class", classes), _between("n_generated", 0, None), _between("n_real", 0, None),
            _between("precision", 0, 1), _between("recall", 0, 1),
            _in_set("out_of_manifold", [True, False])]


def _when(spec: Spec, condition: str) -> Spec:
    name, kwargs = spec
    return (name, {**kwargs, "row_condition": condition, "condition_parser": "pandas"})


def _review_corrections(classes: Sequence[str]) -> list[Spec]:
    cols = ("file_name", "intended_label", "pred_label", "final_label", "decision", "reviewer", "timestamp",
            "version")
    # reject ⇔ no final label; accept ⇒ final label is the prediction; version counts saved changes (≥ 1).
    # sha256 ties a decision to the image content it was made on ("" only in rows that predate content hashes).
    return [*_exist(*cols, "note", "sha256"),
            *_not_null("file_name", "decision", "reviewer", "timestamp", "version"),
            _when(("ExpectColumnValuesToMatchRegex", {"column": "sha256", "regex": r"^[0-9a-f]{64}$"}),
                  'sha256.notna() and sha256!=""'),
            _unique("file_name"), _relative_path("file_name"), _in_set("decision", ["accept", "correct", "reject"]),
            _in_set("final_label", [*classes, "", None]), _between("version", 1, None),
            _when(_in_set("final_label", ["", None]), 'decision=="reject"'),
            _when(_in_set("final_label", classes), 'decision!="reject"'),
            _when(("ExpectColumnPairValuesToBeEqual", {"column_A": "final_label", "column_B": "pred_label"}),
                  'decision=="accept"')]


SUITES: dict[str, Callable[[Sequence[str]], list[Spec]]] = {
    "ingest_manifest": _ingest_manifest,
    "ingest_quarantine": _ingest_quarantine,
    "caption_metadata": _caption_metadata,
    "generate_manifest": _generate_manifest,
    "predictions": _predictions,
    "class_quality": _class_quality,
    "review_corrections": _review_corrections,
}

_context = None  # the GX ephemeral context is expensive to build; one per process


def _gx():
    global _context
    import great_expectations as gx

    if _context is None:
        _context = gx.get_context(mode="ephemeral")
        _context.variables.progress_bars = {"globally": False}
    return gx, _context


def _row_keys(df, indices: list[Any]) -> list[Any]:
    if "file_name" in df.columns:
        return [df.loc[i, "file_name"] if i in df.index else i for i in indices]
    return [f"row {i}" for i in indices]


def validate(df, table: str, *, classes: Sequence[str], extra: Sequence[Spec] = ()) -> None:
    """Run the suite for ``table`` on ``df``; raise ValidationFailed naming the failing rows."""
    if table not in SUITES:
        raise KeyError(f"no great-expectations suite named {table!r}; known: {sorted(SUITES)}")
    if df.empty:
        raise ValidationFailed(table, [("table is empty", "*", [])])
    gx, context = _gx()
    specs = [*SUITES[table](classes), *extra]
    suite = gx.ExpectationSuite(name=table, expectations=[getattr(gx.expectations, n)(**kw) for n, kw in specs])
    name = f"{table}-{id(df)}"
    asset = context.data_sources.add_or_update_pandas("synthloop").add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(name).get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    if result.success:
        log.debug("great-expectations suite %s passed (%d rows)", table, len(df))
        return
    failures = []
    for r in result.results:
        if r.success:
            continue
        column = r.expectation_config.kwargs.get("column", "*")
        rows = _row_keys(df, list(r.result.get("unexpected_index_list") or []))
        failures.append((r.expectation_config.type, column, rows))
    raise ValidationFailed(table, failures)
