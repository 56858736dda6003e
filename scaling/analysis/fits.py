"""Scaling-law fits: Chinchilla approaches 1, 2 and 3, the state-size law and the context-length law.

Every function takes plain 1-D arrays (anything ``numpy.asarray`` accepts: lists, pandas columns), one entry per
point, so they work on any table: a sweep database, a CSV of someone else's runs, synthetic data. Units:

- ``N``: parameters (count), ``D``: training tokens (count), ``C``: training FLOPs (count; Chinchilla's C = 6ND),
- ``S``: recurrent-state size per sequence in elements (``scaling.accounting.state_size``),
- ``context``: training context length in tokens, ``loss``: final loss in nats per token (any positive loss works).

Every fit returns a dataclass (:class:`EnvelopeFit`, :class:`IsoflopFit`, :class:`ParametricFit`,
:class:`StateLawFit`, :class:`ContextLawFit`) with the same parts:

- ``params``: ``{name: value}``, the fitted (and derived) parameters;
- ``ci``: ``{name: (lo, hi)}``, the 2.5 / 97.5 percentiles of the bootstrap replicates (empty when ``bootstrap=0``);
- ``residuals``: ``{name: array}``, observed minus fitted, on the scale the model was fitted on (documented per fit);
- ``data``: ``{name: array}``, the inputs it used plus intermediate per-point / per-budget results;
- ``samples``: ``{name: array [bootstrap]}``, the bootstrap replicates behind ``ci``; ``info``: settings, diagnostics.

``fit.to_json()`` / ``fit.to_dict()`` serialise it (NaN becomes ``null``) and ``type(fit).from_dict(d)`` or
:func:`fit_from_dict` / :func:`fit_from_json` restore it.

Approach 3 follows Epoch AI's replication of the Chinchilla fit (Besiroglu et al. 2024): log L is modelled as
``LSE(a - alpha log N, b - beta log D, e)``, the objective is the Huber loss (delta = 1e-3) of the log-loss residuals
summed over points, and scipy's L-BFGS-B runs from every point of a grid, keeping the best. The state-size law
reuses the same machinery with a state term (and optionally a data term).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize

__all__ = [
    "ContextLawFit",
    "EnvelopeFit",
    "IsoflopFit",
    "ParametricFit",
    "StateLawFit",
    "PARAMETRIC_GRID",
    "STATE_GRID",
    "STATE_GRID_WITH_D",
    "compute_optimal_state",
    "fit_context_law",
    "fit_envelope",
    "fit_from_dict",
    "fit_from_json",
    "fit_isoflop",
    "fit_parametric",
    "fit_state_law",
    "loss_vs_state",
]

CI_PERCENTILES = (2.5, 97.5)

# Epoch AI's grid for approach 3 (5 * 6 * 5 * 6 * 5 = 4500 starts). Keys are the log-space parameters:
# e = log E, a = log A, b = log B.
PARAMETRIC_GRID: dict[str, tuple[float, ...]] = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
# State law L = E + A/N^alpha + B/S^gamma: the same grid with the state term in place of the data term (4500 starts).
STATE_GRID: dict[str, tuple[float, ...]] = {
    "e": PARAMETRIC_GRID["e"],
    "a": PARAMETRIC_GRID["a"],
    "alpha": PARAMETRIC_GRID["alpha"],
    "b": PARAMETRIC_GRID["b"],
    "gamma": PARAMETRIC_GRID["beta"],
}
# With the data term (+ C/D^beta) the full grid would be 135,000 starts; this coarser one has 3 * 9^3 = 2187.
STATE_GRID_WITH_D: dict[str, tuple[float, ...]] = {
    "e": (-1.0, 0.0, 1.0),
    "a": (0.0, 10.0, 20.0),
    "alpha": (0.0, 0.5, 1.0),
    "b": (0.0, 10.0, 20.0),
    "gamma": (0.0, 0.5, 1.0),
    "c": (0.0, 10.0, 20.0),
    "beta": (0.0, 0.5, 1.0),
}


# --------------------------------------------------------------------------------------------------------------
# Input validation


def _array(name: str, x: Any, *, positive: bool = True) -> np.ndarray:
    """``x`` as a finite float64 vector, or a ValueError naming ``name``."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: must be numeric, got {type(x).__name__} ({err})") from None
    if a.ndim != 1:
        raise ValueError(f"{name}: must be a 1-D array (one value per point), got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(f"{name}: {bad.sum()} non-finite value(s) (NaN or inf) at index {idx[:5].tolist()}; "
                         "drop those points first")
    if positive and (a <= 0).any():
        idx = np.flatnonzero(a <= 0)
        raise ValueError(f"{name}: must be > 0 everywhere (fits work in log space), got {a[idx[0]]!r} "
                         f"at index {idx[:5].tolist()}")
    return a


def _arrays(min_points: int, what: str, **xs: Any) -> dict[str, np.ndarray]:
    """Validate several same-length positive vectors; at least ``min_points`` points for ``what``."""
    out = {k: _array(k, v) for k, v in xs.items()}
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length (one value per point), got {lengths}")
    n = next(iter(lengths.values()))
    if n < min_points:
        raise ValueError(f"{what} needs at least {min_points} points, got {n}")
    return out


def _check_bootstrap(bootstrap: Any, seed: Any) -> tuple[int, int]:
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ValueError(f"bootstrap: must be an integer >= 0 (number of resamples), got {bootstrap!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: must be an integer, got {seed!r}")
    return int(bootstrap), int(seed)


def _check_rtol(rtol: Any) -> float:
    if not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise ValueError(f"rtol: must be a number in (0, 1) (relative FLOP tolerance), got {rtol!r}")
    return float(rtol)


# --------------------------------------------------------------------------------------------------------------
# Result containers and JSON


def _jsonable(x: Any) -> Any:
    """Numpy-free, strict-JSON-safe copy of ``x`` (non-finite floats become None)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _to_array(values: Any) -> np.ndarray:
    """Inverse of ``_jsonable`` for an array: None back to NaN (bool and int lists keep their dtype)."""
    def fix(v):
        if isinstance(v, list):
            return [fix(u) for u in v]
        return np.nan if v is None else v
    return np.asarray(fix(values))


def _to_float(v: Any) -> float:
    return float("nan") if v is None else float(v)


@dataclass
class _Fit:
    """Common part of every fit result: see the module docstring."""

    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    residuals: dict[str, np.ndarray]
    data: dict[str, np.ndarray]
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, floats, None for NaN) with a ``kind`` tag for :func:`fit_from_dict`."""
        return {
            "kind": self.kind,
            "params": _jsonable(self.params),
            "ci": _jsonable({k: list(v) for k, v in self.ci.items()}),
            "residuals": _jsonable(self.residuals),
            "data": _jsonable(self.data),
            "samples": _jsonable(self.samples),
            "info": _jsonable(self.info),
        }

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict())``; strict JSON (no NaN literals). kwargs go to json.dumps."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Fit:
        """Rebuild a fit from :meth:`to_dict` output."""
        if cls.kind and d.get("kind") != cls.kind:
            raise ValueError(f"kind: expected {cls.kind!r} for {cls.__name__}, got {d.get('kind')!r}")
        return cls(
            params={k: _to_float(v) for k, v in d["params"].items()},
            ci={k: (_to_float(v[0]), _to_float(v[1])) for k, v in d.get("ci", {}).items()},
            residuals={k: _to_array(v) for k, v in d.get("residuals", {}).items()},
            data={k: _to_array(v) for k, v in d.get("data", {}).items()},
            samples={k: _to_array(v) for k, v in d.get("samples", {}).items()},
            info=dict(d.get("info", {})),
        )

    @classmethod
    def from_json(cls, s: str) -> _Fit:
        return cls.from_dict(json.loads(s))


