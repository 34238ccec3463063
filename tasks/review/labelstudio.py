"""Label Studio round trip for the review queue, in Label Studio's documented JSON formats.

Export (``export_queue``): the queue as Label Studio *tasks with pre-annotations* — one task per item with
``data.image`` (an image URL: by default the review server's ``/image/`` route; any base URL where the generate
folder is served works), the item's facts under ``data``, and one entry in ``predictions`` whose ``score`` is the
classifier confidence and whose ``result`` is a ``choices`` result for the predicted class — plus the labeling
config XML (``<Image>`` + ``<Choices>`` with one ``<Choice>`` per class and ``reject``). Label Studio sorts tasks
by prediction score in its Data Manager, so a person can work the least confident items first.

Import (``import_export``): a Label Studio JSON export (a list of tasks, each with
``annotations[].result[].value.choices``, ``completed_by``, ``created_at``/``updated_at``, ``was_cancelled``)
becomes decisions in corrections.csv with audit entries (reviewer ``labelstudio:<completed_by>``). The latest
non-cancelled annotation of a task wins. Each task carries the item ``version`` seen at export time, so an item
that someone changed in the review app after the export is a conflict: it is logged in the audit and skipped.
Each task also carries the image's ``sha256`` at export time: a result for an image that was regenerated since
(other content at the same file name), or from an export without ``sha256``, is refused — logged in the audit as a
conflict, counted as ``image_changed`` and never applied — because the annotator labelled a different picture.

References: https://labelstud.io/guide/predictions (pre-annotation format, ``score``),
https://labelstud.io/guide/task_format (annotated task export format).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from tasks.io import atomic_write_json, atomic_write_text
from tasks.params import Params, load_params
from tasks.review.store import open_store
from tasks.review.status import review_url
from tasks.review.store import APP_VERSION, Conflict, ImageChanged, ReviewStore
from tasks.tables import REJECT

log = logging.getLogger(__name__)

FROM_NAME = "label"
TO_NAME = "image"


class LabelStudioFormatError(ValueError):
    """The file is not a Label Studio JSON export this importer understands; the message says where."""


@dataclass(frozen=True)
class ImportedDecision:
    file_name: str
    label: str
    reviewer: str
    version_seen: int
    annotated_at: str
    sha256: str = ""


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


def _reviewer(completed_by: Any) -> str:
    """Label Studio writes ``completed_by`` as a user id, or (some versions/exports) a user object."""
    if isinstance(completed_by, dict):
        who = completed_by.get("email") or completed_by.get("username") or completed_by.get("id")
    else:
        who = completed_by
    return f"labelstudio:{who if who not in (None, '') else 'unknown'}"


def _choice(annotation: dict[str, Any], where: str) -> str | None:
    for r in annotation.get("result") or []:
        if r.get("type") == "choices" and r.get("from_name", FROM_NAME) == FROM_NAME:
            choices = (r.get("value") or {}).get("choices") or []
            if len(choices) != 1:
                raise LabelStudioFormatError(f"{where}: expected exactly one choice, got {choices}")
            return str(choices[0])
    return None


def parse_export(tasks: Any) -> list[ImportedDecision]:
    """Decisions from a Label Studio JSON export; tasks without a usable annotation are skipped."""
    if not isinstance(tasks, list):
        raise LabelStudioFormatError("a Label Studio JSON export is a list of tasks")
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
                out.append(ImportedDecision(
                    file_name=str(file_name), label=label, reviewer=_reviewer(annotation.get("completed_by")),
                    version_seen=int(task["data"].get("synthloop_version", 0)),
                    annotated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
                    sha256=str(task["data"].get("sha256") or "")))
                break
    return out


def apply_imported(store: ReviewStore, decisions: list[ImportedDecision]) -> dict[str, int]:
    """Record imported decisions in the store; stale ones (changed since export) are audited and skipped.

    A result for an image whose sha256 is not the one exported (regenerated since, or exported without sha256) is
    refused: audited as a conflict, counted in ``image_changed``, logged with the file names.
    """
    counts = {"imported": 0, "conflicts": 0, "unknown": 0, "image_changed": 0}
    by_reviewer: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    changed = []
    for d in decisions:
        if d.file_name not in store.items:
            log.warning("Label Studio task for %s is not in the review queue; skipped", d.file_name)
            counts["unknown"] += 1
        elif d.sha256 != store.items[d.file_name]["sha256"]:
            try:  # audits the refused attempt and raises ImageChanged
                store.decide(d.file_name, d.label, version=d.version_seen, reviewer=d.reviewer,
                             source="labelstudio", action="import", sha256=d.sha256)
            except ImageChanged:
                counts["image_changed"] += 1
                changed.append(d.file_name)
            except Conflict:  # also changed in the app since the export: the version check refuses it first
                counts["conflicts"] += 1
        elif store.versions.get(d.file_name, 0) != d.version_seen:
            try:  # logs the stale attempt in the audit, exactly like a 409 in the app
                store.decide(d.file_name, d.label, version=d.version_seen, reviewer=d.reviewer,
                             source="labelstudio", action="import")
            except Conflict:
                counts["conflicts"] += 1
        else:
            by_reviewer[d.reviewer].append((d.file_name, d.label, d.version_seen))
    for reviewer, choices in by_reviewer.items():
        store.decide_many(choices, reviewer=reviewer, source="labelstudio", action="import",
                          note="imported from Label Studio")
        counts["imported"] += len(choices)
    if changed:
        log.warning("%d Label Studio results refused: the image changed since the export (regenerated) or the "
                    "export has no sha256, so the annotator labelled a different picture; re-export and label "
                    "again: %s", len(changed), changed[:10])
    return counts


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


def import_export(params: Params, export_path: Path) -> dict[str, int]:
    """Import a Label Studio JSON export as review decisions; return counts (imported, conflicts, unknown,
    image_changed)."""
    try:
        tasks = json.loads(Path(export_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LabelStudioFormatError(f"{export_path} is not JSON: {err}") from None
    decisions = parse_export(tasks)
    store = open_store(params, predictions=params.paths.predict, generated=params.paths.generate,
                       out_dir=params.paths.review)
    counts = apply_imported(store, decisions)
    log.info("Label Studio import: %s", counts)
    return counts


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.review.labelstudio export OUT_DIR [--base-url URL]`` / ``import EXPORT.json``."""
    parser = argparse.ArgumentParser(prog="python -m tasks.review.labelstudio", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write tasks.json + labeling_config.xml for the review queue")
    exp.add_argument("out_dir", type=Path)
    exp.add_argument("--base-url", help="URL prefix of the images (default: the review server's /image/)")
    imp = sub.add_parser("import", help="import a Label Studio JSON export as corrections")
    imp.add_argument("export", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    params = load_params()
    if args.command == "export":
        export_queue(params, args.out_dir, base_url=args.base_url)
    else:
        import_export(params, args.export)


if __name__ == "__main__":
    main()
