"""Replicates in study figures: runs that differ only in ``train.seed`` pooled into one point with its spread.

The generic report pools replicates with :func:`scaling.analysis.holdout.seed_spread`; the paper-study figures
(:mod:`scaling.analysis.papers`, :mod:`scaling.analysis.papers_metamorphosis`) need the same numbers per plotted
point, the mean validation curve of a point's seeds, and differences of two points with their standard error.
A point with one seed has ``se`` NaN: its spread is unknown, not zero.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def by_point(runs: pd.DataFrame, keys: list[str], value: str = "final_val_loss") -> pd.DataFrame:
    """One row per distinct ``keys``: ``n`` (seeds), ``mean``, ``std`` (ddof 1), ``se`` (std / sqrt n), ``lo`` and
    ``hi`` (the smallest and largest replicate), ``run_ids`` (a list) and ``seeds`` (a list), rows sorted by
    ``keys``. Runs whose ``value`` is missing are left out."""
    ok = runs[runs[value].notna()]
    rows = []
    for vals, g in ok.groupby(keys, sort=True, dropna=False):
        x = g[value].to_numpy(float)
        mean, se, n = summary(x)
        vals = vals if isinstance(vals, tuple) else (vals,)
        rows.append({**dict(zip(keys, vals, strict=True)), "n": n, "mean": mean, "std": se * math.sqrt(n),
                     "se": se, "lo": float(x.min()), "hi": float(x.max()),
                     "run_ids": list(g["run_id"]), "seeds": [int(s) if pd.notna(s) else 0 for s in g["seed"]]})
    return pd.DataFrame(rows, columns=[*keys, "n", "mean", "std", "se", "lo", "hi", "run_ids", "seeds"])


def summary(values) -> tuple[float, float, int]:
    """(mean, se, n) of replicate values (se NaN for fewer than two; mean NaN for none)."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan"), float("nan"), 0
    se = float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se, len(x)


def difference(a, b) -> tuple[float, float]:
    """(b.mean - a.mean, sqrt(a.se^2 + b.se^2)) of two :func:`by_point` rows; the SE is NaN unless both have
    several seeds."""
    return float(b["mean"] - a["mean"]), float(math.hypot(a["se"], b["se"]))


def verdict(diff: float, se: float, z: float = 2.0) -> str:
    """"beyond 2 SE" when |diff| > z se, "within seed spread" otherwise, "one seed" when se is unknown."""
    if not np.isfinite(se):
        return "one seed"
    return f"beyond {z:g} SE" if abs(diff) > z * se else "within seed spread"


def fmt(mean: float, se: float, n: int, digits: int = 4) -> str:
    """'1.2345 ± 0.0012 (3 seeds)', '1.2345 (1 seed)', or '-' for none."""
    if not n:
        return "-"
    if n > 1 and np.isfinite(se):
        return f"{mean:.{digits}f} ± {se:.{digits}f} ({n} seeds)"
    return f"{mean:.{digits}f} (1 seed)"


def mean_curve(curves: pd.DataFrame, run_ids, col: str = "val_loss", x: str = "step"):
    """(x, mean, lo, hi) of the runs' ``col`` over the ``x`` values every run evaluated (replicates of one point
    evaluate at the same steps); lo and hi are the smallest and largest replicate."""
    c = curves[curves["run_id"].isin(list(run_ids)) & curves[col].notna()]
    table = c.pivot_table(index=x, columns="run_id", values=col, aggfunc="last").dropna()
    if not len(table):
        return (np.array([]),) * 4
    v = table.to_numpy(float)
    return table.index.to_numpy(), v.mean(axis=1), v.min(axis=1), v.max(axis=1)
