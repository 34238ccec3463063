"""Label Studio round trip for the review queue, in Label Studio's documented JSON formats.

Export (``export_queue``): the queue as Label Studio *tasks with pre-annotations* — one task per item with
``data.image`` (an image URL: by default the review server's ``/image/`` route; any base URL where the generate
folder is served works), the item's facts under ``data``, and one entry in ``predictions`` whose ``score`` is the
classifier confidence and whose ``result`` is a ``choices`` result for the predicted class — plus the labeling
config XML (``<Image>`` + ``<Choices>`` with one ``<Choice>`` per class and ``reject``). Label Studio sorts tasks
by prediction score in its Data Manager, so a person can work the least confident items first.

Import (``import_export``): a Label Studio JSON export (a list of tasks, each with
``annotations[].result[].value.choices``, ``completed_by``, ``created_at``/``updated_at``, ``lead_time``,
``was_cancelled``) becomes decisions in corrections.csv with audit entries (reviewer ``labelstudio:<annotator>``,
a name from ``--annotator ID=NAME`` or the export's user object, else the numeric id). The latest non-cancelled
annotation of a task wins; its id, annotator, times and ``lead_time`` (seconds on the item) are kept in the audit
entry's ``context.annotation``. Importing the same export again is idempotent:

- an annotation already imported (same id and ``updated_at``) is skipped silently (``unchanged``);
- a new annotation, or one changed in Label Studio since the last import, is applied (``imported`` / ``updated``)
  when the item did not change in synthloop since the export (or since that last import);
- changed in both places (Label Studio *and* the review app) is a ``conflict``: audited, not applied, and listed
  in a warning with both labels, so the person decides which one stands.

Images: Label Studio loads ``data.image`` cross-origin; set ``review.labelstudio_origin`` to its origin (e.g.
``http://127.0.0.1:8080``) so the review server's ``/image/`` route allows exactly that origin.
Each task also carries the image's ``sha256`` at export time: a result for an image that was regenerated since
(other content at the same file name), or from an export without ``sha256``, is refused — logged in the audit as a
conflict, counted as ``image_changed`` and never applied — because the annotator labelled a different picture.

References: https://labelstud.io/guide/predictions (pre-annotation format, ``score``),
https://labelstud.io/guide/task_format (annotated task export format).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from tasks.io import atomic_write_json, atomic_write_text
from tasks.params import Params, load_params
from tasks.review.audit import read_audit
from tasks.review.status import review_url
from tasks.review.store import APP_VERSION, Conflict, ImageChanged, ReviewStore, open_store
from tasks.tables import REJECT

log = logging.getLogger(__name__)

FROM_NAME = "label"
TO_NAME = "image"


class LabelStudioFormatError(ValueError):
    """The file is not a Label Studio JSON export this importer understands; the message says where."""


#: Loggers that narrate every table validation at INFO; an import shows its one result line instead.
NOISY_LOGGERS = ("great_expectations", "tasks.validation")
COUNTS = ("imported", "updated", "unchanged", "conflicts", "unknown", "image_changed")


@dataclass(frozen=True)
class ImportedDecision:
    file_name: str
    label: str
    reviewer: str
    version_seen: int
    annotated_at: str
    sha256: str = ""
    #: The annotation as Label Studio recorded it: id, task, completed_by, created_at, updated_at, lead_time.
    annotation: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> list[Any]:
        """What identifies this annotation's content: its id and last update (JSON-comparable)."""
        return [self.annotation.get("id"), self.annotation.get("updated_at") or self.annotation.get("created_at")]


