"""Stage ``ingest``: raw labeled images → normalised PNGs, a validated manifest and a deterministic split.

The steps, in ``run`` order, and where they live (tasks/intake/):

1. ``discover``: records of ``raw`` (folder per class, or ``metadata.csv`` with file_name,label[,caption][,split]
   [,group][,...extra]); paths must stay inside the data root (discover.py).
2. ``_decode_all`` / ``process_record``: each file checked (type, header dimensions vs ``ingest.max_pixels``
   before any pixel is decoded), decoded, normalised (EXIF, mode L/RGB, resize + centre crop to
   ``ingest.image_size``) and hashed (decode.py); only regular files inside the root are ever opened (walk.py).
3. exact duplicates dropped, near duplicates (pHash distance ≤ ``ingest.near_duplicate_distance``) grouped
   (dedupe.py).
4. ``_apply_splits``: the input's ``split`` column, else a stratified split of whole groups (split.py).
5. ``_write_outputs``: images, manifests, then ``quarantine.csv`` and ``duplicates.csv``; ``_metrics``.

A file that fails a check is quarantined with a one-line reason in ``quarantine.csv``; the rest is processed and
the stage still succeeds. Every entry found is accounted for: ``n_input = n_ok + n_quarantined + n_duplicates``
(checked before anything is written). Same input and params → byte-identical outputs.
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tasks.progress import progress

from tasks.intake.decode import conversion_notes, load_image, normalise, phash_hex, pixel_sha256
from tasks.intake.dedupe import drop_exact_duplicates, group_duplicates, near_duplicate_report
from tasks.intake.discover import BadImage, IngestError, Record, discover, nfc
from tasks.intake.walk import dvc_hazards, one_line, read_regular, shown
from tasks.intake.split import assign_splits
from tasks.io import atomic_write_bytes, atomic_write_csv, clean_stale_temp, restore_numeric
from tasks.params import Params
from tasks.stage import cli_main
from tasks.validation import validate

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Manifest columns the stage computes; user metadata columns of the same name are replaced. ``ingest_note``: the
#: choices made converting the file (frame used, DICOM window, ...; tasks/intake/decode.py), "" when none.
MANIFEST_COLUMNS = ["file_name", "label", "split", "source", "sha256", "phash", "group", "width", "height",
                    "caption", "ingest_note"]
_SAFE_CLASS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_. -]*$")


@dataclass(frozen=True)
class IngestOutputs:
    trainval: Path
    test: Path
    quarantine: Path
    duplicates: Path
    metrics: dict[str, float]


def _slug(source: str) -> str:
    stem = Path(source).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", nfc(stem)).strip("._")[:60] or "img"


def _check_classes(found: set[str], classes: tuple[str, ...]) -> None:
    bad = [c for c in classes if not _SAFE_CLASS.match(c)]
    if bad:
        raise IngestError(f"class names {bad} are not safe folder names (letters, digits, _ . - and spaces)")
    missing = [c for c in classes if c not in found]
    if missing:
        raise IngestError(
            f"classes {missing} of params (dataset.classes = {list(classes)}) have no usable images; the data "
            f"has labels {sorted(found)}. Set dataset.classes in params.yaml to the classes of your data (or null "
            f"to read them from the folder).")


def process_record(rec: Record, params: Params) -> tuple[dict[str, Any], bytes]:
    """Decode, normalise and hash one record; return its manifest row (without split/group) and PNG bytes."""
    cfg = params.ingest
    data = read_regular(rec.path)
    decoded = load_image(data, Path(rec.disk_name).suffix, cfg.max_pixels, multi_frame=cfg.multi_frame,
                         dicom_window=cfg.dicom_window)
    img = decoded.image
    orig_w, orig_h = img.size
    notes = decoded.notes + conversion_notes(img)
    out = normalise(img, cfg.image_size, cfg.channels)
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False)
    extra = {k: v for k, v in rec.meta.items() if k not in MANIFEST_COLUMNS}
    row = {"label": rec.label, "source": rec.source, "sha256": pixel_sha256(out), "phash": phash_hex(out),
           "width": out.width, "height": out.height, "orig_width": orig_w, "orig_height": orig_h,
           "caption": rec.meta.get("caption", ""), "ingest_note": "; ".join(notes),
           "user_split": rec.meta.get("split", "").strip(),
           "group_key": rec.meta.get("group", "").strip(), **extra}
    return row, buf.getvalue()


def _decode_all(records: list[Record], params: Params) -> tuple[pd.DataFrame, dict[str, bytes], list[dict]]:
    rows, pngs, bad = [], {}, []
    known = set(params.classes)
    for rec in progress(records, desc="ingest", unit="file"):
        if rec.label not in known:
            bad.append({"source": rec.source, "reason": f"unknown label {rec.label!r}"})
            continue
        try:
            row, png = process_record(rec, params)
        except BadImage as err:
            bad.append({"source": rec.source, "reason": str(err)})
            continue
        except Exception as err:  # a decoder bug must not end the stage: the file is quarantined, the trace logged
            log.warning("ingest: unexpected error on %s", rec.source, exc_info=True)
            bad.append({"source": rec.source, "reason": f"unexpected error: {type(err).__name__}: {err}"})
            continue
        rows.append(row)
        pngs[rec.source] = png
    return pd.DataFrame(rows), pngs, bad


def _apply_splits(df: pd.DataFrame, params: Params) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Use the input's ``split`` column when it gives one, else the seeded group split."""
    if not df["user_split"].astype(bool).any():
        fractions = params.ingest.split.model_dump()
        return df.assign(split=assign_splits(df, fractions, params.seed)), []
    valid = df["user_split"].isin(SPLITS)
    bad = [{"source": s, "reason": f"invalid split {v!r} (expected train/val/test)"}
           for s, v in zip(df.loc[~valid, "source"], df.loc[~valid, "user_split"])]
    df = df[valid].assign(split=df.loc[valid, "user_split"])
    straddling = df.groupby("group")["split"].nunique().gt(1).sum()
    if straddling:
        log.warning("ingest: %d near-duplicate groups straddle the splits given in metadata.csv", straddling)
    return df, bad


