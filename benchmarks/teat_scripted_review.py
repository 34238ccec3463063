"""A scripted reviewer for the teat-end sample set — SIMULATED, not a person — for measuring the loop end to end
where nobody is at hand to review (benchmarks/RESULTS.md, "the arms on a second data set").

It trains the loop's own classifier recipe (``baseline``) on extra procedural teat photos drawn with seeds the data
set never used (``tasks.samples.teats --seed 11/12``), reports its balanced accuracy on the project's real test
split, labels the review items a person owes (budget + audit, queue order) and writes them as a Label Studio JSON
export. Import it so the report calls it simulated and names it (tasks/evaluation/source.py):

    python -m tasks.review.labelstudio export /tmp/ls
    python benchmarks/teat_scripted_review.py --tasks /tmp/ls/tasks.json --out /tmp/ls/export.json
    python -m tasks.review.labelstudio import /tmp/ls/export.json --annotator "1=scripted-oracle (simulated)"
    dvc repro

Run it in the project (cwd) whose ``paths.raw`` holds the teat sample set; only meaningful for that set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
import tasks  # noqa: E402,F401  (torchvision guard before torch)


def _table(folder: Path):
    import pandas as pd

    return pd.DataFrame([{"path": str(p), "label": p.parent.name, "source": "real"}
                         for p in sorted(folder.rglob("*.png"))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=Path, required=True, help="tasks.json of `tasks.review.labelstudio export`")
    parser.add_argument("--out", type=Path, required=True, help="Label Studio JSON export to write")
    parser.add_argument("--photos", type=Path, default=Path("/tmp/teat-oracle"), help="extra photos (made once)")
    parser.add_argument("--per-class", type=int, default=400, help="extra training photos per score")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    from tasks.classify.data import load_images
    from tasks.classify.train import balanced_accuracy, predict_proba, train_classifier
    from tasks.params import load_params
    from tasks.review.store import open_store

    params = load_params()
    classes, channels, size = list(params.classes), params.ingest.channels, params.ingest.image_size
    for split, seed, n in (("train", 11, args.per_class), ("val", 12, max(args.per_class // 4, 1))):
        if not (args.photos / split).is_dir():
            subprocess.run([sys.executable, "-m", "tasks.samples.teats", "--out", str(args.photos / split),
                            "--per-class", str(n), "--seed", str(seed)], check=True)
    train, val = _table(args.photos / "train"), _table(args.photos / "val")
    result = train_classifier(params.baseline, train, val, classes=classes, channels=channels, image_size=size,
                              seed=5)
    test_dir = params.paths.ingest / "test"
    test = pd.read_csv(test_dir / "manifest.csv")
    x = load_images([str(test_dir / f) for f in test["file_name"]], channels, size)
    y = np.array([classes.index(label) for label in test["label"]])
    accuracy = balanced_accuracy(y, predict_proba(result.model, x).argmax(1))

    store = open_store(params, predictions=params.paths.predict, generated=params.paths.generate,
                       out_dir=params.paths.review)
    owed = store.required_waiting()
    by_name = {t["data"]["file_name"]: t for t in json.loads(args.tasks.read_text(encoding="utf-8"))}
    missing = [f for f in owed if f not in by_name]
    if missing:
        raise SystemExit(f"{len(missing)} owed items are not in {args.tasks} (e.g. {missing[0]}): export again")
    pred = predict_proba(result.model, load_images([str(params.paths.generate / f) for f in owed], channels,
                                                   size)).argmax(1)
    export = []
    for i, (name, p) in enumerate(zip(owed, pred), start=1):
        task = {**by_name[name], "id": i}
        task["annotations"] = [{"id": i, "completed_by": 1, "lead_time": 0.0,
                                "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                            "value": {"choices": [classes[p]]}}]}]
        export.append(task)
    args.out.write_text(json.dumps(export), encoding="utf-8")
    agree = float(np.mean([classes[p] == store.items[f]["intended_label"] for f, p in zip(owed, pred)])) if owed \
        else None  # nothing owed: no agreement to measure
    print(json.dumps({"scripted_reviewer_train_images": len(train),
                      "scripted_reviewer_test_balanced_accuracy": accuracy, "owed_items": len(owed),
                      "agrees_with_intended": agree}, indent=1))


if __name__ == "__main__":
    main()