def labeling_config(classes: list[str] | tuple[str, ...]) -> str:
    """Label Studio labeling config: the image and a single-choice ``<Choices>`` of the classes and reject."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in [*classes, REJECT])
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        '  <Header value="Intended class: $intended_label"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def export_tasks(items: list[dict[str, Any]], *, base_url: str, model_version: str) -> list[dict[str, Any]]:
    """Label Studio tasks (``data`` + ``predictions`` with ``score`` = confidence) for review item views."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    tasks = []
    for it in items:
        result = {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                  "value": {"choices": [it["pred_label"]]}}
        tasks.append({
            "data": {"image": base + it["file_name"], "file_name": it["file_name"], "sha256": it["sha256"],
                     "intended_label": it["intended_label"], "pred_label": it["pred_label"],
                     "confidence": float(it["confidence"]), "status": it["status"],
                     "synthloop_version": int(it["version"])},
            "predictions": [{"model_version": model_version, "score": float(it["confidence"]),
                             "result": [result]}],
        })
    return tasks


def _user_id(completed_by: Any) -> Any:
    return completed_by.get("id") if isinstance(completed_by, dict) else completed_by


def _reviewer(completed_by: Any, annotators: Mapping[str, str] | None = None) -> str:
    """``labelstudio:<name>``: the ``annotators`` name of the user id, else the export's user object's email or
    username, else the bare id (Label Studio's JSON export writes ``completed_by`` as a user id)."""
    names = annotators or {}
    uid = _user_id(completed_by)
    who = names.get(str(uid)) if uid is not None else None
    if not who and isinstance(completed_by, dict):
        who = completed_by.get("email") or completed_by.get("username")
    who = who or uid
    return f"labelstudio:{who if who not in (None, '') else 'unknown'}"


def _json_min_hint(tasks: list[Any]) -> str | None:
    """A one-line hint when ``tasks`` looks like another Label Studio export format than JSON."""
    first = tasks[0] if tasks else None
    if isinstance(first, dict) and "data" not in first and ({"annotator", "annotation_id", "file_name", "image"}
                                                             & set(first)):
        return ("this is a Label Studio JSON-MIN export (flat rows without 'data'/'annotations'); in Label Studio "
                "choose Export → JSON (not JSON-MIN, CSV or TSV) and import that file")
    return None


def _choice(annotation: dict[str, Any], where: str) -> str | None:
    for r in annotation.get("result") or []:
        if r.get("type") == "choices" and r.get("from_name", FROM_NAME) == FROM_NAME:
            choices = (r.get("value") or {}).get("choices") or []
            if len(choices) != 1:
                raise LabelStudioFormatError(f"{where}: expected exactly one choice, got {choices}")
            return str(choices[0])
    return None


def parse_export(tasks: Any, annotators: Mapping[str, str] | None = None) -> list[ImportedDecision]:
    """Decisions from a Label Studio JSON export; tasks without a usable annotation are skipped.

    ``annotators`` maps Label Studio user ids (as text) to names for the reviewer column.
    """
    if not isinstance(tasks, list):
        raise LabelStudioFormatError("a Label Studio JSON export is a list of tasks")
    hint = _json_min_hint(tasks)
    if hint:
        raise LabelStudioFormatError(hint)
    out = []
    for n, task in enumerate(tasks):
        where = f"task {task.get('id', n) if isinstance(task, dict) else n}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise LabelStudioFormatError(f"{where}: not a task object with 'data'")
        file_name = task["data"].get("file_name")
        if not file_name:
            raise LabelStudioFormatError(f"{where}: data.file_name missing (was it exported by synthloop?)")
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        done.sort(key=lambda a: a.get("updated_at") or a.get("created_at") or "")
        for annotation in reversed(done):  # latest annotation with a choice wins
            label = _choice(annotation, where)
            if label is not None:
                kept = {k: annotation.get(k) for k in ("id", "created_at", "updated_at", "lead_time")}
                out.append(ImportedDecision(
                    file_name=str(file_name), label=label,
                    reviewer=_reviewer(annotation.get("completed_by"), annotators),
                    version_seen=int(task["data"].get("synthloop_version", 0)),
                    annotated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                    sha256=str(task["data"].get("sha256") or ""),
                    annotation={**kept, "task": task.get("id"),
                                "completed_by": _user_id(annotation.get("completed_by"))}))
                break
    return out


