"""The decision store of the review checkpoint: the only writer of corrections.csv and audit.jsonl.

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
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.io import clean_stale_temp
from tasks.review.agreement import add_read, first_reads, overlap_state
from tasks.review.audit import append_audit, item_versions, read_audit
from tasks.review.budget import plan_queue
from tasks.review.queue import classify_decision, load_queue
from tasks.stage import StageError
from tasks.params import Params
from tasks.tables import AUDIT_FILE, CORRECTIONS_FILE, REJECT, read_corrections, write_corrections, write_queue

log = logging.getLogger(__name__)

#: What the audit log records as an item's state before (old) and after (new) a change.
STATE_KEYS = ("sha256", "intended_label", "pred_label", "final_label", "decision", "reviewer", "timestamp", "note")
#: Who removes decisions made on an image that has since changed (audit ``reviewer``/``source``).
CONTENT_CHECK = "auto:content-check"


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



def _short(sha: Any) -> str:
    """A sha256 prefix for messages; ``(none)`` for a decision that predates content hashes."""
    return str(sha)[:12] if sha else "(none)"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# One class of ~200 lines on purpose: a single lock guards the in-memory decisions, the versions and both files,
# and every change goes through ``_commit``; splitting it would spread that invariant over several objects.
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
        corrections = read_corrections(self.corrections_path, self.classes, missing_ok=True)
        self.decisions: dict[str, dict[str, Any]] = {r["file_name"]: r for r in corrections.to_dict("records")}
        entries = read_audit(self.audit_path)
        self.versions = item_versions(entries)
        #: file_name → {person: label of their first decision}: who read an overlap item (tasks.review.agreement)
        self.reads = first_reads(entries)
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
            "needs": self.needs(file_name),
            "readers": sorted(self.reads.get(file_name, {})),
        }

    def progress(self) -> dict[str, int]:
        """Counts; ``waiting`` is what a person still owes (in-budget items undecided, overlap items short of a
        second read or disputed); ``beyond_budget`` the undecided rest that review.beyond_budget will label."""
        decided = [self.decisions[f]["decision"] for f in self.items if f in self.decisions]
        owed = self.required_waiting()
        return {"total": len(self.items), "decided": len(decided), "waiting": len(owed),
                "beyond_budget": len(self.items) - len(decided) - sum(f not in self.decisions for f in owed),
                "accepted": decided.count("accept"), "corrected": decided.count("correct"),
                "rejected": decided.count(REJECT)}

    def waiting(self) -> list[str]:
        """Every undecided item, in queue order (in budget or not)."""
        return [f for f in self.items if f not in self.decisions]

    def required(self, file_name: str) -> bool:
        """True if a person must decide this item (audit sample or within the budget; a queue without a plan:
        every item)."""
        return bool(self.items[file_name].get("in_budget", True))

    def needs(self, file_name: str) -> str:
        """What the item still needs: ``decision``, ``second-read``, ``adjudication`` (overlap items) or ""."""
        if file_name not in self.decisions:
            return "decision" if self.required(file_name) else ""
        if self.items[file_name].get("overlap"):
            state = overlap_state(self.reads.get(file_name, {}))
            return "" if state == "done" else state
        return ""

    def required_waiting(self) -> list[str]:
        """Items a person still owes, in queue order."""
        return [f for f in self.items if self.needs(f)]

    # ---- changes
    def decide(self, file_name: str, label: str, *, version: int, reviewer: str, note: str = "",
               source: str = "app", action: str = "decide", sha256: str | None = None,
               context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record ``label`` (a class or ``reject``) for one item seen at ``version``; Conflict if stale.

        ``sha256``, when given, is the content the person saw: ImageChanged (a Conflict) if the image differs now.
        ``context`` (e.g. ``{"blind": True}`` or a Label Studio annotation) is kept in the audit entry.
        """
        seen_sha = None if sha256 is None else {file_name: sha256}
        return self.decide_many([(file_name, label, version)], reviewer=reviewer, note=note, source=source,
                                action=action, seen_sha256=seen_sha, context=context)[0]

    def decide_many(self, choices: Sequence[tuple[str, str, int]], *, reviewer: str, note: str = "",
                    source: str = "app", action: str = "decide",
                    seen_sha256: Mapping[str, str] | None = None,
                    context: Mapping[str, Any] | None = None,
                    contexts: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Record several (file_name, label, version_seen) at once: one corrections write, one audit fsync.

        Each decision records the item's current sha256. ``seen_sha256`` (file_name → sha256 the decider saw)
        refuses, with ImageChanged, a decision about content that is no longer at that file name. ``context`` (all
        items) and ``contexts`` (file_name → mapping) go into the audit entries' ``context``.
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
            self._commit(changes, reviewer=reviewer, action=action, source=source, note=note, context=context,
                         contexts=contexts)
            return [self.item_view(fn) for fn, _, _ in changes]

    def withdraw(self, file_names: Sequence[str], *, reviewer: str, action: str, note: str) -> int:
        """Send decided items back to waiting (audited, versions bumped); returns how many were decided."""
        with self._lock:
            changes = [(f, None, self.versions.get(f, 0)) for f in file_names if f in self.decisions]
            if changes:
                self._commit(changes, reviewer=reviewer, action=action, source="stage", note=note)
            return len(changes)

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
                source: str, note: str, notes: Mapping[str, str] | None = None,
                context: Mapping[str, Any] | None = None,
                contexts: Mapping[str, Mapping[str, Any]] | None = None) -> None:
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
            extra = {**(context or {}), **((contexts or {}).get(file_name) or {})}
            if extra:  # how the decision was made (blind, grid, a Label Studio annotation): audit only
                entries[-1]["context"] = extra
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
            add_read(self.reads, e)

    def _write(self, decisions: dict[str, dict[str, Any]]) -> None:
        order = {f: i for i, f in enumerate(self.items)}
        rows = sorted(decisions.values(), key=lambda r: (order.get(r["file_name"], len(order)), r["file_name"]))
        # No GX suite per save: it costs ~0.5 s under the lock, i.e. every reviewer waits on every other one
        # (measured by benchmarks/bench_review.py); the rows are built above from the validated queue, and every
        # reader of corrections.csv (this store on open, retrain, the review stage) validates the table.
        write_corrections(self.corrections_path, rows, self.classes, check=False)


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


def open_store(params: Params, *, predictions: Path, generated: Path, out_dir: Path) -> ReviewStore:
    """Build the queue, write queue.csv, and open the decision store (used by run() and the review app)."""
    r = params.review
    # The simulated reviewer is one labeler: it cannot give an overlap item its second, independent read.
    queue = plan_queue(load_queue(predictions, generated, params.classes), budget=r.budget,
                       audit_share=r.audit_share, overlap_share=r.overlap_share, seed=params.seed,
                       overlap=r.mode != "reference")
    write_queue(out_dir, queue)
    return ReviewStore(Path(out_dir), queue, params.classes)
