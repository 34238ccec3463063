"""The hand-off contract in code: one reader (and writer) per table that passes between stages.

Like Kedro's data catalog, this is the one place that knows where each hand-off table lives, how it is read and
written, and which great-expectations suite (``tasks.validation``) guards it. A stage asks here for "the
corrections table"; it never imports the stage that wrote it. Every reader validates right after reading and
every writer right before writing, so a bad table stops the loop where it enters, naming the failing rows.

| table | written by | file |
|---|---|---|
| ingest manifest | ingest | ``<split folder>/manifest.csv`` |
| imagefolder metadata | caption | ``<caption>/{train,val}/metadata.csv`` |
| generate manifest | generate | ``<generate>/manifest.csv`` |
| predictions | predict | ``<predict>/predictions.csv`` |
| class quality | predict | ``<predict>/class_quality.csv`` |
| review queue | review | ``<review>/queue.csv`` |
| corrections (+ audit log) | review | ``<review>/corrections.csv``, ``audit.jsonl`` |

pandas is imported inside the functions: the file-name constants are used by the flow, which imports no pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.io import atomic_write_csv
from tasks.stage import StageError
from tasks.validation import validate

if TYPE_CHECKING:
    import pandas as pd

MANIFEST_FILE = "manifest.csv"
METADATA_FILE = "metadata.csv"
PREDICTIONS_FILE = "predictions.csv"
#: predict's reliability diagram of the real val split, raw and calibrated (``tasks.classify.calibration``).
RELIABILITY_FILE = "reliability.csv"
#: predict's per-class quality gate of the generated set (``tasks.generation.quality``).
CLASS_QUALITY_FILE = "class_quality.csv"
QUEUE_FILE = "queue.csv"
CORRECTIONS_FILE = "corrections.csv"
AUDIT_FILE = "audit.jsonl"

#: The label a reviewer gives an image that shows no usable instance of any class.
REJECT = "reject"

#: The corrections table's ``reviewer`` column: automatic reviewers (rules, which cost no review time) start with
#: ``AUTO_PREFIX``; simulated ones (the reference labeler, a scripted reviewer) end with ``SIMULATED_SUFFIX``;
#: anything else is a person. The review stage writes these names, evaluate reads them.
AUTO_PREFIX = "auto:"
SIMULATED_SUFFIX = "(simulated)"
REFERENCE_REVIEWER = f"reference-labeler {SIMULATED_SUFFIX}"


def reviewer_kind(reviewer: str) -> str:
    """``automatic``, ``simulated`` or ``human`` for a ``reviewer`` value (an empty name counts as automatic)."""
    if reviewer.endswith(SIMULATED_SUFFIX):
        return "simulated"
    if reviewer.startswith(AUTO_PREFIX) or not reviewer:
        return "automatic"
    return "human"

CORRECTION_COLUMNS = ["file_name", "sha256", "intended_label", "pred_label", "final_label", "decision", "reviewer",
                      "timestamp", "version", "note"]
QUEUE_COLUMNS = ["position", "file_name", "sha256", "intended_label", "pred_label", "confidence", "margin", "agrees",
                 "review_rank", "confidence_calibrated", "margin_calibrated", "entropy_calibrated"]
#: Columns the review plan adds (tasks.review.budget.plan_queue): priority rank, audit sample, within budget,
#: read by two reviewers.
PLAN_COLUMNS = ["priority", "audit", "in_budget", "overlap"]


def resolve_under(folder: Path, rel: str) -> Path:
    """``folder/rel``, refusing anything (``..``, absolute, symlink) that resolves outside ``folder``."""
    root = Path(folder).resolve()
    path = (root / str(rel)).resolve()
    if not path.is_relative_to(root):
        raise StageError(f"file_name {rel!r} resolves outside {folder}; refusing to read it")
    return path


def _require(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise StageError(f"{path} not found: run the {stage} stage first (dvc repro {stage})")
    return path


# ------------------------------------------------------------------------------------------- ingest manifest
def read_ingest_manifest(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    """An ingest split's ``manifest.csv`` as text cells (width/height numeric), validated."""
    import pandas as pd

    manifest = pd.read_csv(_require(Path(folder) / MANIFEST_FILE, "ingest"), dtype=str, keep_default_na=False)
    for col in ("width", "height"):  # the suite checks these are ≥ 1: they must be numbers
        if col in manifest:
            manifest[col] = pd.to_numeric(manifest[col], errors="coerce")
    validate(manifest, "ingest_manifest", classes=classes)
    return manifest


