"""Budget grouping and isoFLOP parabolas, shared by Chinchilla's approach 2 (:func:`scaling.analysis.allocation.
fit_isoflop`) and the context law (:func:`scaling.analysis.context_law.fit_context_law`): points grouped into FLOP
budgets, a parabola in log x per budget, its vertex, and the bootstrap replicates of such a fit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from scaling.analysis.fit_base import _array


def _group_by_budget(C: np.ndarray, budgets: Any, rtol: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Assign points to FLOP budgets: returns (budget values [m], group index per point [n], -1 = none).

    budgets=None: sorted FLOP values split wherever consecutive values differ by more than a factor (1 + rtol);
    a group's budget is the geometric mean of its values. Given budgets: each point goes to the nearest budget
    within a factor (1 + rtol), and the budget value is the one given.
    """
    logC = np.log(C)
    tol = math.log1p(rtol)
    if budgets is None:
        order = np.argsort(logC)
        splits = np.flatnonzero(np.diff(logC[order]) > tol) + 1
        group = np.empty(len(C), dtype=int)
        values = []
        for g, chunk in enumerate(np.split(order, splits)):
            group[chunk] = g
            values.append(math.exp(logC[chunk].mean()))
        return np.asarray(values), group
    b = np.atleast_1d(_array(name, np.atleast_1d(budgets)))
    if len(np.unique(b)) != len(b):
        raise ValueError(f"{name}: budgets must be distinct, got {b.tolist()}")
    dist = np.abs(logC[:, None] - np.log(b)[None, :])
    group = np.argmin(dist, axis=1)
    group[dist[np.arange(len(C)), group] > tol] = -1
    return b, group


def _parabola(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Least-squares y = c0 + c1 u + c2 u^2 in u = x - mean(x) (for conditioning).

    Returns (coefficients [c0, c1, c2] in x itself, i.e. y = c0 + c1 x + c2 x^2; vertex x; value at the vertex).
    The vertex is NaN when c2 <= 0 (no minimum).
    """
    m = x.mean()
    c2, c1, c0 = np.polyfit(x - m, y, 2)
    coef = np.array([c0 - c1 * m + c2 * m * m, c1 - 2 * c2 * m, c2])
    if c2 <= 0:
        return coef, float("nan"), float("nan")
    u = -c1 / (2 * c2)
    return coef, float(u + m), float(c0 + c1 * u + c2 * u * u)


VERTEX_REACH = math.log(10.0)  # a vertex further than this (in log N) outside the sizes trained is not a minimum found


def _budget_vertices(x, y, group, n_groups):
    """Parabola vertex per budget group; NaN where the group is degenerate or concave, or where the vertex lies more
    than a factor 10 outside the sizes trained (a nearly flat parabola: no bracketed minimum)."""
    vx = np.full(n_groups, np.nan)
    vy = np.full(n_groups, np.nan)
    coefs = np.full((n_groups, 3), np.nan)
    for g in range(n_groups):
        sel = group == g
        if len(np.unique(x[sel])) < 3:
            continue
        coefs[g], vx[g], vy[g] = _parabola(x[sel], y[sel])
        if not x[sel].min() - VERTEX_REACH <= vx[g] <= x[sel].max() + VERTEX_REACH:
            vx[g] = vy[g] = np.nan
    return coefs, vx, vy


def _check_groups(x, group, budget_values, need, axis_name, fn):
    """Every used budget needs `need` distinct x values; a clear error lists the offenders."""
    bad = [f"{budget_values[g]:.4g} ({len(np.unique(x[group == g]))})" for g in range(len(budget_values))
           if len(np.unique(x[group == g])) < need]
    if bad:
        raise ValueError(f"{fn}: each budget needs at least {need} distinct {axis_name} values to fit a parabola; "
                         f"budgets (distinct {axis_name}) below that: {', '.join(bad)}. Pass budgets= to select "
                         "budgets or adjust rtol")


def _bootstrap_within_groups(rng, group, n_groups):
    """Indices resampled with replacement inside each group (group sizes kept)."""
    idx = []
    for g in range(n_groups):
        members = np.flatnonzero(group == g)
        idx.append(rng.choice(members, size=len(members), replace=True))
    return np.concatenate(idx)


def _replicate(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int,
               coefs: np.ndarray, loss_sd: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One bootstrap replicate of a per-budget parabola fit: (indices of the points it uses, their losses).

    ``loss_sd`` None: the points resampled with replacement within each budget (group sizes kept), with their
    measured losses. Given (one value per point): every point kept at its own x, and its loss drawn anew around its
    budget's fitted parabola (``coefs`` [n_groups, 3], as :func:`_budget_vertices` returns) with that standard
    deviation: a parametric bootstrap. The sizes (or contexts) of an isoFLOP ladder are its design, not a sample;
    what varies from one repetition of the experiment to the next is each run's loss. With three points a budget,
    resampling keeps all three distinct in only 2 of 9 draws, so a surviving replicate is the data again and the
    interval is far too narrow (68% coverage at a nominal 95%, tests/analysis/test_few_sizes.py)."""
    if loss_sd is None:
        idx = _bootstrap_within_groups(rng, group, n_groups)
        return idx, y[idx]
    idx = np.flatnonzero(group >= 0)
    c = coefs[group[idx]]
    fitted = c[:, 0] + c[:, 1] * x[idx] + c[:, 2] * x[idx] ** 2
    return idx, fitted + rng.standard_normal(len(idx)) * loss_sd[idx]