def _write_outputs(df: pd.DataFrame, pngs: dict[str, bytes], out_dir: Path, classes: tuple[str, ...]) -> None:
    written: dict[Path, set[str]] = {}
    for is_test in (False, True):
        part = df[(df["split"] == "test") == is_test]
        folder = out_dir / ("test" if is_test else "trainval")
        names = [(f"{lab}/" if is_test else f"{sp}/{lab}/") + f"{_slug(src)}-{sha[:10]}.png"
                 for lab, sp, src, sha in zip(part.label, part.split, part.source, part.sha256)]
        for name, src in zip(names, part.source):
            atomic_write_bytes(folder / name, pngs[src], durable=False)  # the manifest, written last, is durable
        manifest = part.assign(file_name=names)
        cols = MANIFEST_COLUMNS + [c for c in manifest.columns if c not in MANIFEST_COLUMNS]
        manifest = manifest[cols].sort_values("file_name").reset_index(drop=True)
        manifest = restore_numeric(manifest, [c for c in cols if c not in MANIFEST_COLUMNS])
        validate(manifest, "ingest_manifest", classes=classes)
        atomic_write_csv(folder / "manifest.csv", manifest)
        written[folder] = set(names)
    for folder, keep in written.items():  # a previous run's images must not linger next to the new manifest
        for p in folder.rglob("*.png") if folder.exists() else []:
            if p.relative_to(folder).as_posix() not in keep:
                p.unlink()


