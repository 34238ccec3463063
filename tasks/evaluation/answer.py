"""The report's answer in words and tables, computed from evaluate's summary: the recommendation paragraph, the
arms and paired-difference tables, the curve tables. Nothing here is typed by hand: change a number, the words
follow.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tasks.evaluation.stats import REFERENCE

REVIEWED, INTENDED, PSEUDO = "real+synthetic_reviewed", "real+synthetic_intended", "real+synthetic_pseudo"


def pm(mean: float, lo: float, hi: float, signed: bool = False) -> str:
    """``mean [low, high]`` (just the mean when there is no interval)."""
    f = "{:+.4f}" if signed else "{:.4f}"
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if lo is None or math.isnan(lo):
        return f.format(mean)
    return f"{f.format(mean)} [{f.format(lo)}, {f.format(hi)}]"


def _test_rows(summary: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [r for r in summary[key] if r["split"] == "test" and r["backbone"] == summary["backbone"]]


def _comparison_sentence(row: dict[str, Any] | None, other: str) -> str:
    if row is None:
        return ""
    return (f"{REVIEWED} − {other}: {pm(row['diff_mean'], row['diff_low'], row['diff_high'], True)} "
            f"(paired t-test p = {row['p_value']:.3g}: {row['verdict']})")


def recommendation(summary: dict[str, Any]) -> str:
    """One paragraph: the arm to use, its gain over ``real`` (CI, Holm-adjusted verdict), and whether the review
    beat the no-human arms, naming the review source when it was not a person."""
    conf = int(round(100 * summary["confidence"]))
    arms = {r["arm"]: r for r in _test_rows(summary, "arms")}
    paired = {r["arm"]: r for r in _test_rows(summary, "paired")}
    helped = [a for a, d in paired.items() if d["verdict"] == "helped"]
    best = max(helped, key=lambda a: paired[a]["diff_mean"]) if helped else None
    top = max(arms, key=lambda a: arms[a]["balanced_accuracy_mean"])
    n = summary["repeats"]
    lead = f"Answer ({summary['backbone']}, held-out real test set, {n} repeats) — recommendation:"
    if best is not None:
        d = paired[best]
        text = (f"{lead} use {best}. Over {n} repeats (seed, synthetic draw and train/val split vary) its "
                f"test balanced accuracy is {arms[best]['balanced_accuracy_mean']:.4f} vs "
                f"{arms[REFERENCE]['balanced_accuracy_mean']:.4f} for {REFERENCE}: a paired gain of "
                f"{pm(d['diff_mean'], d['diff_low'], d['diff_high'], True)} ({conf}% CI), significant after "
                f"Holm's correction over {len(paired)} arms (p = {d['p_holm']:.3g}).")
    else:
        d = paired.get(top)
        gain = "" if d is None else \
            f" (best point estimate {top}: {pm(d['diff_mean'], d['diff_low'], d['diff_high'], True)})"
        text = (f"{lead} keep {REFERENCE}. Over {n} repeats no arm beat {REFERENCE} significantly after "
                f"Holm's correction{gain}; on this data set the extra arms did not pay for their cost.")
    value = summary.get("review_value", {})
    parts = [s for s in (_comparison_sentence(value.get(INTENDED), INTENDED),
                         _comparison_sentence(value.get(PSEUDO), PSEUDO)) if s]
    if parts:
        worth = any(value[k]["verdict"] == "helped" for k in value)
        text += (f" Was the review worth it? {'Yes' if worth else 'Not measurably'}: " + "; ".join(parts) + ".")
    source = summary["review_source"]
    if source["kind"] != "human":
        text += f" Review source: {source['text']}."
    return text


def arms_table(summary: dict[str, Any], split: str) -> pd.DataFrame:
    """Mean [CI] of each metric per backbone × arm on ``split``."""
    return pd.DataFrame([{"backbone": a["backbone"], "arm": a["arm"], "repeats": a["n_repeats"],
                          **{m: pm(a[f"{m}_mean"], a[f"{m}_low"], a[f"{m}_high"]) for m in summary["metrics"]}}
                         for a in summary["arms"] if a["split"] == split])


def paired_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Each arm − real: mean [CI], p, Holm-adjusted p, verdict, per backbone × split."""
    return pd.DataFrame([{"backbone": d["backbone"], "split": d["split"], "arm": d["arm"], "repeats": d["n_repeats"],
                          f"arm − {REFERENCE} ({d['metric']})": pm(d["diff_mean"], d["diff_low"], d["diff_high"],
                                                                   True),
                          "p": d["p_value"], "p (Holm)": d["p_holm"], "verdict": d["verdict"]}
                         for d in summary["paired"]])


def curve_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A curve's points for the report: x, test balanced accuracy and the gain over real [CI]."""
    df = pd.DataFrame(rows)
    x = df.columns[0]
    return pd.DataFrame({x: df[x].round(1), "point": df["point"], "repeats": df["n_repeats"],
                         "balanced_accuracy": df["balanced_accuracy_mean"],
                         f"gain over {REFERENCE}": [pm(m, lo, hi, True) for m, lo, hi in
                                                    zip(df["gain_mean"], df["gain_low"], df["gain_high"])]})


def fid_sentence(summary: dict[str, Any]) -> str:
    """Which features FID/KID used, and, without Inception weights, that the values are not published-FID values."""
    text = f"Feature extractor: {summary['fidelity_extractor']}."
    if not summary.get("fid_inception"):
        text += (" No Inception weights were available (evaluate.fid.inception_weights), so FID and KID here are "
                 "computed in the baseline classifier's feature space: they compare synthetic with real images of "
                 "this data set, run against run, and are not comparable with published FID values.")
    return text