def _ci_from_samples(samples: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Percentile intervals over the finite replicates of each parameter."""
    ci = {}
    for k, v in samples.items():
        v = np.asarray(v, dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v):
            lo, hi = np.percentile(v, CI_PERCENTILES)
            ci[k] = (float(lo), float(hi))
    return ci


def _power_law_eval(k: float, a: float, C: Any) -> np.ndarray | float:
    out = k * np.asarray(C, dtype=np.float64) ** a
    return float(out) if np.ndim(out) == 0 else out


@dataclass
class _AllocationFit(_Fit):
    """Fits whose result is N_opt = k_N C^a and D_opt = k_D C^b (approaches 1 and 2)."""

    @property
    def a(self) -> float:
        """Exponent of N_opt in C."""
        return self.params["a"]

    @property
    def b(self) -> float:
        """Exponent of D_opt in C."""
        return self.params["b"]

    def N_opt(self, C: Any) -> np.ndarray | float:
        """Compute-optimal parameters at training FLOPs ``C`` (scalar or array)."""
        return _power_law_eval(self.params["k_N"], self.params["a"], C)

    def D_opt(self, C: Any) -> np.ndarray | float:
        """Compute-optimal training tokens at training FLOPs ``C`` (scalar or array)."""
        return _power_law_eval(self.params["k_D"], self.params["b"], C)


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least-squares y = intercept + slope x; returns (slope, intercept, residuals y - fit)."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept), y - (intercept + slope * x)


def _allocation_params(C: np.ndarray, N_opt: np.ndarray, D_opt: np.ndarray) -> tuple[dict[str, float], dict]:
    """Power laws N_opt = k_N C^a, D_opt = k_D C^b by least squares in log space."""
    x = np.log(C)
    a, log_kN, res_N = _fit_line(x, np.log(N_opt))
    b, log_kD, res_D = _fit_line(x, np.log(D_opt))
    params = {"a": a, "b": b, "k_N": math.exp(log_kN), "k_D": math.exp(log_kD)}
    return params, {"log_N_opt": res_N, "log_D_opt": res_D}


# --------------------------------------------------------------------------------------------------------------
# Approach 1: lower envelope of loss vs FLOPs


@dataclass
class EnvelopeFit(_AllocationFit):
    """Chinchilla approach 1 (see :func:`fit_envelope`).

    params: ``a``, ``b``, ``k_N``, ``k_D`` with N_opt = k_N C^a and D_opt = k_D C^b.
    residuals: ``log_N_opt``, ``log_D_opt`` (per frontier point, log observed minus log power law).
    data: the inputs ``N``, ``D``, ``C``, ``loss``; ``on_envelope`` (per point, bool: on its size's lower envelope);
    the frontier ``frontier_C``, ``frontier_N``, ``frontier_D``, ``frontier_loss`` (per FLOP value used in the fit).
    """

    kind: ClassVar[str] = "envelope"


def _pareto_mask(C: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Points whose loss is strictly below that of every point with smaller or equal C (the lower envelope)."""
    order = np.lexsort((loss, C))
    best = np.minimum.accumulate(loss[order])
    prev = np.concatenate([[np.inf], best[:-1]])
    mask = np.zeros(len(C), dtype=bool)
    mask[order[loss[order] < prev]] = True
    return mask


def _envelope_frontier(N, D, C, loss, grid_C, method):
    """Per size lower envelope, then the lowest loss across sizes at each grid FLOP value.

    Returns (on_envelope mask [n], frontier arrays [m] for C, N, D, loss, and at_edge [m]: the winner is the
    smallest or largest of the sizes that compete at that FLOP value).
    """
    on_env = np.zeros(len(N), dtype=bool)
    sizes = np.unique(N)
    env = []  # per size: (log C, log loss, log D) of the envelope sorted by C
    for s in sizes:
        idx = np.flatnonzero(N == s)
        m = _pareto_mask(C[idx], loss[idx])
        on_env[idx[m]] = True
        e = idx[m][np.argsort(C[idx[m]])]
        env.append((np.log(C[e]), np.log(loss[e]), np.log(D[e])))
    log_grid = np.log(grid_C)
    if method == "interpolate":
        # Chinchilla interpolated each run's smoothed curve at log-spaced FLOP values; linear in log C and log loss.
        L = np.full((len(sizes), len(grid_C)), np.inf)
        logD = np.full_like(L, np.nan)
        for i, (lc, ll, ld) in enumerate(env):
            if len(lc) < 2:
                continue  # one point cannot be interpolated; "bin" handles sparse data
            inside = (log_grid >= lc[0]) & (log_grid <= lc[-1])
            L[i, inside] = np.interp(log_grid[inside], lc, ll)
            logD[i, inside] = np.interp(log_grid[inside], lc, ld)
        covered = np.isfinite(L).any(0)
        pick = np.argmin(L, axis=0)
        cols = np.flatnonzero(covered)
        f_C = grid_C[cols]
        f_N = sizes[pick[cols]]
        f_D = np.exp(logD[pick[cols], cols])
        f_L = np.exp(L[pick[cols], cols])
        avail = np.isfinite(L[:, cols])  # [sizes, m]: the sizes whose envelope reaches C_j
        first = np.argmax(avail, axis=0)
        last = len(sizes) - 1 - np.argmax(avail[::-1], axis=0)
        at_edge = (pick[cols] == first) | (pick[cols] == last)
    else:  # "bin": the lowest envelope point in each log-spaced bin, at its own C
        edges = np.concatenate([[log_grid[0] - 0.5 * (log_grid[1] - log_grid[0])],
                                0.5 * (log_grid[1:] + log_grid[:-1]),
                                [log_grid[-1] + 0.5 * (log_grid[-1] - log_grid[-2])]])
        idx = np.flatnonzero(on_env)
        b = np.digitize(np.log(C[idx]), edges) - 1
        rows, edge = [], []
        for j in range(len(grid_C)):
            in_bin = idx[b == j]
            if len(in_bin):
                r = in_bin[np.argmin(loss[in_bin])]
                rows.append(r)
                edge.append(N[r] in (N[in_bin].min(), N[in_bin].max()))
        rows = np.asarray(rows, dtype=int)
        f_C, f_N, f_D, f_L = C[rows], N[rows], D[rows], loss[rows]
        at_edge = np.asarray(edge, dtype=bool)
    return on_env, f_C, f_N, f_D, f_L, at_edge


def fit_envelope(
    N: Any,
    D: Any,
    C: Any,
    loss: Any,
    *,
    n_bins: int = 40,
    C_range: tuple[float, float] | None = None,
    method: str = "interpolate",
    drop_edge_sizes: bool = True,
    bootstrap: int = 0,
    seed: int = 0,
) -> EnvelopeFit:
    """Chinchilla approach 1: the compute-optimal frontier from the lower envelope of loss vs FLOPs.

    Inputs are flat arrays [n], one entry per point: every logged point of every run's loss curve (or only final
    points), labelled by the run's model size ``N`` (parameters); ``D`` is the tokens seen at that point and ``C``
    its training FLOPs (e.g. 6 N D). Points of several runs of the same size (different schedules) pool together.

    1. Each size's lower envelope: its points whose loss is below every point of that size with smaller or
       equal FLOPs (``data["on_envelope"]``).
    2. ``n_bins`` log-spaced FLOP values C_j spanning ``C_range`` (default: the data's range).
       ``method="interpolate"`` (default, as Chinchilla): each size's envelope is interpolated (linear in log C,
       log loss and log D) at the C_j inside its range, and the size with the lowest loss is N_opt(C_j), with its
       interpolated tokens D_opt(C_j); sizes with a single envelope point are skipped. ``method="bin"``: the
       lowest-loss envelope point in each log-spaced bin around C_j, at its own (C, N, D); for sparse data.
    3. ``drop_edge_sizes`` (default): drop FLOP values whose winner is the smallest or largest of the sizes that
       reach them (whose envelope spans C_j, or that have points in the bin), since the optimum may then lie
       outside those sizes (typically: the small models stopped before C_j), a bias that flattens the exponent.
    4. Least squares in log space: log N_opt = log k_N + a log C and log D_opt = log k_D + b log C.

    ``bootstrap=k`` resamples the points with replacement k times and reruns 1-4 with the same FLOP values;
    replicates with fewer than two frontier points are dropped (``info["bootstrap_failed"]``).

    Returns an :class:`EnvelopeFit`. Raises ValueError on bad inputs or when fewer than two frontier points remain.
    """
    x = _arrays(4, "fit_envelope", N=N, D=D, C=C, loss=loss)
    N, D, C, loss = x["N"], x["D"], x["C"], x["loss"]
    bootstrap, seed = _check_bootstrap(bootstrap, seed)
    if method not in ("interpolate", "bin"):
        raise ValueError(f"method: must be one of 'interpolate', 'bin', got {method!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"n_bins: must be an integer >= 2, got {n_bins!r}")
    if len(np.unique(N)) < (3 if drop_edge_sizes else 2):
        raise ValueError(f"N: fit_envelope needs at least {3 if drop_edge_sizes else 2} distinct model sizes "
                         f"(drop_edge_sizes={drop_edge_sizes}), got {len(np.unique(N))}")
    if C_range is None:
        C_range = (float(C.min()), float(C.max()))
    else:
        C_range = tuple(float(v) for v in C_range)
        if len(C_range) != 2 or not (0 < C_range[0] < C_range[1]):
            raise ValueError(f"C_range: must be (low, high) FLOPs with 0 < low < high, got {C_range!r}")
    grid_C = np.geomspace(C_range[0], C_range[1], int(n_bins))

    def frontier(idx):
        on_env, fC, fN, fD, fL, at_edge = _envelope_frontier(N[idx], D[idx], C[idx], loss[idx], grid_C, method)
        if drop_edge_sizes:
            keep = ~at_edge
            fC, fN, fD, fL = fC[keep], fN[keep], fD[keep], fL[keep]
        return on_env, fC, fN, fD, fL

    on_env, fC, fN, fD, fL = frontier(np.arange(len(N)))
    if len(fC) < 2 or len(np.unique(fC)) < 2:
        raise ValueError(f"fit_envelope: only {len(fC)} frontier point(s) in C_range={C_range} (need 2); widen "
                         "C_range, add sizes that bracket the optimum, or try method='bin' / drop_edge_sizes=False")
    params, residuals = _allocation_params(fC, fN, fD)

    rng = np.random.default_rng(seed)
    samples = {k: np.full(bootstrap, np.nan) for k in params}
    failed = 0
    for i in range(bootstrap):
        idx = rng.integers(0, len(N), len(N))
        _, bC, bN, bD, _ = frontier(idx)
        if len(np.unique(bC)) < 2:
            failed += 1
            continue
        p, _ = _allocation_params(bC, bN, bD)
        for k in params:
            samples[k][i] = p[k]

    return EnvelopeFit(
        params=params,
        ci=_ci_from_samples(samples) if bootstrap else {},
        residuals=residuals,
        data={"N": N, "D": D, "C": C, "loss": loss, "on_envelope": on_env,
              "frontier_C": fC, "frontier_N": fN, "frontier_D": fD, "frontier_loss": fL},
        samples=samples if bootstrap else {},
        info={"method": method, "n_bins": int(n_bins), "C_range": list(C_range), "drop_edge_sizes": drop_edge_sizes,
              "bootstrap": bootstrap, "bootstrap_failed": failed, "seed": seed},
    )


# --------------------------------------------------------------------------------------------------------------
# Budget grouping and parabolas (approach 2, context law)


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


def _budget_vertices(x, y, group, n_groups):
    """Parabola vertex per budget group; NaN where the group is degenerate or concave."""
    vx = np.full(n_groups, np.nan)
    vy = np.full(n_groups, np.nan)
    coefs = np.full((n_groups, 3), np.nan)
    for g in range(n_groups):
        sel = group == g
        if len(np.unique(x[sel])) < 3:
            continue
        coefs[g], vx[g], vy[g] = _parabola(x[sel], y[sel])
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


# --------------------------------------------------------------------------------------------------------------
# Approach 2: isoFLOP parabolas


@dataclass
class IsoflopFit(_AllocationFit):
    """Chinchilla approach 2 (see :func:`fit_isoflop`).

    params: ``a``, ``b``, ``k_N``, ``k_D`` with N_opt = k_N C^a and D_opt = k_D C^b.
    residuals: ``loss`` (per point, loss minus its budget's parabola; NaN for points in no budget),
    ``log_N_opt`` and ``log_D_opt`` (per budget, log optimum minus the power law).
    data: inputs ``N``, ``D``, ``C``, ``loss``; ``group`` (per point budget index, -1 = none); per budget
    ``budget_C``, ``budget_N_opt``, ``budget_D_opt``, ``budget_loss_opt``, ``budget_coef`` [m, 3] (loss =
    c0 + c1 log N + c2 log^2 N), ``budget_extrapolated`` (optimum outside the sizes trained) and, with bootstrap,
    ``budget_N_opt_lo`` / ``budget_N_opt_hi`` (95% intervals).
    """

    kind: ClassVar[str] = "isoflop"

    def loss_curve(self, budget_index: int, N: Any) -> np.ndarray:
        """The fitted parabola of budget ``budget_index`` evaluated at sizes ``N``."""
        c0, c1, c2 = self.data["budget_coef"][budget_index]
        x = np.log(np.asarray(N, dtype=np.float64))
        return c0 + c1 * x + c2 * x * x


def fit_isoflop(
    N: Any,
    D: Any,
    C: Any,
    loss: Any,
    *,
    budgets: Any = None,
    rtol: float = 0.05,
    d_opt: str = "flops",
    bootstrap: int = 0,
    seed: int = 0,
) -> IsoflopFit:
    """Chinchilla approach 2: parabolas in log N at fixed FLOPs, then power laws of their minima.

    Inputs are flat arrays [n], one final point per run: parameters ``N``, tokens ``D``, training FLOPs ``C``,
    final ``loss``. Points are grouped into budgets (``budgets=None``: FLOP values within a factor 1 + ``rtol``
    of each other, budget = their geometric mean; or the given ``budgets``, each point to the nearest within
    a factor 1 + ``rtol``, others unused, ``data["group"] == -1``).

    Per budget: least squares loss = c0 + c1 log N + c2 (log N)^2 (needs >= 3 distinct sizes and c2 > 0, else
    ValueError), N_opt = exp(-c1 / (2 c2)). D_opt: ``d_opt="flops"`` (default) uses D_opt = C / (6 N_opt), exact
    when the data follow C = 6ND; ``d_opt="data"`` instead fits log D against log N inside the budget
    (least squares) and evaluates it at N_opt, which follows whatever FLOP accounting produced the runs (e.g. a
    per-token cost with a context or state term). Then log N_opt = log k_N + a log C and log D_opt = log k_D +
    b log C by least squares over budgets (>= 2 budgets). Optima outside the sizes trained are extrapolations;
    they are flagged in ``data["budget_extrapolated"]`` with a warning.

    ``bootstrap=k``: k replicates resampling points with replacement within each budget; a replicate whose
    parabola has no minimum drops that budget, and with fewer than two budgets left it fails
    (``info["bootstrap_failed"]``).
    """
    x = _arrays(3, "fit_isoflop", N=N, D=D, C=C, loss=loss)
    N, D, C, loss = x["N"], x["D"], x["C"], x["loss"]
    bootstrap, seed = _check_bootstrap(bootstrap, seed)
    rtol = _check_rtol(rtol)
    if d_opt not in ("flops", "data"):
        raise ValueError(f"d_opt: must be one of 'flops', 'data', got {d_opt!r}")
    budget_C, group = _group_by_budget(C, budgets, rtol, "budgets")
    m = len(budget_C)
    if m < 2:
        raise ValueError(f"fit_isoflop needs at least 2 FLOP budgets to fit a power law, got {m} "
                         f"({budget_C.tolist()})")
    logN, logD = np.log(N), np.log(D)
    _check_groups(logN, group, budget_C, 3, "N", "fit_isoflop")

    def optima(idx, grp):
        coefs, vx, vy = _budget_vertices(logN[idx], loss[idx], grp, m)
        if d_opt == "flops":
            Dopt = budget_C / (6 * np.exp(vx))
        else:
            Dopt = np.full(m, np.nan)
            for g in range(m):
                sel = grp == g
                if np.isfinite(vx[g]):
                    s, c, _ = _fit_line(logN[idx][sel], logD[idx][sel])
                    Dopt[g] = math.exp(c + s * vx[g])
        return coefs, np.exp(vx), Dopt, vy

    all_idx = np.flatnonzero(group >= 0)
    coefs, Nopt, Dopt, Lopt = optima(all_idx, group[all_idx])
    concave = np.flatnonzero(~np.isfinite(Nopt))
    if len(concave):
        raise ValueError("fit_isoflop: loss is not convex in log N at budget(s) "
                         f"{[f'{budget_C[g]:.4g}' for g in concave]}: the sizes do not bracket the optimum")
    lo = np.array([N[group == g].min() for g in range(m)])
    hi = np.array([N[group == g].max() for g in range(m)])
    extrapolated = (Nopt < lo) | (Nopt > hi)
    if extrapolated.any():
        warnings.warn(f"fit_isoflop: N_opt lies outside the sizes trained at budget(s) "
                      f"{[f'{c:.4g}' for c in budget_C[extrapolated]]}; those optima are extrapolations",
                      stacklevel=2)
    params, residuals = _allocation_params(budget_C, Nopt, Dopt)
    resid_loss = np.full(len(N), np.nan)
    for g in range(m):
        sel = group == g
        resid_loss[sel] = loss[sel] - np.polyval(coefs[g][::-1], logN[sel])
    residuals = {"loss": resid_loss, **residuals}

    rng = np.random.default_rng(seed)
    samples = {k: np.full(bootstrap, np.nan) for k in params}
    boot_N = np.full((bootstrap, m), np.nan)
    failed = 0
    for i in range(bootstrap):
        idx = _bootstrap_within_groups(rng, group, m)
        _, bN, bD, _ = optima(idx, group[idx])
        boot_N[i] = bN
        ok = np.isfinite(bN) & np.isfinite(bD)
        if ok.sum() < 2:
            failed += 1
            continue
        p, _ = _allocation_params(budget_C[ok], bN[ok], bD[ok])
        for k in params:
            samples[k][i] = p[k]

    data = {"N": N, "D": D, "C": C, "loss": loss, "group": group, "budget_C": budget_C, "budget_N_opt": Nopt,
            "budget_D_opt": Dopt, "budget_loss_opt": Lopt, "budget_coef": coefs, "budget_extrapolated": extrapolated}
    if bootstrap:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            data["budget_N_opt_lo"] = np.nanpercentile(boot_N, CI_PERCENTILES[0], axis=0)
            data["budget_N_opt_hi"] = np.nanpercentile(boot_N, CI_PERCENTILES[1], axis=0)
    return IsoflopFit(
        params=params,
        ci=_ci_from_samples(samples) if bootstrap else {},
        residuals=residuals,
        data=data,
        samples=samples if bootstrap else {},
        info={"d_opt": d_opt, "rtol": rtol, "budgets_given": budgets is not None,
              "n_unassigned": int((group < 0).sum()), "bootstrap": bootstrap, "bootstrap_failed": failed,
              "seed": seed},
    )


# --------------------------------------------------------------------------------------------------------------
# Sums of power laws: log L = LSE(c_1 - p_1 log X_1, ..., c_K - p_K log X_K, e), Huber on log residuals


@functools.cache
def _openblas_thread_controls() -> tuple[tuple[Callable, Callable], ...]:
    """(get, set) num-threads functions of every OpenBLAS already loaded in this process (Linux only)."""
    if not os.path.exists("/proc/self/maps") or not hasattr(os, "RTLD_NOLOAD"):
        return ()
    with open("/proc/self/maps") as f:
        paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    controls = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # only libraries already loaded
        except OSError:
            continue
        for prefix in ("openblas", "scipy_openblas"):
            for suffix in ("", "64_"):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    get.restype = ctypes.c_int
                    set_.argtypes = [ctypes.c_int]
                    controls.append((get, set_))
    return tuple(controls)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run L-BFGS-B with single-threaded BLAS.

    scipy's L-BFGS-B calls BLAS/LAPACK on its 5-7 dimensional problem every iteration; with a multithreaded
    OpenBLAS on a busy machine the thread hand-offs made each iteration ~100x slower (7 ms instead of 60 us)
    in our measurements. threadpoolctl does this when installed; otherwise the OpenBLAS symbols are called.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    controls = _openblas_thread_controls()
    saved = [get() for get, _ in controls]
    for _, set_ in controls:
        set_(1)
    try:
        yield
    finally:
        for (_, set_), n in zip(controls, saved, strict=True):
            set_(n)


class _HuberObjective:
    """Weighted Huber objective of log-loss residuals and its gradient, for a batch of parameter vectors.

    theta = [e, c_1, p_1, ..., c_K, p_K]; prediction log L = LSE(c_k - p_k logX_k, e). ``logX`` [K, n] log
    covariates, ``logy`` [n] log losses, ``weights`` [R, n] point weights of R data sets (None: one unweighted
    data set; bootstrap replicates are resampling counts, since a point drawn twice counts twice).
    Objective of data set r: sum_i weights[r, i] * huber_delta(prediction_i - logy_i).
    """

    # Rows per chunk: b * K * n <= this keeps the ~20 temporaries in cache (~1.6x faster than one big batch
    # of 4500 starts x 240 points in our measurement) and bounds memory on large tables.
    _CHUNK_ELEMENTS = 16384

    def __init__(self, logX: np.ndarray, logy: np.ndarray, delta: float, weights: np.ndarray | None = None):
        self.logX, self.logy, self.delta, self.weights = logX, logy, delta, weights

    def __call__(self, ds: np.ndarray, TH: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objectives [b] and gradients [b, 1 + 2K] at TH [b, 1 + 2K], rows of data sets ``ds`` [b]."""
        b = len(TH)
        step = max(1, self._CHUNK_ELEMENTS // self.logX.size)
        if b > step:
            parts = [self(ds[i:i + step], TH[i:i + step]) for i in range(0, b, step)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        X, delta = self.logX, self.delta
        e = TH[:, 0]
        T = TH[:, 1::2, None] - TH[:, 2::2, None] * X  # [b, K, n]
        m = np.maximum(T.max(axis=1), e[:, None])  # [b, n], for a stable log-sum-exp
        W = np.exp(T - m[:, None, :])
        we = np.exp(e[:, None] - m)
        s = W.sum(axis=1) + we
        r = m + np.log(s) - self.logy
        g = np.clip(r, -delta, delta)  # huber'(r)
        if self.weights is not None:
            g *= self.weights[ds]  # the weighted Huber derivative; the loss below needs the unweighted clip
            r -= 0.5 * np.clip(r, -delta, delta)
        else:
            r -= 0.5 * g
        # g (r - g/2) is r^2/2 inside [-delta, delta] and delta (|r| - delta/2) outside: the Huber loss.
        f = np.einsum("bn,bn->b", g, r)
        q = g / s
        Wq = W * q[:, None, :]
        grad = np.empty_like(TH)
        grad[:, 0] = np.einsum("bn,bn->b", we, q)
        grad[:, 1::2] = Wq.sum(axis=2)
        grad[:, 2::2] = -np.einsum("bkn,kn->bk", Wq, X)
        return f, grad


def _predict_log(theta: np.ndarray, logX: np.ndarray) -> np.ndarray:
    T = np.vstack([theta[1::2, None] - theta[2::2, None] * logX, np.full((1, logX.shape[1]), theta[0])])
    m = T.max(axis=0)
    return m + np.log(np.exp(T - m).sum(axis=0))


def _grid_starts(grid: Mapping[str, Sequence[float]] | None, default: Mapping[str, Sequence[float]],
                 order: Sequence[str]) -> np.ndarray:
    """Cartesian product of the init grid as starts [m, len(order)]; missing keys come from ``default``."""
    grid = dict(default) if grid is None else {**default, **grid}
    unknown = set(grid) - set(order)
    if unknown:
        raise ValueError(f"init_grid: unknown key(s) {sorted(unknown)}; accepted keys: {list(order)} "
                         "(e = log E and a, b, c = log of the coefficients)")
    axes = []
    for k in order:
        v = np.atleast_1d(np.asarray(grid[k], dtype=np.float64))
        if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
            raise ValueError(f"init_grid[{k!r}]: must be a non-empty sequence of finite numbers, got {grid[k]!r}")
        axes.append(v)
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


# scipy's L-BFGS-B defaults (as Epoch's replication used them) for the multi-start, and tight ones to polish the
# winner: L-BFGS-B's ftol test is absolute when |f| < 1, and the summed Huber objective is ~1e-3 here.
_LBFGSB_DEFAULT = {"ftol": 2.220446049250313e-09, "gtol": 1e-05, "maxiter": 15000, "maxfun": 15000}
_LBFGSB_POLISH = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000, "maxfun": 20000}
_MAXCOR, _MAXLS = 10, 20  # scipy's defaults


def _lbfgsb_loop(fg: Callable, ds: np.ndarray, X0: np.ndarray, opts: Mapping[str, float]):
    """Reference path: ``scipy.optimize.minimize(method="L-BFGS-B")`` from each row of X0 [m, p] in turn."""
    X = np.empty_like(X0)
    for i, x0 in enumerate(X0):
        def f1(th, d=ds[i:i + 1]):
            f, g = fg(d, th[None, :])
            return float(f[0]), g[0]
        X[i] = minimize(f1, x0, jac=True, method="L-BFGS-B", options={**opts, "maxcor": _MAXCOR, "maxls": _MAXLS}).x
    return X


def _lbfgsb_lockstep(fg: Callable, ds: np.ndarray, X0: np.ndarray, opts: Mapping[str, float]):
    """The same scipy L-BFGS-B routine run from every row of X0 [m, p] at once.

    ``minimize`` drives scipy's ``_lbfgsb.setulb`` by reverse communication: setulb asks for f and g at x
    (task 3), starts a new iteration (task 1) or stops. Here one such loop runs per start, in lockstep, so
    that each round evaluates every pending start in one vectorised call: ~5x faster than thousands of
    separate ``minimize`` calls, whose per-call overhead dominates at 5-7 parameters (Epoch's 4500 starts on
    240 points: 2.7 s of CPU instead of 14.6 s, with bitwise identical end points). Same tolerances and
    stopping rules as ``minimize``; :func:`_lbfgsb_loop` is its twin, and the tests compare the two.
    """
    from scipy.optimize import _lbfgsb  # private but stable since scipy 1.15; checked by _lockstep_works()

    m, p = X0.shape
    X = np.array(X0, dtype=np.float64, order="C")  # setulb moves each row in place
    G = np.zeros((m, p))
    wa = np.zeros((m, 2 * _MAXCOR * p + 5 * p + 11 * _MAXCOR * _MAXCOR + 8 * _MAXCOR))
    iwa = np.zeros((m, 3 * p), np.int32)
    task = np.zeros((m, 2), np.int32)
    ln_task = np.zeros((m, 2), np.int32)
    lsave = np.zeros((m, 4), np.int32)
    isave = np.zeros((m, 44), np.int32)
    dsave = np.zeros((m, 29), np.float64)
    low, up, nbd = np.zeros(p), np.zeros(p), np.zeros(p, np.int32)  # unbounded
    factr = opts["ftol"] / np.finfo(float).eps
    gtol, maxiter, maxfun = opts["gtol"], opts["maxiter"], opts["maxfun"]
    nit = [0] * m
    nfev = [0] * m
    Fl = [0.0] * m
    # Per-row views made once: building them inside the loop cost as much as setulb itself.
    rows = [(X[i], G[i], wa[i], iwa[i], task[i], lsave[i], isave[i], dsave[i], ln_task[i]) for i in range(m)]
    setulb = _lbfgsb.setulb
    active = range(m)
    while True:
        need = []
        for i in active:
            x, g, wa_i, iwa_i, task_i, lsave_i, isave_i, dsave_i, ln_task_i = rows[i]
            while True:
                setulb(_MAXCOR, x, low, up, nbd, Fl[i], g, factr, gtol, wa_i, iwa_i, task_i, lsave_i, isave_i,
                       dsave_i, _MAXLS, ln_task_i)
                t = task_i[0]
                if t == 3:  # wants f and g at x
                    need.append(i)
                    break
                if t != 1:  # converged (4), stopped (5) or failed
                    break
                nit[i] += 1  # a new iteration: apply minimize's limits, as it does, then continue
                if nit[i] >= maxiter:
                    task_i[:] = (5, 504)
                elif nfev[i] > maxfun:
                    task_i[:] = (5, 502)
        if not need:
            break
        active = need
        idx = np.asarray(need)
        f, G[idx] = fg(ds[idx], X[idx])
        for i, fi in zip(need, f.tolist(), strict=True):
            Fl[i] = fi
            nfev[i] += 1
    return X


@functools.cache
def _lockstep_works() -> bool:
    """Whether this scipy's setulb has the interface _lbfgsb_lockstep drives (and agrees with minimize)."""
    logX = np.log(np.array([[1e6, 3e6, 1e7, 3e7, 1e8, 3e8], [2e9, 1e9, 5e9, 2e10, 1e10, 4e10]]))
    logy = np.log(1.8 + 400 / np.exp(logX[0]) ** 0.34 + 2000 / np.exp(logX[1]) ** 0.37)
    fg = _HuberObjective(logX, logy, 1e-3)
    X0 = np.array([[0.0, 5.0, 0.5, 5.0, 0.5]])
    ds = np.zeros(1, int)
    try:
        got = _lbfgsb_lockstep(fg, ds, X0, _LBFGSB_DEFAULT)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
    return bool(np.allclose(got, _lbfgsb_loop(fg, ds, X0, _LBFGSB_DEFAULT), rtol=1e-6, atol=1e-8))


def _lbfgsb_many(fg: Callable, ds: np.ndarray, X0: np.ndarray, opts: Mapping[str, float]):
    """L-BFGS-B from every row of X0 [m, p]; returns (end points [m, p], objectives [m], inf where not finite)."""
    with warnings.catch_warnings(), _single_threaded_blas():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in exp from wild starts; those lose anyway
        X = (_lbfgsb_lockstep if _lockstep_works() else _lbfgsb_loop)(fg, ds, X0, opts)
        F, _ = fg(ds, X)  # re-evaluated: after an abnormal stop setulb's last f may belong to a trial point
    return X, np.where(np.isfinite(F) & np.isfinite(X).all(axis=1), F, np.inf)


def _distinct_optima(ends: np.ndarray, fvals: np.ndarray, best: np.ndarray, k: int) -> np.ndarray:
    """The best theta plus up to k - 1 other distinct local optima of the multi-start (lowest objective first)."""
    out = [best]
    for i in np.argsort(fvals):
        if len(out) >= k:
            break
        if np.isfinite(fvals[i]) and all(np.max(np.abs(ends[i] - o)) > 1e-3 for o in out):
            out.append(ends[i])
    return np.array(out)


def _best_per_set(X, F, ds, n_sets):
    """Index of the lowest objective among the rows of each data set."""
    order = np.lexsort((F, ds))
    first = np.searchsorted(ds[order], np.arange(n_sets))
    return order[first]


def _fit_power_sum(logX, logy, starts, delta, bootstrap, seed, bootstrap_starts):
    """Multi-start fit plus bootstrap. Returns (theta, objective, replicates [k, p] (NaN rows = failed), info)."""
    n = logy.shape[0]
    fg = _HuberObjective(logX, logy, delta)
    ends, fvals = _lbfgsb_many(fg, np.zeros(len(starts), int), starts, _LBFGSB_DEFAULT)
    best = int(np.argmin(fvals))
    if not np.isfinite(fvals[best]):
        raise ValueError("the fit diverged from every start (non-finite objective); check the inputs and init_grid")
    polished, fpol = _lbfgsb_many(fg, np.zeros(1, int), ends[best:best + 1], _LBFGSB_POLISH)
    theta, fbest = (polished[0], float(fpol[0])) if fpol[0] <= fvals[best] else (ends[best], float(fvals[best]))

    rng = np.random.default_rng(seed)
    boot_starts = _distinct_optima(ends, fvals, theta, bootstrap_starts)
    reps = np.full((bootstrap, len(theta)), np.nan)
    if bootstrap:
        # A point drawn j times counts j times: resampling with replacement as weights on the original points.
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(bootstrap)]).astype(float)
        fgb = _HuberObjective(logX, logy, delta, counts)
        ds = np.repeat(np.arange(bootstrap), len(boot_starts))
        ends_b, f_b = _lbfgsb_many(fgb, ds, np.tile(boot_starts, (bootstrap, 1)), _LBFGSB_DEFAULT)
        pick = _best_per_set(ends_b, f_b, ds, bootstrap)
        pol, f_pol = _lbfgsb_many(fgb, np.arange(bootstrap), ends_b[pick], _LBFGSB_POLISH)
        use_pol = f_pol <= f_b[pick]
        reps = np.where(use_pol[:, None], pol, ends_b[pick])
        reps[~np.isfinite(np.minimum(f_pol, f_b[pick]))] = np.nan
    info = {"objective": fbest, "n_starts": int(len(starts)), "n_bootstrap_starts": int(len(boot_starts)),
            "delta": delta, "bootstrap": bootstrap, "bootstrap_failed": int(np.isnan(reps[:, 0]).sum()),
            "seed": seed, "theta": theta.tolist()}
    return theta, fbest, reps, info


def _check_delta(delta: Any) -> float:
    if not isinstance(delta, (int, float)) or isinstance(delta, bool) or not delta > 0 or not math.isfinite(delta):
        raise ValueError(f"delta: must be a positive number (Huber threshold on log-loss residuals), got {delta!r}")
    return float(delta)


def _check_bootstrap_starts(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"bootstrap_starts: must be an integer >= 1, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------------------------------------------
# Approach 3: the parametric fit L(N, D) = E + A / N^alpha + B / D^beta


@dataclass
class ParametricFit(_Fit):
    """Chinchilla approach 3 (see :func:`fit_parametric`): L(N, D) = E + A / N^alpha + B / D^beta.

    params: ``E``, ``A``, ``B``, ``alpha``, ``beta`` and the derived ``a`` = beta / (alpha + beta),
    ``b`` = alpha / (alpha + beta), ``G`` = (alpha A / (beta B))^(1 / (alpha + beta)).
    residuals: ``log_loss`` (per point, log loss minus log predicted loss).
    data: the inputs ``N``, ``D``, ``loss``.
    """

    kind: ClassVar[str] = "parametric"

    E = property(lambda self: self.params["E"], doc="Irreducible loss.")
    A = property(lambda self: self.params["A"], doc="Coefficient of the parameter term.")
    B = property(lambda self: self.params["B"], doc="Coefficient of the data term.")
    alpha = property(lambda self: self.params["alpha"], doc="Exponent of N.")
    beta = property(lambda self: self.params["beta"], doc="Exponent of D.")
    a = property(lambda self: self.params["a"], doc="Exponent of N_opt in C: beta / (alpha + beta).")
    b = property(lambda self: self.params["b"], doc="Exponent of D_opt in C: alpha / (alpha + beta).")
    G = property(lambda self: self.params["G"], doc="(alpha A / (beta B))^(1 / (alpha + beta)).")

    def predict(self, N: Any, D: Any) -> np.ndarray | float:
        """Predicted loss at parameters ``N`` and tokens ``D`` (broadcast)."""
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        out = self.E + self.A / N**self.alpha + self.B / D**self.beta
        return float(out) if np.ndim(out) == 0 else out

    def N_opt(self, C: Any) -> np.ndarray | float:
        """Loss-minimising parameters at training FLOPs ``C`` = 6 N D: G (C / 6)^a."""
        return _power_law_eval(self.G, self.a, np.asarray(C, dtype=np.float64) / 6)

    def D_opt(self, C: Any) -> np.ndarray | float:
        """Loss-minimising tokens at training FLOPs ``C`` = 6 N D: (1 / G) (C / 6)^b."""
        return _power_law_eval(1 / self.G, self.b, np.asarray(C, dtype=np.float64) / 6)


def _parametric_params(theta: np.ndarray) -> dict[str, float]:
    e, a, alpha, b, beta = (float(v) for v in theta)
    A, B = math.exp(a), math.exp(b)
    with np.errstate(all="ignore"):
        G = float(np.power(alpha * A / (beta * B), 1 / (alpha + beta))) if alpha + beta != 0 else math.nan
    s = alpha + beta
    return {"E": math.exp(e), "A": A, "B": B, "alpha": alpha, "beta": beta,
            "a": beta / s if s else math.nan, "b": alpha / s if s else math.nan, "G": G}


def _replicate_samples(reps: np.ndarray, to_params: Callable, names: Sequence[str]) -> dict[str, np.ndarray]:
    samples = {k: np.full(len(reps), np.nan) for k in names}
    for i, t in enumerate(reps):
        if np.isfinite(t).all():
            for k, v in to_params(t).items():
                samples[k][i] = v
    return samples


def fit_parametric(
    N: Any,
    D: Any,
    loss: Any,
    *,
    delta: float = 1e-3,
    bootstrap: int = 0,
    seed: int = 0,
    init_grid: Mapping[str, Sequence[float]] | None = None,
    bootstrap_starts: int = 8,
) -> ParametricFit:
    """Chinchilla approach 3 as in Epoch AI's replication: L(N, D) = E + A / N^alpha + B / D^beta.

    ``N`` parameters, ``D`` training tokens, ``loss`` final losses: flat arrays [n], n >= 6.

    log L is modelled as LSE(a - alpha log N, b - beta log D, e) with A = exp(a), B = exp(b), E = exp(e). The
    objective is the Huber loss (threshold ``delta`` = 1e-3) of predicted minus observed log L, summed over points.
    scipy's L-BFGS-B (analytic gradient) runs from every point of ``init_grid`` (a mapping of e, a, alpha, b, beta
    to value lists, crossed; missing keys from :data:`PARAMETRIC_GRID`, Epoch's 4500-point grid) with default
    tolerances; the best end point is then polished with tight tolerances.

    ``bootstrap=k`` resamples the points with replacement k times and refits each replicate. The full grid is
    only used for the main fit: a replicate starts from the main fit's optimum plus the next best distinct local
    optima that the main grid search found (``bootstrap_starts`` starts in all), which covers the basins that
    the grid found at a small fraction of its cost. ``ci`` then holds 2.5/97.5 percentiles for every parameter,
    including the derived ``a``, ``b`` and ``G``.
    """
    x = _arrays(6, "fit_parametric (5 parameters)", N=N, D=D, loss=loss)
    N, D, loss = x["N"], x["D"], x["loss"]
    delta = _check_delta(delta)
    bootstrap, seed = _check_bootstrap(bootstrap, seed)
    bootstrap_starts = _check_bootstrap_starts(bootstrap_starts)
    starts = _grid_starts(init_grid, PARAMETRIC_GRID, ("e", "a", "alpha", "b", "beta"))
    logX = np.log(np.vstack([N, D]))
    logy = np.log(loss)

    theta, _, reps, info = _fit_power_sum(logX, logy, starts, delta, bootstrap, seed, bootstrap_starts)
    params = _parametric_params(theta)
    samples = _replicate_samples(reps, _parametric_params, params) if bootstrap else {}
    return ParametricFit(
        params=params,
        ci=_ci_from_samples(samples) if bootstrap else {},
        residuals={"log_loss": logy - _predict_log(theta, logX)},
        data={"N": N, "D": D, "loss": loss},
        samples=samples,
        info=info,
    )


# --------------------------------------------------------------------------------------------------------------
# State-size law L(N, S [, D]) = E + A / N^alpha + B / S^gamma [+ C / D^beta]


@dataclass
class StateLawFit(_Fit):
    """State-size law (see :func:`fit_state_law`): L = E + A / N^alpha + B / S^gamma [+ C / D^beta].

    params: ``E``, ``A``, ``alpha``, ``B``, ``gamma`` and, when fitted with D, ``C``, ``beta``.
    residuals: ``log_loss`` (per point, log loss minus log predicted loss).
    data: the inputs ``N``, ``S``, ``loss`` (and ``D``).
    """

    kind: ClassVar[str] = "state_law"

    E = property(lambda self: self.params["E"], doc="Irreducible loss.")
    A = property(lambda self: self.params["A"], doc="Coefficient of the parameter term.")
    alpha = property(lambda self: self.params["alpha"], doc="Exponent of N.")
    B = property(lambda self: self.params["B"], doc="Coefficient of the state term.")
    gamma = property(lambda self: self.params["gamma"], doc="Exponent of the state size S.")

    @property
    def has_D(self) -> bool:
        """Whether the law has the data term C / D^beta."""
        return "beta" in self.params

    def predict(self, N: Any, S: Any, D: Any = None) -> np.ndarray | float:
        """Predicted loss at parameters ``N``, state size ``S`` and (if the law has a D term) tokens ``D``."""
        p = self.params
        N = np.asarray(N, dtype=np.float64)
        S = np.asarray(S, dtype=np.float64)
        out = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / S ** p["gamma"]
        if self.has_D:
            if D is None:
                raise ValueError("D: this state law was fitted with a data term; pass D (tokens)")
            out = out + p["C"] / np.asarray(D, dtype=np.float64) ** p["beta"]
        elif D is not None:
            raise ValueError("D: this state law has no data term (fitted without D); leave D=None")
        return float(out) if np.ndim(out) == 0 else out


def _state_params(theta: np.ndarray) -> dict[str, float]:
    p = {"E": math.exp(theta[0]), "A": math.exp(theta[1]), "alpha": float(theta[2]),
         "B": math.exp(theta[3]), "gamma": float(theta[4])}
    if len(theta) == 7:
        p["C"], p["beta"] = math.exp(theta[5]), float(theta[6])
    return p


def fit_state_law(
    N: Any,
    S: Any,
    loss: Any,
    *,
    D: Any = None,
    delta: float = 1e-3,
    bootstrap: int = 0,
    seed: int = 0,
    init_grid: Mapping[str, Sequence[float]] | None = None,
    bootstrap_starts: int = 8,
) -> StateLawFit:
    """Fit L(N, S) = E + A / N^alpha + B / S^gamma, or with ``D`` given L(N, S, D) = ... + C / D^beta.

    ``N`` parameters, ``S`` recurrent-state size per sequence in elements (``scaling.accounting.state_size``),
    ``loss`` final losses, optional ``D`` training tokens: flat arrays [n], n > number of parameters (5 or 7).

    The machinery of :func:`fit_parametric`: log L = LSE(a - alpha log N, b - gamma log S, [c - beta log D,] e),
    Huber loss (``delta``) on log-loss residuals summed over points, L-BFGS-B from every point of ``init_grid``
    (keys e, a, alpha, b, gamma [, c, beta]; defaults :data:`STATE_GRID`, 4500 starts, or
    :data:`STATE_GRID_WITH_D`, 2187 starts), best end point polished; bootstrap refits start from the best
    optimum plus the next distinct local optima (``bootstrap_starts`` in all).
    """
    arrays = {"N": N, "S": S, "loss": loss} if D is None else {"N": N, "S": S, "loss": loss, "D": D}
    n_params = 5 if D is None else 7
    x = _arrays(n_params + 1, f"fit_state_law ({n_params} parameters)", **arrays)
    delta = _check_delta(delta)
    bootstrap, seed = _check_bootstrap(bootstrap, seed)
    bootstrap_starts = _check_bootstrap_starts(bootstrap_starts)
    if D is None:
        order, default, covs = ("e", "a", "alpha", "b", "gamma"), STATE_GRID, [x["N"], x["S"]]
    else:
        order, default = ("e", "a", "alpha", "b", "gamma", "c", "beta"), STATE_GRID_WITH_D
        covs = [x["N"], x["S"], x["D"]]
    starts = _grid_starts(init_grid, default, order)
    logX = np.log(np.vstack(covs))
    logy = np.log(x["loss"])
    theta, _, reps, info = _fit_power_sum(logX, logy, starts, delta, bootstrap, seed, bootstrap_starts)
    params = _state_params(theta)
    samples = _replicate_samples(reps, _state_params, params) if bootstrap else {}
    return StateLawFit(
        params=params,
        ci=_ci_from_samples(samples) if bootstrap else {},
        residuals={"log_loss": logy - _predict_log(theta, logX)},
        data=x,
        samples=samples,
        info=info,
    )


def _grid_or_range(name: str, v: Any, data: np.ndarray, n: int) -> np.ndarray:
    if v is None:
        return np.geomspace(data.min(), data.max(), n)
    return np.atleast_1d(_array(name, np.atleast_1d(v)))


def compute_optimal_state(
    fit: StateLawFit,
    budgets: Any,
    flops_per_token: Callable[[np.ndarray, np.ndarray], Any],
    *,
    N: Any = None,
    S: Any = None,
    tokens: float | None = None,
    n_grid: int = 256,
) -> dict[str, np.ndarray]:
    """Compute-optimal (N, S) per FLOP budget under a fitted state law, by search over a grid.

    ``flops_per_token(N, S)`` is the cost model: training FLOPs per token (e.g. ``lambda N, S: 6 * N + 6 * S``);
    it is called once with broadcastable arrays N [g, 1] and S [1, h] and must return an array of that
    broadcast shape (or a scalar). ``budgets``: training FLOPs C, scalar or [m].

    - Law with a data term: the tokens affordable at (N, S) are D = C / flops_per_token(N, S), and the
      optimum minimises L(N, S, D).
    - Law without one (fitted at a fixed training length): pass ``tokens``; a candidate is affordable when
      flops_per_token(N, S) * tokens <= C, and the optimum is the affordable one with the lowest L(N, S).

    ``N`` and ``S`` are candidate values: a scalar fixes that axis (e.g. the compute-optimal state size for a
    given model size), an array is searched; None means ``n_grid`` log-spaced values over the fit's data range
    (no extrapolation). Returns ``{"C", "N_opt", "S_opt", "D_opt", "loss", "at_edge"}`` arrays [m]; ``at_edge``
    marks optima on the boundary of a searched axis (the true optimum may lie beyond it). Budgets where nothing
    is affordable give NaN.
    """
    if not isinstance(fit, StateLawFit):
        raise ValueError(f"fit: must be a StateLawFit, got {type(fit).__name__}")
    if not callable(flops_per_token):
        raise ValueError("flops_per_token: must be a callable (N, S) -> training FLOPs per token")
    C = np.atleast_1d(_array("budgets", np.atleast_1d(budgets)))
    if fit.has_D and tokens is not None:
        raise ValueError("tokens: this law has a data term, tokens follow from the budget; leave tokens=None")
    if not fit.has_D:
        if tokens is None:
            raise ValueError("tokens: this law has no data term; pass the fixed training tokens it was fitted at")
        if not (isinstance(tokens, (int, float)) and tokens > 0):
            raise ValueError(f"tokens: must be a positive number, got {tokens!r}")
    Ns = _grid_or_range("N", N, fit.data["N"], n_grid)
    Ss = _grid_or_range("S", S, fit.data["S"], n_grid)
    cost = np.broadcast_to(np.asarray(flops_per_token(Ns[:, None], Ss[None, :]), dtype=np.float64),
                           (len(Ns), len(Ss)))
    if not (np.isfinite(cost).all() and (cost > 0).all()):
        raise ValueError("flops_per_token: must return finite positive FLOPs per token for every (N, S) candidate")
    out = {k: np.full(len(C), np.nan) for k in ("N_opt", "S_opt", "D_opt", "loss")}
    at_edge = np.zeros(len(C), dtype=bool)
    base = fit.params["E"] + fit.params["A"] / Ns[:, None] ** fit.params["alpha"] \
        + fit.params["B"] / Ss[None, :] ** fit.params["gamma"]
    for j, c in enumerate(C):
        if fit.has_D:
            Dg = c / cost
            L = base + fit.params["C"] / Dg ** fit.params["beta"]
        else:
            Dg = np.full_like(cost, float(tokens))
            L = np.where(cost * tokens <= c, base, np.inf)
        if not np.isfinite(L).any():
            continue
        i, h = np.unravel_index(np.argmin(L), L.shape)
        out["N_opt"][j], out["S_opt"][j], out["D_opt"][j], out["loss"][j] = Ns[i], Ss[h], Dg[i, h], L[i, h]
        at_edge[j] = (len(Ns) > 1 and i in (0, len(Ns) - 1)) or (len(Ss) > 1 and h in (0, len(Ss) - 1))
    return {"C": C, **out, "at_edge": at_edge}


def loss_vs_state(fit: StateLawFit, N: Any, S: Any, D: Any = None) -> np.ndarray:
    """Fitted loss curves against state size at fixed model sizes: array [len(N), len(S)].

    ``N`` parameters (scalar or [g]), ``S`` state sizes in elements ([h]); ``D`` tokens, required when the
    law has a data term: a scalar, or broadcastable to [g, h] (e.g. [g, 1] for tokens per model size).
    """
    if not isinstance(fit, StateLawFit):
        raise ValueError(f"fit: must be a StateLawFit, got {type(fit).__name__}")
    Ns = np.atleast_1d(_array("N", np.atleast_1d(N)))
    Ss = np.atleast_1d(_array("S", np.atleast_1d(S)))
    if D is not None:
        D = np.asarray(D, dtype=np.float64)
        if not (np.isfinite(D).all() and (D > 0).all()):
            raise ValueError("D: must be finite and > 0")
    return np.asarray(fit.predict(Ns[:, None], Ss[None, :], D), dtype=np.float64).reshape(len(Ns), len(Ss))


# --------------------------------------------------------------------------------------------------------------
# Context-length law: loss vs training context at fixed FLOPs


@dataclass
class ContextLawFit(_Fit):
    """Optimal training context per FLOP budget (see :func:`fit_context_law`).

    params: with >= 2 budgets ``a`` and ``k`` of context_opt = k C^a; with one budget ``context_opt``.
    residuals: ``loss`` (per point, loss minus its budget's parabola; NaN for points in no budget) and, with
    >= 2 budgets, ``log_context_opt`` (per budget, log optimum minus the power law).
    data: inputs ``context``, ``loss``, ``budgets`` (per point FLOPs; absent if not given); ``group`` (per point
    budget index, -1 = none); per budget ``budget_C`` (NaN when no budgets were given), ``budget_context_opt``,
    ``budget_loss_opt``, ``budget_coef`` [m, 3] (loss = c0 + c1 log T + c2 log^2 T), ``budget_extrapolated`` and,
    with bootstrap, ``budget_context_opt_lo`` / ``_hi``.
    """

    kind: ClassVar[str] = "context_law"

    def context_opt(self, C: Any = None) -> np.ndarray | float:
        """Optimal context at FLOPs ``C`` from the power law (>= 2 budgets), or the single budget's optimum."""
        if "a" in self.params:
            if C is None:
                raise ValueError("C: pass the FLOP budget(s) to evaluate the power law at")
            return _power_law_eval(self.params["k"], self.params["a"], C)
        return self.params["context_opt"]

    def loss_curve(self, budget_index: int, context: Any) -> np.ndarray:
        """The fitted parabola of budget ``budget_index`` evaluated at contexts ``context``."""
        c0, c1, c2 = self.data["budget_coef"][budget_index]
        x = np.log(np.asarray(context, dtype=np.float64))
        return c0 + c1 * x + c2 * x * x


def fit_context_law(
    context: Any,
    loss: Any,
    *,
    budgets: Any = None,
    rtol: float = 0.05,
    bootstrap: int = 0,
    seed: int = 0,
) -> ContextLawFit:
    """Loss against training context at fixed FLOPs: the optimal context per budget and its power law.

    ``context`` training context length in tokens, ``loss`` final losses: flat arrays [n], one per run.
    ``budgets``: each run's training FLOPs (array [n]); runs within a factor 1 + ``rtol`` form one budget
    (its value is their geometric mean). None: all runs are one budget.

    Per budget, least squares loss = c0 + c1 log T + c2 (log T)^2 (needs >= 3 distinct contexts and c2 > 0,
    a U shape, else ValueError); the optimal context is exp(-c1 / (2 c2)) (flagged and warned about when outside
    the contexts trained). With >= 2 budgets, log context_opt = log k + a log C by least squares.

    ``bootstrap=k``: resampling with replacement within each budget, 95% percentile intervals for ``a``, ``k``
    (or ``context_opt``) and per budget optimum; replicates with a budget lacking a minimum drop that budget.
    """
    x = _arrays(3, "fit_context_law", context=context, loss=loss)
    T, loss = x["context"], x["loss"]
    bootstrap, seed = _check_bootstrap(bootstrap, seed)
    rtol = _check_rtol(rtol)
    if budgets is None:
        budget_C, group, per_point = np.array([np.nan]), np.zeros(len(T), dtype=int), None
    else:
        per_point = _array("budgets", np.atleast_1d(budgets))
        if len(per_point) == 1:
            per_point = np.full(len(T), per_point[0])
        if len(per_point) != len(T):
            raise ValueError(f"budgets: must give one FLOP value per point ({len(T)}), got {len(per_point)}")
        budget_C, group = _group_by_budget(per_point, None, rtol, "budgets")
    m = len(budget_C)
    logT = np.log(T)
    _check_groups(logT, group, budget_C, 3, "context", "fit_context_law")

    coefs, vx, vy = _budget_vertices(logT, loss, group, m)
    concave = np.flatnonzero(~np.isfinite(vx))
    if len(concave):
        raise ValueError("fit_context_law: loss is not convex (no U shape) in log context at budget(s) "
                         f"{[f'{budget_C[g]:.4g}' for g in concave]}: the contexts do not bracket the optimum")
    T_opt = np.exp(vx)
    lo = np.array([T[group == g].min() for g in range(m)])
    hi = np.array([T[group == g].max() for g in range(m)])
    extrapolated = (T_opt < lo) | (T_opt > hi)
    if extrapolated.any():
        warnings.warn("fit_context_law: the optimal context lies outside the contexts trained at budget(s) "
                      f"{[f'{c:.4g}' for c in budget_C[extrapolated]]}; those optima are extrapolations",
                      stacklevel=2)
    resid_loss = np.array([loss[i] - np.polyval(coefs[group[i]][::-1], logT[i]) for i in range(len(T))])
    residuals: dict[str, np.ndarray] = {"loss": resid_loss}

    def power_law(Topt, Cb):
        a, log_k, res = _fit_line(np.log(Cb), np.log(Topt))
        return {"a": a, "k": math.exp(log_k)}, res

    if m >= 2:
        params, res = power_law(T_opt, budget_C)
        residuals["log_context_opt"] = res
    else:
        params = {"context_opt": float(T_opt[0])}

    rng = np.random.default_rng(seed)
    samples = {k: np.full(bootstrap, np.nan) for k in params}
    boot_T = np.full((bootstrap, m), np.nan)
    failed = 0
    for i in range(bootstrap):
        idx = _bootstrap_within_groups(rng, group, m)
        _, bx, _ = _budget_vertices(logT[idx], loss[idx], group[idx], m)
        boot_T[i] = np.exp(bx)
        ok = np.isfinite(bx)
        if m >= 2:
            if ok.sum() < 2:
                failed += 1
                continue
            p, _ = power_law(boot_T[i][ok], budget_C[ok])
        elif ok[0]:
            p = {"context_opt": float(boot_T[i, 0])}
        else:
            failed += 1
            continue
        for k in params:
            samples[k][i] = p[k]

    data = {"context": T, "loss": loss, "group": group, "budget_C": budget_C, "budget_context_opt": T_opt,
            "budget_loss_opt": vy, "budget_coef": coefs, "budget_extrapolated": extrapolated}
    if per_point is not None:
        data["budgets"] = per_point
    if bootstrap:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            data["budget_context_opt_lo"] = np.nanpercentile(boot_T, CI_PERCENTILES[0], axis=0)
            data["budget_context_opt_hi"] = np.nanpercentile(boot_T, CI_PERCENTILES[1], axis=0)
    return ContextLawFit(
        params=params,
        ci=_ci_from_samples(samples) if bootstrap else {},
        residuals=residuals,
        data=data,
        samples=samples if bootstrap else {},
        info={"rtol": rtol, "bootstrap": bootstrap, "bootstrap_failed": failed, "seed": seed},
    )


# --------------------------------------------------------------------------------------------------------------

_KINDS: dict[str, type[_Fit]] = {c.kind: c for c in (EnvelopeFit, IsoflopFit, ParametricFit, StateLawFit,
                                                      ContextLawFit)}


def fit_from_dict(d: Mapping[str, Any]) -> _Fit:
    """Rebuild any fit from its :meth:`to_dict` output, dispatching on ``d["kind"]``."""
    kind = d.get("kind") if isinstance(d, Mapping) else None
    if kind not in _KINDS:
        raise ValueError(f"kind: must be one of {sorted(_KINDS)}, got {kind!r}")
    return _KINDS[kind].from_dict(d)


def fit_from_json(s: str) -> _Fit:
    """Rebuild any fit from its :meth:`to_json` output."""
    return fit_from_dict(json.loads(s))
