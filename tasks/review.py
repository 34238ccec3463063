"""Review stage: the human-correction checkpoint between predict and retrain.

``run()`` turns ``predictions.csv`` into ``queue.csv`` (uncertainty order: disagreement with the intended class
first, then low margin — predict's ``review_rank``), applies the automatic decisions of ``review.mode``, and checks
completeness:

- ``manual``: a person decides every item (``synthloop review``).
- ``accept-confident``: items with ``confidence >= review.confidence_threshold`` whose prediction agrees with the
  intended class are accepted as reviewer ``auto:accept-confident``; a person decides the rest.
- ``reference``: the reference labeler (``tasks.reference.reference_labels``) decides every waiting item as reviewer
  ``reference-labeler (simulated)``; metrics carry ``simulated=1`` so no report mistakes it for a person.

While items wait, the stage raises ``WaitingForReview``: ``python -m tasks.review`` exits 3 and ``dvc repro``
stops at the checkpoint with a message saying how many wait and how to review.

Decisions live in ``corrections.csv`` (one row per decided item, the latest decision wins; rewritten atomically)
and ``audit.jsonl`` (append-only, flushed and fsynced per append, never rewritten; every attempt including stale
saves and undos). In dvc.yaml both are ``persist: true`` outs of this stage: DVC never deletes them before
re-running the stage, so a person's work is not wiped, yet they are versioned (cached) with the data. When the app
changes ``corrections.csv``, ``dvc status`` reports review's outs as modified, so ``dvc repro`` re-runs review (it
only re-derives ``queue.csv`` and checks completeness: seconds) and then retrain, which depends on
``corrections.csv``; stages before review are untouched. (Hand-edited *deps* were the alternative, but a file
that is a dep and nobody's out is not versioned by ``dvc repro`` and would need a manual ``dvc commit``.)

Each item has a ``version`` counter (number of saved changes: decisions and undos); a save that names an older
version than the current one is refused (409 in the app) and still logged in the audit.

A decision belongs to the exact image a person saw, not to its file name: generate re-uses file names when it
regenerates (new model, new guidance ... new pixels at the same name). Every queue item and every decision carry the
image's ``sha256`` (from generate's manifest). When the store opens, a decision for a queued file whose sha256 differs
from the image's current one (or is empty: it predates content hashes and cannot be verified) is *stale*: it is
removed from corrections.csv through the normal commit path (version bumped, so an open page gets a 409; audit
action ``invalidate`` keeps the old decision) and the item waits again. Decisions for files not in the queue are
kept with their sha256, so they count again if that exact image comes back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.io import atomic_write_csv, clean_stale_temp
from tasks.params import Params
from tasks.review_input import AUDIT_FILE, CORRECTIONS_FILE, QUEUE_FILE, review_status, review_url
from tasks.stage import StageError, WaitingForReview, cli_main
from tasks.validation import validate

log = logging.getLogger(__name__)

__all__ = ["run", "review_status", "ReviewStore", "ReviewOutputs", "build_queue", "Conflict", "ImageChanged"]

REJECT = "reject"
AUTO_REVIEWER = "auto:accept-confident"
REFERENCE_REVIEWER = "reference-labeler (simulated)"
CORRECTION_COLUMNS = ["file_name", "sha256", "intended_label", "pred_label", "final_label", "decision", "reviewer",
                      "timestamp", "version", "note"]
#: What the audit log records as an item's state before (old) and after (new) a change.
STATE_KEYS = ("sha256", "intended_label", "pred_label", "final_label", "decision", "reviewer", "timestamp", "note")
QUEUE_COLUMNS = ["position", "file_name", "sha256", "intended_label", "pred_label", "confidence", "margin", "agrees",
                 "review_rank"]
#: Who removes decisions made on an image that has since changed (audit ``reviewer``/``source``).
CONTENT_CHECK = "auto:content-check"
#: Gaps longer than this between two decisions of one reviewer are breaks, not time spent on an item.
MAX_ITEM_SECONDS = 300.0


def _app_version() -> str:
    try:
        return f"synthloop-review/{metadata.version('synthloop')}"
    except metadata.PackageNotFoundError:
        return "synthloop-review/unknown"


APP_VERSION = _app_version()


class Conflict(Exception):
    """A save named an item version older than the current one (another reviewer saved first)."""

    def __init__(self, item: dict[str, Any], message: str | None = None):
        super().__init__(message or f"{item['file_name']} changed meanwhile (now version {item['version']})")
        self.item = item


class ImageChanged(Conflict):
    """A save or import names an image content (sha256) other than the item's current one: it was regenerated."""

    def __init__(self, item: dict[str, Any], seen: str):
        super().__init__(item, f"{item['file_name']} is a different image now (sha256 {_short(seen)} when seen, "
                               f"{_short(item['sha256'])} now); look at it again")