def _last_imports(store: ReviewStore) -> dict[str, dict[str, Any]]:
    """Per file, the last saved Label Studio import in the audit log (its annotation key and resulting version)."""
    last: dict[str, dict[str, Any]] = {}
    for e in read_audit(store.audit_path):
        if e.get("source") == "labelstudio" and e.get("outcome") == "saved" and (e.get("context") or {}).get("key"):
            last[e["file_name"]] = e
    return last


def apply_imported(store: ReviewStore, decisions: list[ImportedDecision]) -> dict[str, Any]:
    """Record imported decisions in the store; return counts (``COUNTS``) and ``conflict_items`` (both labels).

    Unchanged annotations (already imported) are skipped without an audit entry. A result for an image whose
    sha256 is not the one exported (regenerated since, or exported without sha256) is refused: audited as a
    conflict, counted in ``image_changed``. Changed in Label Studio and in synthloop since the export/last import:
    audited as a conflict, not applied, listed in ``conflict_items``.
    """
    counts: dict[str, Any] = dict.fromkeys(COUNTS, 0)
    conflict_items: list[dict[str, str]] = []
    last = _last_imports(store)
    batches: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    contexts: dict[str, dict[str, Any]] = {}
    changed = []
    for d in decisions:
        if d.file_name not in store.items:
            log.warning("Label Studio task for %s is not in the review queue; skipped", d.file_name)
            counts["unknown"] += 1
            continue
        previous = last.get(d.file_name)
        if previous is not None and previous["context"]["key"] == d.key:  # imported before: nothing new
            counts["unchanged"] += 1
            continue
        baseline = int(previous["version"]) if previous is not None else d.version_seen
        context = {"key": d.key, "annotation": d.annotation}
        if d.sha256 != store.items[d.file_name]["sha256"]:
            try:  # audits the refused attempt and raises ImageChanged
                store.decide(d.file_name, d.label, version=baseline, reviewer=d.reviewer, source="labelstudio",
                             action="import", sha256=d.sha256, context=context)
            except ImageChanged:
                counts["image_changed"] += 1
                changed.append(d.file_name)
            except Conflict:  # also changed in the app since the export: the version check refuses it first
                counts["conflicts"] += 1
            continue
        now = store.item_view(d.file_name)
        if now["status"] != "waiting" and (now["final_label"] or REJECT) == d.label:  # both sides agree already
            counts["unchanged"] += 1
            continue
        if store.versions.get(d.file_name, 0) != baseline:  # changed here too: audited, shown, not applied
            with contextlib.suppress(Conflict):
                store.decide(d.file_name, d.label, version=baseline, reviewer=d.reviewer, source="labelstudio",
                             action="import", context=context)
            counts["conflicts"] += 1
            conflict_items.append({"file_name": d.file_name, "labelstudio": d.label, "by": d.reviewer,
                                   "synthloop": now["final_label"] or now["status"], "synthloop_by": now["reviewer"]})
            continue
        batches[d.reviewer].append((d.file_name, d.label, baseline))
        contexts[d.file_name] = context
        counts["updated" if previous is not None else "imported"] += 1
    for reviewer, choices in batches.items():
        store.decide_many(choices, reviewer=reviewer, source="labelstudio", action="import",
                          note="imported from Label Studio", contexts=contexts)
    if changed:
        log.warning("%d Label Studio results refused: the image changed since the export (regenerated) or the "
                    "export has no sha256, so the annotator labelled a different picture; re-export and label "
                    "again: %s", len(changed), changed[:10])
    for c in conflict_items[:20]:
        log.warning("conflict: %s is %s in Label Studio (%s) but %s in synthloop (%s) since the export; kept "
                    "synthloop's, decide it in the review app", c["file_name"], c["labelstudio"], c["by"],
                    c["synthloop"], c["synthloop_by"])
    return {**counts, "conflict_items": conflict_items}


