"""What the review page asks for, a page at a time: cursor-paged item views, the class hotkeys, the grid's batch.

The page never loads the whole queue: ``/api/items`` answers one page (``limit`` items after or before a queue
position, under a status/class/confidence filter) with the count of matching items and the index of the page's
first item among them, so a 10,000-item queue costs the browser one page of JSON. Pure functions over a
``ReviewStore``'s items and decisions; no I/O but the store's own writes (``decide_each``).
"""

from __future__ import annotations

import bisect
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.review.store import Conflict, ReviewError, ReviewStore
from tasks.tables import REJECT

#: Status filters the page offers ("decided" = any decision; "owed" = what a person still owes: an in-budget
#: decision, or an overlap item's second read / adjudication — less those ``reader`` already read).
STATUSES = ("", "waiting", "owed", "decided", "accept", "correct", "reject")
DEFAULT_LIMIT = 48
MAX_LIMIT = 500
#: Letters that are commands, never class keys: B blind, G grid, U undo, X reject.
RESERVED_LETTERS = frozenset("bgux")


def class_keys(classes: Sequence[str]) -> list[str]:
    """One hotkey per class: 1-9, then the letters a-z that are not commands; "" past those (use the palette)."""
    keys = [str(n) for n in range(1, 10)] + [c for c in string.ascii_lowercase if c not in RESERVED_LETTERS]
    return [keys[i] if i < len(keys) else "" for i in range(len(classes))]


@dataclass(frozen=True)
class ItemQuery:
    """One ``/api/items`` request: filter, cursor (``after`` or ``before`` a queue position) and page size."""

    status: str = ""
    cls: str = ""
    min_confidence: float | None = None
    after: int | None = None
    before: int | None = None
    limit: int = DEFAULT_LIMIT
    reader: str = ""  # with status "owed": leave out overlap items this person already read