def read_labelled_split(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    """An ingest split (e.g. the held-out test set) as ``path,label,file_name``."""
    import pandas as pd

    df = read_ingest_manifest(folder, classes)
    return pd.DataFrame({"path": [str(resolve_under(folder, f)) for f in df["file_name"]],
                         "label": df["label"].to_numpy(), "file_name": df["file_name"].to_numpy()})


# -------------------------------------------------------------------------------------- imagefolder metadata
def read_imagefolder(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    """A caption-stage HF imagefolder as a table ``path,label,weight,source`` (validated by GX)."""
    import pandas as pd

    meta = _require(Path(folder) / METADATA_FILE, "caption")
    df = pd.read_csv(meta, dtype={"file_name": str, "label": str, "text": str}, keep_default_na=False)
    validate(df, "caption_metadata", classes=classes)
    return pd.DataFrame({"path": [str(resolve_under(folder, f)) for f in df["file_name"]],
                         "label": df["label"].to_numpy(), "weight": 1.0, "source": "real"})


def write_imagefolder_metadata(folder: Path, table: pd.DataFrame, classes: Sequence[str]) -> Path:
    """Validate and write an imagefolder's ``metadata.csv`` atomically."""
    validate(table, "caption_metadata", classes=classes)
    path = Path(folder) / METADATA_FILE
    atomic_write_csv(path, table)
    return path


# ----------------------------------------------------------------------------------------- generate manifest
def read_generate_manifest(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    """Every row of the generate manifest (``sha256`` and labels as text), validated."""
    import pandas as pd

    path = _require(Path(folder) / MANIFEST_FILE, "generate")
    df = pd.read_csv(path, dtype={"file_name": str, "intended_label": str, "status": str, "sha256": str},
                     keep_default_na=False)
    validate(df, "generate_manifest", classes=classes)
    if "sha256" not in df:
        raise StageError(f"{path} has no sha256 column: labels cannot be tied to image content; "
                         "re-run the generate stage (dvc repro generate)")
    return df


def read_generated(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    """The ``ok`` rows of the generate manifest, with an absolute ``path`` column added, sorted by file name."""
    df = read_generate_manifest(folder, classes)
    ok = df[df["status"] == "ok"].copy()
    ok["path"] = [str(resolve_under(folder, f)) for f in ok["file_name"]]
    return ok.sort_values("file_name", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- predictions
def read_predictions(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    path = Path(folder) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the predict stage first (dvc repro predict)")
    preds = pd.read_csv(path)
    validate(preds, "predictions", classes=classes)
    return preds


def write_predictions(folder: Path, table: pd.DataFrame, classes: Sequence[str]) -> Path:
    validate(table, "predictions", classes=classes)
    path = Path(folder) / PREDICTIONS_FILE
    atomic_write_csv(path, table)
    return path


def memorised_files(folder: Path, classes: Sequence[str]) -> set[str]:
    """File names predict flagged ``memorised`` (copies of real train images): never labelled or trained on."""
    preds = read_predictions(folder, classes)
    flags = preds["memorised"].map(lambda v: str(v).strip().lower() in {"true", "1"})
    return set(preds.loc[flags, "file_name"].astype(str))


def write_class_quality(folder: Path, table: pd.DataFrame, classes: Sequence[str]) -> Path:
    """Validate and write predict's per-class quality table atomically."""
    validate(table, "class_quality", classes=classes)
    path = Path(folder) / CLASS_QUALITY_FILE
    atomic_write_csv(path, table)
    return path


def read_class_quality(folder: Path, classes: Sequence[str]) -> pd.DataFrame:
    """predict's ``class_quality.csv`` (one row per class; NaN where a statistic had too few images), validated."""
    import pandas as pd

    # Text cells as written (a class may be called "NA"); the statistics back to numbers, "" → NaN.
    table = pd.read_csv(_require(Path(folder) / CLASS_QUALITY_FILE, "predict"), dtype=str, keep_default_na=False)
    for col in ("n_generated", "n_real", "fid", "precision", "recall"):
        if col in table:
            table[col] = pd.to_numeric(table[col], errors="coerce")
    if "out_of_manifold" in table:
        table["out_of_manifold"] = table["out_of_manifold"].map({"True": True, "False": False})
    validate(table, "class_quality", classes=classes)
    return table


# --------------------------------------------------------------------------------------- queue, corrections
def write_queue(folder: Path, queue: pd.DataFrame) -> Path:
    """Write the planned review queue (``QUEUE_COLUMNS`` + ``PLAN_COLUMNS`` + ``p_<class>``) atomically."""
    missing = [c for c in QUEUE_COLUMNS + PLAN_COLUMNS if c not in queue]
    if missing:
        raise StageError(f"review queue lacks columns {missing}")
    path = Path(folder) / QUEUE_FILE
    atomic_write_csv(path, queue)
    return path


def read_queue(folder: Path) -> pd.DataFrame:
    """The review stage's ``queue.csv`` (its folder or the file), in planned order, plan flags as booleans."""
    import pandas as pd

    path = Path(folder)
    path = _require(path / QUEUE_FILE if path.is_dir() else path, "review")
    queue = pd.read_csv(path, dtype={"file_name": str, "sha256": str, "intended_label": str, "pred_label": str},
                        keep_default_na=False)
    missing = [c for c in QUEUE_COLUMNS + PLAN_COLUMNS if c not in queue]
    if missing:
        raise StageError(f"{path} lacks columns {missing}: re-run the review stage (dvc repro review)")
    for col in ("agrees", *PLAN_COLUMNS[1:]):
        queue[col] = queue[col].map(lambda v: str(v).strip().lower() in {"true", "1"})
    return queue.sort_values("position", kind="stable").reset_index(drop=True)


def read_corrections(path: Path, classes: Sequence[str], *, missing_ok: bool = False) -> pd.DataFrame:
    """``corrections.csv`` (a file, or the review folder holding it) as text cells, validated.

    Columns the contract names but an older file lacks are added empty (a decision without ``sha256`` is then
    stale, see ``tasks.review.store``). ``missing_ok``: no file yet is an empty table (the review store's start).
    """
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        path = path / CORRECTIONS_FILE
    if not path.is_file():
        if missing_ok:
            return pd.DataFrame(columns=CORRECTION_COLUMNS)
        _require(path, "review")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in CORRECTION_COLUMNS:
        if col not in df:
            df[col] = ""
    if not df.empty:
        validate(df.assign(version=pd.to_numeric(df["version"], errors="coerce")), "review_corrections",
                 classes=classes)
    return df


def write_corrections(path: Path, rows: Sequence[dict], classes: Sequence[str], *, check: bool = True) -> None:
    """Validate and write the decisions (one row each, in the given order) atomically.

    ``check=False`` skips the great-expectations suite (about 0.5 s a call): only for the review store's per-save
    rewrite, whose rows it builds itself from the validated queue; every reader validates the table again.
    """
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=CORRECTION_COLUMNS).fillna("")
    df["version"] = df["version"].astype(int)
    if check and not df.empty:
        validate(df, "review_corrections", classes=classes)
    atomic_write_csv(path, df)


def intended_agreement(corrections: pd.DataFrame) -> float | None:
    """The generator's class fidelity as the reviewers judged it: the share of kept (not rejected) images whose
    final label is the class they were generated for; None when nothing was kept. (A *correction* changes the
    classifier's predicted label, so corrections do not measure this.)"""
    kept = corrections[corrections["decision"] != REJECT]
    return float((kept["final_label"] == kept["intended_label"]).mean()) if len(kept) else None