def result_line(counts: Mapping[str, Any], decisions: list[ImportedDecision]) -> str:
    """The import's one result line: what was applied, skipped and refused, and the annotators' pace."""
    leads = [float(d.annotation["lead_time"]) for d in decisions
             if isinstance(d.annotation.get("lead_time"), (int, float))]
    pace = f"; median lead_time {statistics.median(leads):.1f} s per item" if leads else ""
    return (f"Label Studio import: {counts['imported']} new, {counts['updated']} updated, {counts['unchanged']} "
            f"unchanged, {counts['conflicts']} conflicts (changed in both places), {counts['image_changed']} "
            f"image changed, {counts['unknown']} not in the queue{pace}")


@contextlib.contextmanager
def quiet_validation() -> Iterator[None]:
    """Validation loggers at WARNING for the duration: their INFO lines would bury the import's result line."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_queue(params: Params, out_dir: Path, *, base_url: str | None = None) -> tuple[Path, Path]:
    """Write ``tasks.json`` and ``labeling_config.xml`` for the current queue into ``out_dir``."""
    store = open_store(params, predictions=params.paths.predict, generated=params.paths.generate,
                       out_dir=params.paths.review)
    base = base_url or review_url(params.review.host, params.review.port) + "image/"
    tasks = export_tasks([store.item_view(f) for f in store.items], base_url=base, model_version=APP_VERSION)
    tasks_path, config_path = Path(out_dir) / "tasks.json", Path(out_dir) / "labeling_config.xml"
    atomic_write_json(tasks_path, tasks)
    atomic_write_text(config_path, labeling_config(params.classes))
    log.info("exported %d Label Studio tasks to %s (labeling config: %s)", len(tasks), tasks_path, config_path)
    return tasks_path, config_path


def import_export(params: Params, export_path: Path, *,
                  annotators: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Import a Label Studio JSON export as review decisions; return the counts (``COUNTS``, ``conflict_items``).

    ``annotators`` maps Label Studio user ids to names (``--annotator 3=ann@clinic``).
    """
    try:
        tasks = json.loads(Path(export_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LabelStudioFormatError(f"{export_path} is not JSON ({err}); in Label Studio choose Export → JSON "
                                     "(not CSV, TSV or JSON-MIN)") from None
    except UnicodeDecodeError:
        raise LabelStudioFormatError(f"{export_path} is not a text file; export the project as JSON") from None
    decisions = parse_export(tasks, annotators)
    with quiet_validation():
        store = open_store(params, predictions=params.paths.predict, generated=params.paths.generate,
                           out_dir=params.paths.review)
        counts = apply_imported(store, decisions)
    log.info("%s", result_line(counts, decisions))
    return counts


def _annotator(text: str) -> tuple[str, str]:
    uid, sep, name = text.partition("=")
    if not sep or not uid.strip() or not name.strip():
        raise argparse.ArgumentTypeError(f"expected ID=NAME (a Label Studio user id and a name), got {text!r}")
    return uid.strip(), name.strip()


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.review.labelstudio export OUT_DIR [--base-url URL]`` / ``import EXPORT.json``."""
    parser = argparse.ArgumentParser(prog="python -m tasks.review.labelstudio", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write tasks.json + labeling_config.xml for the review queue")
    exp.add_argument("out_dir", type=Path)
    exp.add_argument("--base-url", help="URL prefix of the images (default: the review server's /image/)")
    imp = sub.add_parser("import", help="import a Label Studio JSON export as corrections")
    imp.add_argument("export", type=Path)
    imp.add_argument("--annotator", type=_annotator, action="append", default=[], metavar="ID=NAME",
                     help="name of a Label Studio user id in the reviewer column (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    params = load_params()
    try:
        if args.command == "export":
            export_queue(params, args.out_dir, base_url=args.base_url)
        else:
            import_export(params, args.export, annotators=dict(args.annotator))
    except LabelStudioFormatError as err:  # a wrong file is one line, not a traceback
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
