"""Chinchilla approaches 1 and 2: the compute-optimal allocation N_opt = k_N C^a, D_opt = k_D C^b from the lower
envelope of the loss curves (:func:`fit_envelope`) or from isoFLOP parabolas (:func:`fit_isoflop`; the budget
grouping and parabolas are scaling.analysis.parabola's)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from scaling.analysis.fit_base import (
    CI_PERCENTILES,
    _arrays,
    _check_bootstrap,
    _check_loss_sd,
    _check_loss_sd_dof,
    _check_rtol,
    _ci_from_samples,
    _Fit,
    _fit_line,
    _point_law,
    _power_law_eval,
    _sd_scale,
)
from scaling.analysis.parabola import _budget_vertices, _check_groups, _group_by_budget, _replicate

__all__ = ["EnvelopeFit", "IsoflopFit", "fit_envelope", "fit_isoflop"]


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

    def N_opt_interval(self, C: Any) -> tuple[np.ndarray | float, np.ndarray | float]:
        """(lo, hi): the 95% percentile band of the bootstrap replicates' k_N C^a at ``C`` (scalar or array); NaN
        without replicates (or where none is finite)."""
        c = np.atleast_1d(np.asarray(C, dtype=np.float64))
        lo = hi = np.full(c.shape, np.nan)
        if self.samples:
            with np.errstate(over="ignore", invalid="ignore"):
                n = np.asarray(self.samples["k_N"])[:, None] * c[None, :] ** np.asarray(self.samples["a"])[:, None]
            n[~np.isfinite(n)] = np.nan
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a C where no replicate is finite: NaN there
                lo, hi = np.nanpercentile(n, CI_PERCENTILES, axis=0)
        return (float(lo[0]), float(hi[0])) if np.ndim(C) == 0 else (lo, hi)


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
    loss_sd: Any = None,
    loss_sd_dof: int | None = None,
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
    replicates with fewer than two frontier points (or of one size) are dropped (``info["bootstrap_failed"]``);
    when fewer than max(10, 20%) survive, or all survivors agree, the interval is NaN rather than one of width
    zero (e.g. two frontier points, a line through them, and no noise: every survivor is the fit). ``loss_sd``
    (scalar or per point): the noise of each loss (e.g. the seed-to-seed spread of a final loss); each replicate
    also adds a normal draw of that size to every loss, so the interval includes the chance that another size
    wins a budget. Without it, a budget with one run per size always has the same winner in every replicate
    that keeps it, and the interval is only as wide as the resampling of whole runs makes it. ``loss_sd_dof``: the
    degrees of freedom of an estimated ``loss_sd``, whose uncertainty each replicate then draws (as
    :func:`fit_isoflop`).

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

    def frontier(idx, y):
        on_env, fC, fN, fD, fL, at_edge = _envelope_frontier(N[idx], D[idx], C[idx], y[idx], grid_C, method)
        if drop_edge_sizes:
            keep = ~at_edge
            fC, fN, fD, fL = fC[keep], fN[keep], fD[keep], fL[keep]
        return on_env, fC, fN, fD, fL

    on_env, fC, fN, fD, fL = frontier(np.arange(len(N)), loss)
    if len(fC) < 2 or len(np.unique(fC)) < 2:
        raise ValueError(f"fit_envelope: only {len(fC)} frontier point(s) in C_range={C_range} (need 2); widen "
                         "C_range, add sizes that bracket the optimum, or try method='bin' / drop_edge_sizes=False")
    if len(np.unique(fN)) < 2:
        raise ValueError(f"fit_envelope: every frontier point is the same model size (N = {fN[0]:.4g}), so how "
                         "N_opt grows with C is not resolved; add sizes between the ones trained")
    params, residuals = _point_law("fit_envelope", _allocation_params, fC, fN, fD)

    sd = _check_loss_sd(loss_sd, len(loss), "fit_envelope")
    dof = _check_loss_sd_dof(loss_sd_dof, sd, "fit_envelope")
    rng = np.random.default_rng(seed)
    samples = {k: np.full(bootstrap, np.nan) for k in params}
    failed = 0
    for i in range(bootstrap):
        idx = rng.integers(0, len(N), len(N))
        if sd is None:
            y = loss
        else:  # stays positive
            y = loss * np.exp(rng.normal(0.0, 1.0, len(loss)) * (sd * _sd_scale(rng, dof)) / loss)
        _, bC, bN, bD, _ = frontier(idx, y)
        if len(np.unique(bC)) < 2 or len(np.unique(bN)) < 2:
            failed += 1
            continue
        try:
            p, _ = _allocation_params(bC, bN, bD)
        except OverflowError:  # a replicate's slope so steep that its coefficient overflows: a failed replicate
            failed += 1
            continue
        for k in params:
            samples[k][i] = p[k]

    ci = _ci_from_samples(samples) if bootstrap else {}
    kept = samples["a"][np.isfinite(samples["a"])] if bootstrap else np.array([])
    if bootstrap and (len(kept) < max(10, 0.2 * bootstrap) or np.ptp(kept) == 0):
        ci = {k: (float("nan"), float("nan")) for k in params}  # too few, or all alike: no interval to speak of
    return EnvelopeFit(
        params=params,
        ci=ci,
        residuals=residuals,
        data={"N": N, "D": D, "C": C, "loss": loss, "on_envelope": on_env,
              "frontier_C": fC, "frontier_N": fN, "frontier_D": fD, "frontier_loss": fL},
        samples=samples if bootstrap else {},
        info={"method": method, "n_bins": int(n_bins), "C_range": list(C_range), "drop_edge_sizes": drop_edge_sizes,
              "bootstrap": bootstrap, "bootstrap_failed": failed, "seed": seed,
              "loss_sd": None if sd is None else float(np.median(sd)), "loss_sd_dof": dof},
    )


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
    loss_sd: Any = None,
    loss_sd_dof: int | None = None,
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

    ``bootstrap=k``: k replicates; a replicate whose parabola has no minimum drops that budget, and with fewer
    than two budgets left it fails (``info["bootstrap_failed"]``). ``loss_sd`` (scalar or per point; e.g. the
    seed-to-seed spread of a final loss): each replicate keeps every run's size and draws its loss anew around its
    budget's parabola with that noise (a parametric bootstrap). Without it, points are resampled with replacement
    within each budget, which needs many sizes a budget: at three, its 95% intervals held the true exponent
    for 68% of synthetic data sets, against 96% with ``loss_sd`` (tests/analysis/test_few_sizes.py).
    ``loss_sd_dof``: the degrees of freedom of an estimated ``loss_sd`` (seeds at a point minus one, pooled over
    points); each replicate then scales the SD by a draw of its own uncertainty (sqrt(dof / chi2(dof))). With the
    SD from three seeds (2 dof) plugged in as known, the interval held the exponent for 84.5% of synthetic data
    sets at a nominal 95%; with ``loss_sd_dof=2``, 95% (intervals 2.6 times wider).
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
    sd = _check_loss_sd(loss_sd, len(loss), "fit_isoflop")
    dof = _check_loss_sd_dof(loss_sd_dof, sd, "fit_isoflop")

    def optima(idx, grp, y):
        coefs, vx, vy = _budget_vertices(logN[idx], y, grp, m)
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
    coefs, Nopt, Dopt, Lopt = optima(all_idx, group[all_idx], loss[all_idx])
    concave = np.flatnonzero(~np.isfinite(Nopt))
    if len(concave):
        raise ValueError("fit_isoflop: loss is not convex in log N, or its minimum lies more than 10x outside the "
                         f"sizes trained, at budget(s) {[f'{budget_C[g]:.4g}' for g in concave]}: the sizes do not "
                         "bracket the optimum")
    lo = np.array([N[group == g].min() for g in range(m)])
    hi = np.array([N[group == g].max() for g in range(m)])
    extrapolated = (Nopt < lo) | (Nopt > hi)
    if extrapolated.any():
        warnings.warn(f"fit_isoflop: N_opt lies outside the sizes trained at budget(s) "
                      f"{[f'{c:.4g}' for c in budget_C[extrapolated]]}; those optima are extrapolations",
                      stacklevel=2)
    params, residuals = _point_law("fit_isoflop", _allocation_params, budget_C, Nopt, Dopt)
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
        idx, y = _replicate(rng, logN, loss, group, m, coefs, sd if sd is None else sd * _sd_scale(rng, dof))
        _, bN, bD, _ = optima(idx, group[idx], y)
        boot_N[i] = bN
        ok = np.isfinite(bN) & np.isfinite(bD)
        if ok.sum() < 2:
            failed += 1
            continue
        try:
            p, _ = _allocation_params(budget_C[ok], bN[ok], bD[ok])
        except OverflowError:
            failed += 1
            continue
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
              "seed": seed, "loss_sd": None if sd is None else float(np.median(sd)), "loss_sd_dof": dof},
    )
