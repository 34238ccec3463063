"""The two curves of evaluate: test gain over the ``real`` arm vs synthetic images used, and vs review decisions
applied (the review effort curve: what a reviewer's hour buys). Tables for ``dvc plots`` and PNGs for the report.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tasks.evaluation.stats import REFERENCE, t_interval

CURVES = {"ratio": ("n_synthetic", "synthetic images used (reviewed labels)"),
          "effort": ("n_decisions", "review decisions applied (queue order; the rest keep the intended class)")}


def curve_table(results: pd.DataFrame, group: str, confidence: float,
                metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Per point of curve ``group``: x, mean test ``metric`` and its gain over ``real`` (same repeat), with CI."""
    test = results[results["split"] == "test"]
    ref = test[(test["group"] == "arms") & (test["arm"] == REFERENCE)].set_index(["backbone", "repeat"])[metric]
    pts = test[test["group"] == group]
    x_name = CURVES[group][0]
    rows = []
    for name, g in pts.groupby("arm", sort=False):
        gain = (g.set_index(["backbone", "repeat"])[metric] - ref).dropna().to_numpy()
        mean, lo, hi = t_interval(gain, confidence) if len(gain) >= 2 else (float(np.mean(gain)), math.nan,
                                                                             math.nan)
        rows.append({x_name: float(g["x"].mean()), "point": name, "n_repeats": len(gain),
                     f"{metric}_mean": float(g[metric].mean()), "gain_mean": mean, "gain_low": lo, "gain_high": hi})
    return pd.DataFrame(rows).sort_values(x_name, kind="stable").reset_index(drop=True)


def curve_png(table: pd.DataFrame, group: str, title: str) -> bytes:
    """Gain (mean and CI band) vs the curve's x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.evaluation.report import png_bytes

    x_name, x_label = CURVES[group]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.axhline(0, color="grey", lw=0.8)
    ax.plot(table[x_name], table["gain_mean"], "o-")
    if table["gain_low"].notna().all():
        ax.fill_between(table[x_name], table["gain_low"], table["gain_high"], alpha=0.2)
    ax.set(xlabel=x_label, ylabel=f"test balanced accuracy − {REFERENCE}", title=title)
    return png_bytes(fig)
