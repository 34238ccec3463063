"""The evaluate stage's report: ``report.md`` (figures as PNG files next to it) and a self-contained
``report.html`` (the same content, figures base64-embedded, every text cell HTML-escaped).

The report is built once as a list of blocks (heading, paragraph, table, figure) and rendered twice, so the two
files cannot disagree.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.evaluation.checks import checks_blocks
from tasks.io import atomic_write_bytes, atomic_write_text

Block = tuple[str, Any]  # ("h1"|"h2"|"p", text) | ("table", DataFrame) | ("img", (name, png bytes, caption))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _pm(mean: float, lo: float, hi: float) -> str:
    if math.isnan(lo):
        return _fmt(mean)
    return f"{mean:.4f} [{lo:.4f}, {hi:.4f}]"


# ------------------------------------------------------------------------------------------------- figures


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def confusion_png(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """A labelled confusion-matrix image (rows: actual, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=range(len(classes)))
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="actual", title=title)
    return _png(fig)


def learning_curves_png(histories: dict[str, pd.DataFrame]) -> bytes:
    """Train/val loss and val balanced accuracy per epoch for each named history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, h in histories.items():
        if h.empty:
            continue
        ax1.plot(h["epoch"], h["train_loss"], label=f"{name} train")
        ax1.plot(h["epoch"], h["val_loss"], "--", label=f"{name} val")
        ax2.plot(h["epoch"], h["val_balanced_accuracy"], label=name)
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="balanced accuracy", title="validation balanced accuracy", ylim=(0, 1.02))
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return _png(fig)


def sample_grid_png(real: Any, synth: Any, classes: Sequence[str], per_class: int) -> bytes:
    """Per class, a row of real images above a row of synthetic ones (``EvalSet``-like: ``images``, ``y``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for i, c in enumerate(classes) for r in ((f"{c} real", real, i), (f"{c} synthetic", synth, i))]
    fig, axes = plt.subplots(len(rows), per_class, figsize=(per_class * 0.9, len(rows) * 1.0), squeeze=False)
    for r, (label, data, cls) in enumerate(rows):
        imgs = data.images[data.y == cls][:per_class]
        for j in range(per_class):
            ax = axes[r][j]
            ax.axis("off")
            if j < len(imgs):
                img = imgs[j].permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(label, fontsize=7, loc="left")
    return _png(fig)


