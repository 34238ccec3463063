"""How close the generated set is to the user's domain, for a finished loop (any data set, no reference labeler).

* FID, k-NN precision and recall (Kynkäänniemi et al., k = ``evaluate.fid.prc_neighborhood``) of every ``ok``
  generated image against the real **val** images, overall and per class, in the frozen baseline classifier's
  penultimate feature space (``tasks.evaluation.fidelity``; not comparable with Inception FIDs). Val, not train:
  the classifier whose features are used was fitted on train. Caveat: the tiny base was pretrained on trainval
  (train + val, labels unused), so val is not unseen by the generator; evaluate's fidelity table (against the
  test split, which no stage but evaluate reads) is the unbiased one.
* Class fidelity per class: the share of a class's generated images that the real-trained baseline classifier
  puts in the intended class (``data/predict/predictions.csv``).

Usage (in a project after `make run`):  python benchmarks/bench_domain.py [--project .] [--out domain.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tasks  # noqa: E402,F401  (torchvision guard before torch)


def measure(project: Path) -> dict:
    """The numbers above for the loop finished in ``project`` (its params.yaml and data/)."""
    import pandas as pd

    from tasks.classify.models import MODEL_FILE
    from tasks.evaluation.fidelity import EXTRACTOR_NAME, _register_extractor, fidelity
    from tasks.evaluation.sets import eval_set
    from tasks.params import load_params
    from tasks.tables import read_generated, read_imagefolder, read_predictions

    os.chdir(project)  # params paths are relative to the project, as for DVC
    params = load_params()
    classes = params.classes
    real = eval_set(read_imagefolder(params.paths.caption / "val", classes), params)
    gen = read_generated(params.paths.generate, classes)
    synth = eval_set(pd.DataFrame({"path": gen["path"], "label": gen["intended_label"]}), params)
    _register_extractor()
    weights = params.paths.baseline / MODEL_FILE
    k = params.evaluate.fid.prc_neighborhood
    rows = {"all": fidelity(synth.images, real.images, extractor=EXTRACTOR_NAME, weights=weights,
                            prc_neighborhood=k) | {"n_generated": len(synth.y), "n_real_val": len(real.y)}}
    preds = read_predictions(params.paths.predict, classes)
    for i, c in enumerate(classes):
        s, r = synth.images[synth.y == i], real.images[real.y == i]
        mine = preds[preds["intended_label"] == c]
        rows[c] = fidelity(s, r, extractor=EXTRACTOR_NAME, weights=weights, prc_neighborhood=k) | {
            "n_generated": int(len(s)), "n_real_val": int(len(r)),
            "class_fidelity": float((mine["pred_label"] == c).mean()) if len(mine) else float("nan")}
    rows["all"]["class_fidelity"] = float((preds["pred_label"] == preds["intended_label"]).mean())
    return {"classes": list(classes), "dataset_source": params.dataset.source, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    out = args.out.resolve() if args.out else None
    result = measure(args.project.resolve())
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