def run(params: Params, *, raw: Path, out_dir: Path) -> IngestOutputs:
    """Ingest ``raw`` into ``out_dir``: normalised images, manifests, quarantine and duplicate reports."""
    raw, out_dir = Path(raw), Path(out_dir)
    clean_stale_temp(out_dir)
    records, bad = discover(raw)
    n_input = len(records) + len(bad)  # every entry found is a record or a quarantine row
    for entry in dvc_hazards(raw):  # quarantined here, but `dvc repro` hashes raw itself before this stage runs
        log.warning("ingest: %s/%s will stop or hang `dvc repro`: %s (move it out of paths.raw)", raw,
                    shown(entry.rel), entry.problem)
    df, pngs, bad_files = _decode_all(records, params)
    bad += bad_files
    if df.empty:
        raise IngestError(f"no usable images in {raw}: {len(bad)} quarantined; {_top_reasons(bad)}")
    _check_classes(set(df["label"]), params.classes)
    df, exact_report, conflicts = drop_exact_duplicates(df)
    df = group_duplicates(df, params.ingest.near_duplicate_distance)
    df, bad_split = _apply_splits(df, params)
    bad += conflicts + bad_split
    df = df.drop(columns=["user_split", "group_key"])
    empty = [s for s in SPLITS if not (df["split"] == s).any()]
    if empty:
        raise IngestError(f"split(s) {empty} would be empty with {len(df)} usable images; add images or change "
                          f"ingest.split (or the split column of metadata.csv)")
    quarantine = quarantine_table(bad)
    check_accounting(n_input, len(df), len(quarantine), len(exact_report))
    _write_outputs(df, pngs, out_dir, params.classes)
    atomic_write_csv(out_dir / "quarantine.csv", quarantine)
    near = near_duplicate_report(df, params.ingest.near_duplicate_distance)
    duplicates = pd.concat([exact_report, near], ignore_index=True) if len(near) else exact_report
    atomic_write_csv(out_dir / "duplicates.csv", duplicates)
    metrics = _metrics(df, quarantine, exact_report, len(records), n_input)
    for row in quarantine.itertuples():
        log.warning("ingest: quarantined %s: %s", row.source, row.reason)
    log.info("ingest: %s", metrics)
    return IngestOutputs(out_dir / "trainval", out_dir / "test", out_dir / "quarantine.csv",
                         out_dir / "duplicates.csv", metrics)


def quarantine_table(rows: list[dict[str, str]]) -> pd.DataFrame:
    """The quarantine rows as a validated table sorted by source: each source and reason one printable line."""
    table = pd.DataFrame([{"source": shown(r["source"]), "reason": one_line(r["reason"])} for r in rows],
                         columns=["source", "reason"])
    table = table.sort_values(["source", "reason"], kind="stable").reset_index(drop=True)
    if len(table):
        validate(table, "ingest_quarantine", classes=())
    return table


def check_accounting(n_input: int, n_ok: int, n_quarantined: int, n_duplicates: int) -> None:
    """Raise unless every entry found is accepted, quarantined or an exact duplicate (nothing lost)."""
    if n_input != n_ok + n_quarantined + n_duplicates:
        raise IngestError(f"ingest lost track of its input: {n_input} entries found but {n_ok} ok + {n_quarantined} "
                          f"quarantined + {n_duplicates} duplicates = {n_ok + n_quarantined + n_duplicates}")


def _top_reasons(rows: list[dict[str, str]], k: int = 5) -> str:
    counts = Counter(one_line(r["reason"]) for r in rows).most_common(k)
    return "most common reasons: " + "; ".join(f"{n}x {reason}" for reason, n in counts) if counts else "no entries"


def _metrics(df: pd.DataFrame, quarantine: pd.DataFrame, exact: pd.DataFrame, n_records: int,
             n_input: int) -> dict[str, float]:
    group_sizes = df.groupby("group").size()
    metrics = {"n_input": n_input, "n_records": n_records, "n_ok": len(df), "n_quarantined": len(quarantine),
               "n_duplicates": len(exact), "n_near_duplicate_groups": int((group_sizes > 1).sum()),
               **{f"n_{s}": int((df["split"] == s).sum()) for s in SPLITS}}
    return {k: float(v) for k, v in metrics.items()}


if __name__ == "__main__":
    cli_main("ingest")
