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
from scipy import stats as _stats


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


def welch(se_a: float, n_a: int, se_b: float, n_b: int, level: float = 0.95) -> tuple[float, float]:
    """(Welch-Satterthwaite degrees of freedom, Student t's two-sided ``level`` quantile at them) for the
    difference of two seed means with standard errors ``se_a``, ``se_b`` over ``n_a``, ``n_b`` seeds. With three
    seeds each the quantile is 2.78 (equal spreads) to 4.3: a fixed 2 SE calls 11-15% of equal pairs different
    (simulated, equal and 3x unequal spreads), this 3-5%."""
    parts = [se ** 4 / (n - 1) for se, n in ((se_a, n_a), (se_b, n_b)) if n > 1]
    total = sum(parts)
    dof = (se_a ** 2 + se_b ** 2) ** 2 / total if len(parts) == 2 and total > 0 else math.inf
    return dof, _t_quantile(dof, level)


def _t_quantile(dof: float, level: float) -> float:
    """Student t's two-sided ``level`` quantile at ``dof`` (the normal's at infinite dof)."""
    p = 0.5 + level / 2
    return float(_stats.t.ppf(p, dof) if math.isfinite(dof) else _stats.norm.ppf(p))


def verdict(diff: float, se: float, dof: float = math.inf, level: float = 0.95) -> str:
    """"real" when |diff| is beyond Student t's ``level`` quantile at ``dof`` times ``se`` (Welch's t test with
    :func:`welch`'s dof), "within seed spread" otherwise, "one seed" when se is unknown."""
    if not np.isfinite(se):
        return "one seed"
    return "real" if abs(diff) > _t_quantile(dof, level) * se else "within seed spread"


def compare(a, b) -> str:
    """:func:`verdict` of two :func:`by_point` rows (b - a), at their Welch degrees of freedom."""
    return verdict(*difference(a, b), welch(a["se"], a["n"], b["se"], b["n"])[0])


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