# ------------------------------------------------------------------------------------------------ renderers


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for kind, val in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + val)
        elif kind == "p":
            out.append(val)
        elif kind == "table":
            cols = [str(c) for c in val.columns]
            out.append("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
            out[-1] += "".join("\n| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |"
                               for row in val.itertuples(index=False))
        elif kind == "img":
            name, _, caption = val
            out.append(f"![{caption}](figures/{name})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: Sequence[Block], title: str) -> str:
    e = html.escape
    body: list[str] = []
    for kind, val in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(val)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(val)}</p>")
        elif kind == "table":
            head = "".join(f"<th>{e(str(c))}</th>" for c in val.columns)
            rows = "".join("<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row) + "</tr>"
                           for row in val.itertuples(index=False))
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            name, png, caption = val
            b64 = base64.b64encode(png).decode("ascii")
            body.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{b64}">'
                        f"<figcaption>{e(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


# --------------------------------------------------------------------------------------------------- content


def _arms_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = [{"backbone": a["backbone"], "arm": a["arm"], "split": a["split"], "seeds": a["n_seeds"],
             **{m: _pm(a[f"{m}_mean"], a[f"{m}_low"], a[f"{m}_high"])
                for m in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")}} for a in summary["arms"]]
    return pd.DataFrame(rows)


def _paired_table(summary: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"backbone": d["backbone"], "split": d["split"], "metric": d["metric"],
                          "seeds": d["n_seeds"], "retrained − baseline": _pm(d["diff_mean"], d["diff_low"],
                                                                              d["diff_high"]),
                          "verdict": d["verdict"]} for d in summary["paired"]])


def build_blocks(summary: dict[str, Any], figures: list[tuple[str, bytes, str]]) -> list[Block]:
    """The report's content, from evaluate's summary.json object and the rendered figures."""
    h, conf = summary["headline"], int(round(100 * summary["confidence"]))
    test_diff = next(d for d in summary["paired"] if d["split"] == "test" and d["backbone"] == summary["backbone"])
    blocks: list[Block] = [
        ("h1", "synthloop report: did synthetic data help?"),
        ("p", f"Answer ({summary['backbone']}, held-out real test set, {len(summary['seeds'])} seeds): "
              f"{test_diff['verdict']}. Test balanced accuracy real only {h['baseline_test_balanced_accuracy_mean']:.4f}"
              f" vs real + synthetic {h['retrained_test_balanced_accuracy_mean']:.4f}; paired difference "
              f"{h['paired_diff_test_balanced_accuracy']:+.4f} ({conf}% CI [{h['paired_diff_test_low']:+.4f}, "
              f"{h['paired_diff_test_high']:+.4f}])."),
        ("p", f"Data: {summary['n_train_real']} real train, {summary['n_val']} real val (early stopping only), "
              f"{summary['n_test']} real test images (used by this stage only); {summary['n_synthetic_used']} "
              f"reviewed synthetic images used of {summary['n_synthetic_reviewed_usable']} accepted/corrected. "
              f"Seeds: {summary['seeds']}. Intervals: {conf}% t-distribution over seeds; the paired difference is "
              "taken per seed (same seed, same recipe, only the training data differ)."),
        ("h2", "Backbone × arm × split (mean [CI] over seeds)"), ("table", _arms_table(summary)),
        ("h2", "Paired difference: real + synthetic − real only"), ("table", _paired_table(summary)),
        ("h2", "Stage models on the test set (seed of the pipeline)"),
        ("table", pd.DataFrame([{"model": arm, **m} for arm, m in summary["stage_models_test"].items()])),
        ("h2", "Synthetic vs real image quality"),
        ("p", f"Feature extractor: {summary['fidelity_extractor']}. Synthetic = the reviewed images retrain used "
              "(labelled by the reviewers' final label); real = the held-out test images. Lower FID/KID is closer; "
              "precision = share of synthetic images inside the real manifold, recall = the reverse. — = set too "
              "small for the statistic."),
        ("table", pd.DataFrame(summary["fidelity"])),
        *checks_blocks(summary),
        ("h2", "Review cost"),
        ("p", f"{summary['review_cost']['corrections_per_100']:.1f} corrections and "
              f"{summary['review_cost']['rejections_per_100']:.1f} rejections per 100 generated (kept) images "
              "(a correction changes the baseline classifier's label). Generator fidelity: "
              f"{100 * summary['review_cost'].get('intended_agreement', float('nan')):.1f}% of the kept images "
              "were given the class they were generated for."),
        ("table", pd.DataFrame([summary["review_cost"]])),
        ("h2", "Figures"),
    ]
    blocks += [("img", f) for f in figures]
    return blocks


def write_report(folder: Path, *, params: Any, summary: dict[str, Any], stage_models: dict[str, Any], stage_proba: dict[str, np.ndarray], test_set: Any, real_train: Any,
                 synth_set: Any) -> tuple[Path, Path]:
    """Render figures, ``report.md`` and ``report.html`` into ``folder``; return the two report paths."""
    classes = list(params.classes)
    figures = [(f"confusion_{arm}.png",
                confusion_png(test_set.y, proba.argmax(1), classes, f"{arm} (test)"), f"Confusion matrix, {arm} stage model, test")
               for arm, proba in stage_proba.items()]
    figures.append(("learning_curves.png", learning_curves_png({a: r.history for a, r in stage_models.items()}),
                    "Learning curves of the stage models"))
    figures.append(("samples.png", sample_grid_png(real_train, synth_set, classes, params.evaluate.grid_per_class),
                    "Per class: real (train) vs synthetic (used in retrain)"))
    folder = Path(folder)
    for name, png, _ in figures:
        atomic_write_bytes(folder / "figures" / name, png)
    blocks = build_blocks(summary, figures)
    md, page = folder / "report.md", folder / "report.html"
    atomic_write_text(md, render_markdown(blocks))
    atomic_write_text(page, render_html(blocks, "synthloop report"))
    return md, page
