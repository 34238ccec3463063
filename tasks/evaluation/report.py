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

from tasks.evaluation import answer
from tasks.evaluation.checks import checks_blocks
from tasks.io import atomic_write_bytes, atomic_write_text

Block = tuple[str, Any]  # ("h1"|"h2"|"p", text) | ("table", DataFrame) | ("img", (name, png bytes, caption))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4f}"
    return str(v)


# ------------------------------------------------------------------------------------------------- figures


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (no timestamp metadata: the same figure gives the same bytes); closes it."""
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
    return png_bytes(fig)


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
    return png_bytes(fig)


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
    return png_bytes(fig)


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


def build_blocks(summary: dict[str, Any], figures: list[tuple[str, bytes, str]]) -> list[Block]:
    """The report's content, from evaluate's summary.json object and the rendered figures. The first screen:
    who reviewed, then the recommendation (both within the first lines of report.md)."""
    conf = int(round(100 * summary["confidence"]))
    curve_figs = {name: f for f in figures for name in ("gain_synthetic.png", "gain_review.png") if f[0] == name}
    blocks: list[Block] = [
        ("h1", "synthloop report: did synthetic data help, and was the review worth it?"),
        ("p", f"Who reviewed: {summary['review_source']['text']}."),
        ("p", f"Run: {summary.get('params_layers', 'params.yaml')}; trained on "
              f"{summary.get('device', 'an unrecorded device')}."),
        ("p", answer.recommendation(summary)),
        ("p", f"Data: {summary['n_train_real']} real train, {summary['n_val']} real val (early stopping only), "
              f"{summary['n_test']} real test images (read by this stage only). Synthetic pools: "
              + ", ".join(f"{k} {v}" for k, v in summary["pool_sizes"].items())
              + f"; each synthetic arm draws up to {summary['n_synthetic_used']} of them per repeat. "
              f"{summary['repeats']} repeats: repeat r uses seed + r for the classifier, the synthetic draw and a "
              "re-drawn stratified, group-aware train/val split (repeat 0 = the pipeline's split and stage "
              f"models); the test split never moves. Intervals: {conf}% t-intervals over repeats; the paired "
              "difference is taken per repeat; verdicts use the paired t-test with Holm's correction over the arms."),
        ("h2", "Arms on the test set (mean [CI] over repeats)"), ("table", answer.arms_table(summary, "test")),
        ("h2", "Paired difference: each arm − real"), ("table", answer.paired_table(summary)),
    ]
    for group, title in (("ratio", "Gain vs synthetic images used"), ("effort", "Gain vs review decisions")):
        if group in summary["curves"]:
            name = "gain_synthetic.png" if group == "ratio" else "gain_review.png"
            blocks += [("h2", f"{title} ({summary['curve_repeats']} repeats)"),
                       ("table", answer.curve_frame(summary["curves"][group]))]
            if name in curve_figs:
                blocks.append(("img", curve_figs[name]))
    blocks += [
        ("h2", "Arms on the validation set (mean [CI] over repeats)"), ("table", answer.arms_table(summary, "val")),
        ("h2", "Stage models on the test set (repeat 0)"),
        ("table", pd.DataFrame([{"model": arm, **{k: v for k, v in m.items()}}
                                for arm, m in summary["stage_models_test"].items()])),
        ("h2", "Synthetic vs real image quality"),
        ("p", answer.fid_sentence(summary) + " Synthetic = the reviewed images retrain used (labelled by the "
              "reviewers' final label); real = the held-out test images. Lower FID/KID is closer; precision = share "
              "of synthetic images inside the real manifold, recall = the reverse. — = set too small."),
        ("table", pd.DataFrame(summary["fidelity"])),
        *checks_blocks(summary),
        ("h2", "Review cost"),
        ("p", f"{summary['review_cost']['corrections_per_100']:.1f} corrections and "
              f"{summary['review_cost']['rejections_per_100']:.1f} rejections per 100 generated (kept) images "
              "(a correction changes the baseline classifier's label). Generator fidelity: "
              f"{100 * summary['review_cost'].get('intended_agreement', float('nan')):.1f}% of the kept images "
              f"were given the class they were generated for. Review source: {summary['review_source']['text']}."),
        ("table", pd.DataFrame([summary["review_cost"]])),
        ("h2", "Figures"),
    ]
    blocks += [("img", f) for f in figures if f[0] not in curve_figs]
    return blocks


def write_report(folder: Path, *, params: Any, summary: dict[str, Any], stage_models: dict[str, Any],
                 stage_proba: dict[str, np.ndarray], test_set: Any, real_train: Any,
                 synth_set: Any) -> tuple[Path, Path]:
    """Render figures, ``report.md`` and ``report.html`` into ``folder``; return the two report paths."""
    classes = list(params.classes)
    figures = [(f"confusion_{arm}.png",
                confusion_png(test_set.y, proba.argmax(1), classes, f"{arm} (test)"),
                f"Confusion matrix, {arm} stage model, test")
               for arm, proba in stage_proba.items()]
    figures.append(("learning_curves.png", learning_curves_png({a: r.history for a, r in stage_models.items()}),
                    "Learning curves of the stage models"))
    figures.append(("samples.png", sample_grid_png(real_train, synth_set, classes, params.evaluate.grid_per_class),
                    "Per class: real (train) vs synthetic (used in retrain)"))
    from tasks.evaluation.curves import curve_png

    for group, name, title in (("ratio", "gain_synthetic.png", "Test gain over real vs synthetic images used"),
                               ("effort", "gain_review.png", "Test gain over real vs review decisions applied")):
        if group in summary["curves"]:
            figures.append((name, curve_png(pd.DataFrame(summary["curves"][group]), group, title), title))
    folder = Path(folder)
    for name, png, _ in figures:
        atomic_write_bytes(folder / "figures" / name, png)
    blocks = build_blocks(summary, figures)
    md, page = folder / "report.md", folder / "report.html"
    atomic_write_text(md, render_markdown(blocks))
    atomic_write_text(page, render_html(blocks, "synthloop report"))
    return md, page