class ReviewError(StageError):
    """A request the store cannot apply (unknown item, unknown label, nothing to undo)."""


@dataclass(frozen=True)
class ReviewOutputs:
    queue: Path
    corrections: Path
    audit: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def _short(sha: Any) -> str:
    """A sha256 prefix for messages; ``(none)`` for a decision that predates content hashes."""
    return str(sha)[:12] if sha else "(none)"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------- queue
def build_queue(predictions: pd.DataFrame, manifest: pd.DataFrame | None = None) -> pd.DataFrame:
    """Items to review in uncertainty order (predict's ``review_rank``: disagreement first, then low margin).

    Images that generate flagged (``status`` other than ``ok`` in its manifest) never reach a person. Each item
    carries the image's ``sha256`` from the manifest; "" (unknown) without a manifest or for a file it lacks —
    ``load_queue`` refuses such a queue, ``ReviewStore`` cannot tie decisions to unknown content.
    """
    missing = {"file_name", "intended_label", "pred_label", "confidence", "margin", "agrees"} - set(predictions)
    if missing:
        raise StageError(f"predictions.csv lacks columns {sorted(missing)}")
    df = predictions.copy()
    if manifest is not None and "status" in manifest:
        bad = set(manifest.loc[manifest["status"] != "ok", "file_name"])
        if bad & set(df["file_name"]):
            log.warning("%d flagged images left out of the review queue", len(bad & set(df["file_name"])))
        df = df[~df["file_name"].isin(bad)]
    hashes = {} if manifest is None or "sha256" not in manifest else dict(
        zip(manifest["file_name"].astype(str), manifest["sha256"].fillna("").astype(str)))
    df["sha256"] = [hashes.get(f, "") for f in df["file_name"]]
    if "review_rank" not in df:
        # Fallback order when an older predictions.csv has no rank: the same rule predict uses.
        df = df.sort_values(["agrees", "margin", "file_name"], kind="stable")
        df["review_rank"] = range(len(df))
    df = df.sort_values(["review_rank", "file_name"], kind="stable").reset_index(drop=True)
    df["agrees"] = df["agrees"].map(_as_bool)
    df.insert(0, "position", range(len(df)))
    return df[QUEUE_COLUMNS + [c for c in df.columns if c.startswith("p_")]]


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


def classify_decision(pred_label: str, label: str) -> tuple[str, str]:
    """(decision, final_label) for a chosen ``label``: same as predicted → accept, other class → correct."""
    if label == REJECT:
        return "reject", ""
    return ("accept" if label == pred_label else "correct"), label


def confident_items(queue: pd.DataFrame, threshold: float) -> list[str]:
    """File names that accept-confident mode accepts: confident enough and agreeing with the intended class."""
    mask = (queue["confidence"] >= threshold) & queue["agrees"].map(_as_bool)
    return queue.loc[mask, "file_name"].tolist()


# --------------------------------------------------------------------------------------------------- audit
def read_audit(path: Path) -> list[dict[str, Any]]:
    """Entries of audit.jsonl; a torn last line (kill mid-append) is skipped with a warning."""
    if not path.is_file():
        return []
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON (torn write?); skipped", path, n)
    return entries