def parse_query(args: Mapping[str, str], classes: Sequence[str]) -> ItemQuery:
    """An ItemQuery from URL query arguments; ReviewError naming the argument for a bad value."""
    status, cls = args.get("status", ""), args.get("cls", "")
    if status not in STATUSES:
        raise ReviewError(f"status must be one of {list(STATUSES)}, got {status!r}")
    if cls and cls not in classes:
        raise ReviewError(f"cls must be one of {list(classes)}, got {cls!r}")

    def number(name: str, kind: type, lo: float | None = None, hi: float | None = None) -> Any:
        raw = args.get(name)
        if raw in (None, ""):
            return None
        try:
            value = kind(raw)
        except ValueError:
            raise ReviewError(f"{name} must be a number, got {raw!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ReviewError(f"{name} must lie in [{lo}, {hi}], got {raw!r}")
        return value

    after, before = number("after", int), number("before", int)
    if after is not None and before is not None:
        raise ReviewError("give after or before, not both")
    limit = number("limit", int, 0, MAX_LIMIT)
    return ItemQuery(status=status, cls=cls, min_confidence=number("min_confidence", float, 0.0, 1.0),
                     after=after, before=before, limit=DEFAULT_LIMIT if limit is None else limit,
                     reader=args.get("reader", "").strip())


def _status(store: ReviewStore, file_name: str) -> str:
    row = store.decisions.get(file_name)
    return row["decision"] if row else "waiting"


def _matches(store: ReviewStore, file_name: str, q: ItemQuery) -> bool:
    item = store.items[file_name]
    if q.cls and item["intended_label"] != q.cls:
        return False
    if q.min_confidence is not None and float(item["confidence"]) < q.min_confidence:
        return False
    if not q.status:
        return True
    if q.status == "owed":
        needs = store.needs(file_name)
        return bool(needs) and not (needs != "decision" and q.reader in store.reads.get(file_name, {}))
    status = _status(store, file_name)
    return status != "waiting" if q.status == "decided" else status == q.status


def item_page(store: ReviewStore, q: ItemQuery) -> dict[str, Any]:
    """``limit`` matching item views after/before the cursor (queue order), the matching count and the page's
    index among the matching items (one pass over the queue: a few ms at 10,000 items)."""
    matching = [f for f in store.items if _matches(store, f, q)]
    positions = [int(store.items[f]["position"]) for f in matching]  # ascending: the queue is in position order
    if q.before is not None:
        end = bisect.bisect_left(positions, q.before)
        start = max(0, end - q.limit)
    else:
        start = 0 if q.after is None else bisect.bisect_right(positions, q.after)
        end = start + q.limit
    return {"items": [store.item_view(f) for f in matching[start:end]], "matching": len(matching), "index": start}


def batch_choices(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The decisions of a ``/api/decide-batch`` body: a list of {file_name, label, version[, sha256]}; ReviewError if malformed."""
    decisions = body.get("decisions")
    if not isinstance(decisions, list) or not decisions or not all(isinstance(d, dict) for d in decisions):
        raise ReviewError("decisions must be a non-empty list of {file_name, label, version, sha256}")
    names = [str(d.get("file_name", "")) for d in decisions]
    if len(set(names)) != len(names):
        raise ReviewError("a batch names each item once")
    return [{"file_name": n, "label": str(d.get("label", "")), "version": _version(d),
             "sha256": None if d.get("sha256") is None else str(d["sha256"])} for n, d in zip(names, decisions)]


def decide_each(store: ReviewStore, choices: list[dict[str, Any]], *, reviewer: Any,
                context: dict[str, Any]) -> dict[str, Any]:
    """Save each choice that is still current, in as few writes as possible; per item 200, 409, 404 or 400.

    Atomic per item: a stale item (409, audited by the store) or a bad one never blocks the others. The valid ones
    go to ``decide_many`` together; when one of them turns out stale (another reviewer saved in between), it is
    reported and the rest are tried again without it.
    """
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for c in choices:
        fn, label = c["file_name"], c["label"]
        if fn not in store.items:
            results[fn] = {"file_name": fn, "status": 404, "error": f"{fn!r} is not in the review queue"}
        elif label != REJECT and label not in store.classes:
            results[fn] = {"file_name": fn, "status": 400, "error": f"unknown label {label!r}"}
        else:
            pending.append(c)
    while pending:
        try:
            saved = store.decide_many([(c["file_name"], c["label"], c["version"]) for c in pending],
                                      reviewer=reviewer, action="decide", context=context,
                                      seen_sha256={c["file_name"]: c["sha256"] for c in pending if c["sha256"]})
        except Conflict as err:  # audited by the store; the others have not been written
            fn = err.item["file_name"]
            results[fn] = {"file_name": fn, "status": 409, "item": err.item, "error": str(err)}
            pending = [c for c in pending if c["file_name"] != fn]
            continue
        results.update({it["file_name"]: {"file_name": it["file_name"], "status": 200, "item": it} for it in saved})
        break
    return {"results": [results[c["file_name"]] for c in choices],
            "saved": sum(r["status"] == 200 for r in results.values())}


def _version(entry: Mapping[str, Any]) -> int:
    try:
        return int(entry.get("version"))
    except (TypeError, ValueError):
        raise ReviewError("version (the item version you saw) must be an integer") from None


def undo_each(store: ReviewStore, entries: list[dict[str, Any]], *, reviewer: Any) -> dict[str, Any]:
    """Undo each {file_name, version} on its own (the grid's last batch); per item 200, 409, 404 or 400."""
    results = []
    for e in entries:
        fn = str(e.get("file_name", ""))
        try:
            item = store.undo(fn, version=_version(e), reviewer=reviewer)
            results.append({"file_name": fn, "status": 200, "item": item})
        except Conflict as err:
            results.append({"file_name": fn, "status": 409, "item": err.item, "error": str(err)})
        except ReviewError as err:
            results.append({"file_name": fn, "status": error_status(err), "error": str(err)})
    return {"results": results}


def error_status(err: ReviewError) -> int:
    """The HTTP status of a refused request: 404 for an unknown item, else 400."""
    return 404 if "not in the review queue" in str(err) else 400
