"""The context-length law: loss against training context at fixed FLOPs, the optimal context per budget and its
power law in FLOPs (:func:`fit_context_law`)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from scaling.analysis.fit_base import (
    CI_PERCENTILES,
    _array,
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

__all__ = ["ContextLawFit", "fit_context_law"]


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
    loss_sd: Any = None,
    loss_sd_dof: int | None = None,
) -> ContextLawFit:
    """Loss against training context at fixed FLOPs: the optimal context per budget and its power law.

    ``context`` training context length in tokens, ``loss`` final losses: flat arrays [n], one per run.
    ``budgets``: each run's training FLOPs (array [n]); runs within a factor 1 + ``rtol`` form one budget
    (its value is their geometric mean). None: all runs are one budget.

    Per budget, least squares loss = c0 + c1 log T + c2 (log T)^2 (needs >= 3 distinct contexts and c2 > 0,
    a U shape, else ValueError); the optimal context is exp(-c1 / (2 c2)) (flagged and warned about when outside
    the contexts trained). With >= 2 budgets, log context_opt = log k + a log C by least squares.

    ``bootstrap=k``: 95% percentile intervals for ``a``, ``k`` (or ``context_opt``) and per budget optimum;
    replicates with a budget lacking a minimum drop that budget. Replicates resample the runs with replacement
    within each budget or, with ``loss_sd`` (scalar or per run: the noise of a final loss), keep every context
    and draw each loss anew around its budget's parabola, as :func:`scaling.analysis.allocation.fit_isoflop` does
    (the better choice at a few contexts a budget). ``loss_sd_dof``: the degrees of freedom of an estimated
    ``loss_sd``, whose uncertainty each replicate draws (as fit_isoflop; at 2 dof and three contexts a budget the
    interval held the exponent for 83.5% of synthetic data sets with the SD plugged in, 95% with it).
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
    sd = _check_loss_sd(loss_sd, len(loss), "fit_context_law")
    dof = _check_loss_sd_dof(loss_sd_dof, sd, "fit_context_law")

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
        params, res = _point_law("fit_context_law", power_law, T_opt, budget_C)
        residuals["log_context_opt"] = res
    else:
        params = {"context_opt": float(T_opt[0])}

    rng = np.random.default_rng(seed)
    samples = {k: np.full(bootstrap, np.nan) for k in params}
    boot_T = np.full((bootstrap, m), np.nan)
    failed = 0
    for i in range(bootstrap):
        idx, y = _replicate(rng, logT, loss, group, m, coefs, sd if sd is None else sd * _sd_scale(rng, dof))
        _, bx, _ = _budget_vertices(logT[idx], y, group[idx], m)
        boot_T[i] = np.exp(bx)
        ok = np.isfinite(bx)
        if m >= 2:
            if ok.sum() < 2:
                failed += 1
                continue
            try:
                p, _ = power_law(boot_T[i][ok], budget_C[ok])
            except OverflowError:  # a replicate's coefficient overflows: a failed replicate
                failed += 1
                continue
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
        info={"rtol": rtol, "bootstrap": bootstrap, "bootstrap_failed": failed, "seed": seed,
              "loss_sd": None if sd is None else float(np.median(sd)), "loss_sd_dof": dof},
    )