def append_audit(path: Path, entries: Sequence[dict[str, Any]]) -> None:
    """Append entries as JSON lines, then flush and fsync: the log is never rewritten."""
    if not entries:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        fh.seek(0, os.SEEK_END)
        prefix = b""
        if fh.tell() > 0:  # a torn last line must not swallow our first entry
            fh.seek(-1, os.SEEK_END)
            prefix = b"" if fh.read(1) == b"\n" else b"\n"
        fh.write(prefix + "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def item_versions(entries: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Current version per item: the number of saved changes (decisions and undos) in the audit log."""
    versions: dict[str, int] = {}
    for e in entries:
        if e.get("outcome") == "saved":
            versions[e["file_name"]] = max(versions.get(e["file_name"], 0), int(e.get("version", 0)))
    return versions


def seconds_per_item(entries: Iterable[dict[str, Any]]) -> float | None:
    """Median seconds between consecutive saved decisions of each person (automatic reviewers excluded).

    Gaps over ``MAX_ITEM_SECONDS`` are breaks and are dropped; None when there is no gap to measure.
    """
    times: dict[str, list[datetime]] = {}
    for e in entries:
        if e.get("outcome") == "saved" and e.get("source") == "app" and e.get("action") == "decide":
            times.setdefault(e["reviewer"], []).append(datetime.fromisoformat(e["time"].replace("Z", "+00:00")))
    gaps = []
    for stamps in times.values():
        stamps.sort()
        gaps += [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    gaps = [g for g in gaps if g <= MAX_ITEM_SECONDS]
    return round(statistics.median(gaps), 3) if gaps else None


# --------------------------------------------------------------------------------------------------- store
def read_corrections(path: Path) -> pd.DataFrame:
    """corrections.csv as strings (empty cells stay ""), or an empty frame with the contract's columns."""
    if not path.is_file():
        return pd.DataFrame(columns=CORRECTION_COLUMNS)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in CORRECTION_COLUMNS:
        if col not in df:
            df[col] = ""
    return df


class ReviewStore:
    """The decisions of one review folder: the only writer of corrections.csv and audit.jsonl.

    Thread-safe (one lock around every read-modify-write). Each change first rewrites corrections.csv
    atomically, then appends its audit entry; a failed write changes nothing in memory and is itself logged.
    Opening invalidates decisions made on another image than the queued one (see the module docstring);
    ``stale_decisions`` says how many this open removed.
    """

    def __init__(self, out_dir: Path, queue: pd.DataFrame, classes: Sequence[str], *,
                 app_version: str = APP_VERSION):
        self.out_dir = Path(out_dir)
        self.corrections_path = self.out_dir / CORRECTIONS_FILE
        self.audit_path = self.out_dir / AUDIT_FILE
        self.classes = tuple(classes)
        self.app_version = app_version
        self._lock = threading.RLock()
        clean_stale_temp(self.out_dir)
        self.items: dict[str, dict[str, Any]] = {r["file_name"]: r for r in queue.to_dict("records")}
        for r in self.items.values():
            r["sha256"] = _sha(r.get("sha256"))
        unknown = [f for f, r in self.items.items() if not r["sha256"]]
        if unknown:
            raise StageError(f"{len(unknown)} queued images have no sha256 (e.g. {unknown[:3]}): decisions must "
                             "be tied to image content; build the queue from generate's manifest")
        corrections = read_corrections(self.corrections_path)
        self.decisions: dict[str, dict[str, Any]] = {r["file_name"]: r for r in corrections.to_dict("records")}
        self.versions = item_versions(read_audit(self.audit_path))
        for fn, row in self.decisions.items():  # a crash between the two writes must not lower a version
            self.versions[fn] = max(self.versions.get(fn, 0), int(row.get("version") or 0))
        self.stale_decisions = self._invalidate_stale()

    def _invalidate_stale(self) -> int:
        """Remove decisions made on other content than the queued image (commit path: versions, audit)."""
        stale = {f: self.decisions[f].get("sha256", "") for f in self.items
                 if f in self.decisions and self.decisions[f].get("sha256", "") != self.items[f]["sha256"]}
        if not stale:
            return 0
        notes = {f: f"image changed since the decision (sha256 {_short(old)} then, "
                    f"{_short(self.items[f]['sha256'])} now); the item waits again" for f, old in stale.items()}
        with self._lock:
            self._commit([(f, None, self.versions.get(f, 0)) for f in stale], reviewer=CONTENT_CHECK,
                         action="invalidate", source=CONTENT_CHECK, note="", notes=notes)
        log.warning("%d review decisions were made on a different image than the one now at their file name "
                    "(regenerated, or decided before content hashes); invalidated, those items wait again "
                    "(the audit log keeps the old decisions)", len(stale))
        return len(stale)

    # ---- views
    def item_view(self, file_name: str) -> dict[str, Any]:
        item = self.items[file_name]
        row = self.decisions.get(file_name)
        return {
            **{k: _plain(v) for k, v in item.items()},
            "status": row["decision"] if row else "waiting",
            "final_label": row["final_label"] if row else "",
            "reviewer": row["reviewer"] if row else "",
            "note": row.get("note", "") if row else "",
            "sha256": str(item["sha256"]),
            "version": self.versions.get(file_name, 0),
        }

    def progress(self) -> dict[str, int]:
        decided = [self.decisions[f]["decision"] for f in self.items if f in self.decisions]
        return {"total": len(self.items), "decided": len(decided), "waiting": len(self.items) - len(decided),
                "accepted": decided.count("accept"), "corrected": decided.count("correct"),
                "rejected": decided.count(REJECT)}

    def waiting(self) -> list[str]:
        return [f for f in self.items if f not in self.decisions]

    # ---- changes
    def decide(self, file_name: str, label: str, *, version: int, reviewer: str, note: str = "",
               source: str = "app", action: str = "decide", sha256: str | None = None) -> dict[str, Any]:
        """Record ``label`` (a class or ``reject``) for one item seen at ``version``; Conflict if stale.

        ``sha256``, when given, is the content the person saw: ImageChanged (a Conflict) if the image differs now.
        """
        seen_sha = None if sha256 is None else {file_name: sha256}
        return self.decide_many([(file_name, label, version)], reviewer=reviewer, note=note, source=source,
                                action=action, seen_sha256=seen_sha)[0]

    def decide_many(self, choices: Sequence[tuple[str, str, int]], *, reviewer: str, note: str = "",
                    source: str = "app", action: str = "decide",
                    seen_sha256: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Record several (file_name, label, version_seen) at once: one corrections write, one audit fsync.

        Each decision records the item's current sha256. ``seen_sha256`` (file_name → sha256 the decider saw)
        refuses, with ImageChanged, a decision about content that is no longer at that file name.
        """
        reviewer = _clean_text(reviewer, "reviewer")
        note = _clean_text(note, "note", required=False)
        with self._lock:
            changes = []
            for file_name, label, seen in choices:
                item = self._item(file_name)
                if label != REJECT and label not in self.classes:
                    raise ReviewError(f"unknown label {label!r}; choose one of {list(self.classes)} or {REJECT}")
                if seen_sha256 is not None and file_name in seen_sha256:  # first: the more telling refusal
                    self._check_content(file_name, seen_sha256[file_name], seen, reviewer, action, source, label)
                self._check_version(file_name, seen, reviewer, action, source, label)
                decision, final = classify_decision(item["pred_label"], label)
                row = {"file_name": file_name, "sha256": item["sha256"], "intended_label": item["intended_label"],
                       "pred_label": item["pred_label"], "final_label": final, "decision": decision,
                       "reviewer": reviewer, "timestamp": now_iso(), "note": note}
                changes.append((file_name, row, seen))
            self._commit(changes, reviewer=reviewer, action=action, source=source, note=note)
            return [self.item_view(fn) for fn, _, _ in changes]

    def undo(self, file_name: str, *, version: int, reviewer: str) -> dict[str, Any]:
        """Restore the item's state before its last saved change (recorded as a new 'undo' audit entry)."""
        reviewer = _clean_text(reviewer, "reviewer")
        with self._lock:
            self._item(file_name)
            self._check_version(file_name, version, reviewer, "undo", "app", None)
            last = [e for e in read_audit(self.audit_path)
                    if e.get("file_name") == file_name and e.get("outcome") == "saved"]
            if not last:
                raise ReviewError(f"nothing to undo for {file_name}")
            old = last[-1].get("old")
            if old is not None and old.get("sha256", "") != self.items[file_name]["sha256"]:
                raise ReviewError(f"cannot undo: the previous decision for {file_name} was made on a different "
                                  f"image (sha256 {_short(old.get('sha256'))}, now "
                                  f"{_short(self.items[file_name]['sha256'])})")
            row = None if old is None else {**old, "file_name": file_name}
            self._commit([(file_name, row, version)], reviewer=reviewer, action="undo", source="app", note="")
            return self.item_view(file_name)

    def _item(self, file_name: str) -> dict[str, Any]:
        if file_name not in self.items:
            raise ReviewError(f"{file_name!r} is not in the review queue")
        return self.items[file_name]

    def _check_version(self, file_name: str, seen: int, reviewer: str, action: str, source: str,
                       label: str | None) -> None:
        current = self.versions.get(file_name, 0)
        if int(seen) == current:
            return
        append_audit(self.audit_path, [self._entry(file_name, reviewer, action, source, old=self._state(file_name),
                                                   new={"label": label}, seen=int(seen), version=current,
                                                   outcome="conflict", note="stale version")])
        raise Conflict(self.item_view(file_name))

    def _check_content(self, file_name: str, seen_sha: str, seen: int, reviewer: str, action: str, source: str,
                       label: str | None) -> None:
        item = self.items[file_name]
        if seen_sha and seen_sha == item["sha256"]:
            return
        note = f"image changed: sha256 {_short(seen_sha)} seen, {_short(item['sha256'])} now"
        append_audit(self.audit_path, [self._entry(file_name, reviewer, action, source, old=self._state(file_name),
                                                   new={"label": label, "sha256": seen_sha}, seen=int(seen),
                                                   version=self.versions.get(file_name, 0), outcome="conflict",
                                                   note=note)])
        raise ImageChanged(self.item_view(file_name), seen_sha)

    def _state(self, file_name: str) -> dict[str, Any] | None:
        row = self.decisions.get(file_name)
        if row is None:
            return None
        return {k: row.get(k, "") for k in STATE_KEYS}

    def _entry(self, file_name: str, reviewer: str, action: str, source: str, *, old: Any, new: Any, seen: int,
               version: int, outcome: str, note: str) -> dict[str, Any]:
        return {"time": now_iso(), "reviewer": reviewer, "action": action, "source": source,
                "file_name": file_name, "old": old, "new": new, "version_seen": seen, "version": version,
                "outcome": outcome, "note": note, "app_version": self.app_version}

    def _commit(self, changes: list[tuple[str, dict[str, Any] | None, int]], *, reviewer: str, action: str,
                source: str, note: str, notes: Mapping[str, str] | None = None) -> None:
        """Apply changes (row None = back to waiting): rewrite corrections.csv, then append one audit entry each.

        ``notes`` overrides ``note`` per file name (an invalidation names each item's old and new sha256).
        """
        if not changes:
            return
        decisions = dict(self.decisions)
        entries = []
        for file_name, row, seen in changes:
            version = self.versions.get(file_name, 0) + 1
            old = self._state(file_name)
            if row is None:
                decisions.pop(file_name, None)
            else:
                decisions[file_name] = {**row, "version": str(version)}
            new = None if row is None else {k: row.get(k, "") for k in STATE_KEYS}
            entries.append(self._entry(file_name, reviewer, action, source, old=old, new=new, seen=seen,
                                       version=version, outcome="saved", note=(notes or {}).get(file_name, note)))
        try:
            self._write(decisions)
        except BaseException as err:
            with contextlib.suppress(Exception):
                append_audit(self.audit_path, [{**e, "outcome": "failed", "note": f"write failed: {err!r}"}
                                               for e in entries])
            raise
        append_audit(self.audit_path, entries)
        self.decisions = decisions
        for e in entries:
            self.versions[e["file_name"]] = e["version"]

    def _write(self, decisions: dict[str, dict[str, Any]]) -> None:
        order = {f: i for i, f in enumerate(self.items)}
        rows = sorted(decisions.values(), key=lambda r: (order.get(r["file_name"], len(order)), r["file_name"]))
        df = pd.DataFrame(rows, columns=CORRECTION_COLUMNS).fillna("")
        df["version"] = df["version"].astype(int)
        if not df.empty:
            validate(df, "review_corrections", classes=self.classes)
        atomic_write_csv(self.corrections_path, df)


def _sha(value: Any) -> str:
    """A sha256 cell as text ("" for missing/NaN)."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _plain(value: Any) -> Any:
    """numpy scalars → Python (JSON-serialisable) values."""
    return value.item() if hasattr(value, "item") else value


def _clean_text(value: Any, what: str, *, required: bool = True, limit: int = 200) -> str:
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise ReviewError(f"{what} is required")
    if len(text) > limit or any(ord(c) < 32 for c in text):
        raise ReviewError(f"{what} must be one line of at most {limit} characters")
    return text


# --------------------------------------------------------------------------------------------------- modes
def apply_mode(store: ReviewStore, params: Params, generated: Path) -> dict[str, int]:
    """Apply the automatic decisions of ``review.mode`` to items nobody decided yet; return counts per reviewer."""
    mode = params.review.mode
    waiting = store.waiting()
    if mode == "accept-confident" and waiting:
        queue = pd.DataFrame([store.items[f] for f in waiting])
        picks = confident_items(queue, params.review.confidence_threshold)
        choices = [(f, store.items[f]["pred_label"], store.versions.get(f, 0)) for f in picks]
        store.decide_many(choices, reviewer=AUTO_REVIEWER, source="stage", action="auto-accept",
                          note=f"confidence >= {params.review.confidence_threshold} and agrees with intended")
        return {AUTO_REVIEWER: len(choices)}
    if mode == "reference" and waiting:
        labels = label_with_reference(params, generated, waiting)
        choices = [(f, lab, store.versions.get(f, 0)) for f, lab in zip(waiting, labels)]
        store.decide_many(choices, reviewer=REFERENCE_REVIEWER, source="stage", action="reference",
                          note="simulated review by the reference labeler")
        return {REFERENCE_REVIEWER: len(choices)}
    return {}


def label_with_reference(params: Params, generated: Path, file_names: Sequence[str],
                         batch_size: int = 256) -> list[str]:
    """Labels (class or ``reject``) for ``file_names`` from the reference labeler of the phantom data."""
    from PIL import Image
    from tqdm import tqdm

    from tasks.reference import reference_labels

    labels: list[str] = []
    for start in tqdm(range(0, len(file_names), batch_size), desc="reference labeler", unit="batch"):
        images = []
        for name in file_names[start:start + batch_size]:
            with Image.open(generated / name) as im:
                images.append(im.copy())
        labels += list(reference_labels(images, params))
    if len(labels) != len(file_names):
        raise StageError(f"reference labeler returned {len(labels)} labels for {len(file_names)} images")
    return labels


def intended_agreement(corrections: pd.DataFrame) -> float | None:
    """The generator's class fidelity as the reviewers judged it: the share of kept (not rejected) images whose
    final label is the class they were generated for; None when nothing was kept. (A *correction* changes the
    classifier's predicted label, so corrections do not measure this.)"""
    kept = corrections[corrections["decision"] != REJECT]
    return float((kept["final_label"] == kept["intended_label"]).mean()) if len(kept) else None


def review_metrics(store: ReviewStore, params: Params) -> dict[str, Any]:
    """Headline numbers for metrics/review.json and MLflow."""
    progress = store.progress()
    decided = [store.decisions[f] for f in store.items if f in store.decisions]
    reviewers = [row["reviewer"] for row in decided]
    simulated = reviewers.count(REFERENCE_REVIEWER)
    auto = reviewers.count(AUTO_REVIEWER)
    agreement = intended_agreement(pd.DataFrame(decided, columns=CORRECTION_COLUMNS))
    return {
        **progress,
        "intended_agreement": None if agreement is None else round(agreement, 4),
        "reviewed": progress["decided"],
        "human_decisions": len(reviewers) - simulated - auto,
        "auto_accepted": auto,
        "simulated_decisions": simulated,
        "simulated": int(simulated > 0),
        "seconds_per_item": seconds_per_item(read_audit(store.audit_path)),
        "orphaned_decisions": len(set(store.decisions) - set(store.items)),
        "stale_decisions": store.stale_decisions,
        "mode": params.review.mode,
    }


# --------------------------------------------------------------------------------------------------- stage
def load_queue(predictions: Path, generated: Path, classes: Sequence[str]) -> pd.DataFrame:
    """Read and validate predictions.csv, drop flagged images, return the ordered queue with each image's sha256.

    generate's manifest is required: its sha256 ties every decision to the exact image a person saw.
    """
    path = Path(predictions) / "predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the predict stage first (dvc repro predict)")
    preds = pd.read_csv(path)
    validate(preds, "predictions", classes=classes)
    manifest_path = Path(generated) / "manifest.csv"
    if not manifest_path.is_file():
        raise StageError(f"{manifest_path} not found: review needs generate's manifest (sha256 per image) to tie "
                         "decisions to image content; run the generate stage first (dvc repro generate)")
    manifest = pd.read_csv(manifest_path, dtype={"file_name": str, "status": str, "sha256": str},
                           keep_default_na=False)
    if "sha256" not in manifest:
        raise StageError(f"{manifest_path} has no sha256 column: decisions cannot be tied to image content; "
                         "re-run the generate stage (dvc repro generate)")
    queue = build_queue(preds, manifest)
    unknown = queue.loc[queue["sha256"] == "", "file_name"].tolist()
    if unknown:
        raise StageError(f"{manifest_path} gives no sha256 for {len(unknown)} queued images (e.g. {unknown[:3]}); "
                         "re-run the generate stage (dvc repro generate)")
    return queue


def open_store(params: Params, *, predictions: Path, generated: Path, out_dir: Path) -> ReviewStore:
    """Build the queue, write queue.csv, and open the decision store (used by run() and the review app)."""
    queue = load_queue(predictions, generated, params.classes)
    atomic_write_csv(Path(out_dir) / QUEUE_FILE, queue)
    return ReviewStore(Path(out_dir), queue, params.classes)


def run(params: Params, *, predictions: Path, generated: Path, out_dir: Path) -> ReviewOutputs:
    """Derive the queue, apply the mode's automatic decisions, and stop at the checkpoint while items wait."""
    out_dir = Path(out_dir)
    store = open_store(params, predictions=predictions, generated=generated, out_dir=out_dir)
    auto = apply_mode(store, params, Path(generated))
    for reviewer, n in auto.items():
        log.info("%s decided %d items", reviewer, n)
    metrics = review_metrics(store, params)
    if metrics["simulated"]:
        log.warning("%d decisions are SIMULATED by the reference labeler, not a person",
                    metrics["simulated_decisions"])
    if metrics["waiting"]:
        raise WaitingForReview(
            f"review checkpoint: {metrics['waiting']} of {metrics['total']} items wait for a person "
            f"(review.mode={params.review.mode}). Review them with `synthloop review` (or `make review`) at "
            f"{review_url(params.review.host, params.review.port)}, then run `dvc repro` again "
            "(or finish in the app / resume the paused flow run).")
    log.info("review complete: %d accepted, %d corrected, %d rejected", metrics["accepted"],
             metrics["corrected"], metrics["rejected"])
    return ReviewOutputs(queue=out_dir / QUEUE_FILE, corrections=store.corrections_path,
                         audit=store.audit_path, metrics=metrics)


if __name__ == "__main__":
    cli_main("review")
