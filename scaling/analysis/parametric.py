"""Chinchilla approach 3 as in Epoch AI's replication: L(N, D) = E + A / N^alpha + B / D^beta
(:func:`fit_parametric`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from scaling.analysis.fit_base import (
    _arrays,
    _check_bootstrap,
    _check_bootstrap_starts,
    _check_delta,
    _ci_from_samples,
    _Fit,
)
from scaling.analysis.optimize import (
    _fit_power_sum,
    _grid_starts,
    _optimum_params,
    _predict_log,
    _replicate_samples,
)
from scaling.analysis.predict import PowerSumPrediction, broadcast_log

__all__ = ["PARAMETRIC_GRID", "ParametricFit", "fit_parametric"]

# Epoch AI's grid for approach 3 (5 * 6 * 5 * 6 * 5 = 4500 starts). Keys are the log-space parameters:
# e = log E, a = log A, b = log B.
PARAMETRIC_GRID: dict[str, tuple[float, ...]] = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}


@dataclass
class ParametricFit(PowerSumPrediction, _Fit):
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

    def predict_interval(self, N: Any, D: Any, level: float = 0.9) -> tuple[Any, Any]:
        """(lo, hi): an interval expected to hold a new run's loss at (``N``, ``D``) with probability ``level``.

        It combines the parameter uncertainty (delta method) with the scatter of the fitted runs around the law,
        Student-t with n - 5 degrees of freedom (scaling.analysis.predict). Scalars in, floats out."""
        logX, scalar = broadcast_log(N, D)
        lo, hi = self._interval(logX, level)
        return (float(lo[0]), float(hi[0])) if scalar else (lo, hi)

    def _fit_covariates(self) -> np.ndarray:
        return np.vstack([self.data["N"], self.data["D"]])

    @property
    def cost(self):
        """The FLOP convention of N_opt / D_opt: ``info["cost"]`` (a scaling.analysis.cost.CostModel from the
        runs' accounting, training FLOPs per token = k N^e) when the fit has one, else Chinchilla's 6 N."""
        from scaling.analysis.cost import CostModel

        return CostModel.from_dict(self.info["cost"]) if self.info.get("cost") else CostModel(6.0, 1.0)

    def N_opt(self, C: Any) -> np.ndarray | float:
        """Loss-minimising parameters at training FLOPs ``C`` = cost(N) D with cost(N) = k N^e (:attr:`cost`):
        N_opt = (alpha A / (beta e B k^beta))^(1 / (alpha + e beta)) C^(beta / (alpha + e beta)); for k = 6, e = 1
        this is Chinchilla's G (C / 6)^a."""
        k, e = np.float64(self.cost.k), np.float64(self.cost.e)
        al, be = np.float64(self.alpha), np.float64(self.beta)  # NaN, not complex, where the base is negative
        C = np.asarray(C, dtype=np.float64)
        with np.errstate(all="ignore"):
            out = (al * self.A / (be * e * self.B * k**be)) ** (1 / (al + e * be)) * C ** (be / (al + e * be))
        return float(out) if np.ndim(out) == 0 else out

    def D_opt(self, C: Any) -> np.ndarray | float:
        """Loss-minimising tokens at training FLOPs ``C``: C / cost(N_opt(C))."""
        out = np.asarray(C, dtype=np.float64) / self.cost(self.N_opt(C))
        return float(out) if np.ndim(out) == 0 else out


def _parametric_params(theta: np.ndarray) -> dict[str, float]:
    e, a, alpha, b, beta = (float(v) for v in theta)
    A, B = math.exp(a), math.exp(b)
    with np.errstate(all="ignore"):
        G = float(np.power(alpha * A / (beta * B), 1 / (alpha + beta))) if alpha + beta != 0 else math.nan
    s = alpha + beta
    return {"E": math.exp(e), "A": A, "B": B, "alpha": alpha, "beta": beta,
            "a": beta / s if s else math.nan, "b": alpha / s if s else math.nan, "G": G}


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
    L-BFGS (analytic gradient; all starts batched, scaling.analysis.optimize) runs from every point of
    ``init_grid`` (a mapping of e, a, alpha, b, beta to value lists, crossed; missing keys from
    :data:`PARAMETRIC_GRID`, Epoch's 4500-point grid) with default tolerances; the best end point is then
    polished with tight tolerances.

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
    order = ("e", "a", "alpha", "b", "beta")
    starts = _grid_starts(init_grid, PARAMETRIC_GRID, order)
    logX = np.log(np.vstack([N, D]))
    logy = np.log(loss)

    theta, _, reps, info = _fit_power_sum(logX, logy, starts, delta, bootstrap, seed, bootstrap_starts)
    params = _optimum_params(_parametric_params, theta, order)
    samples = _replicate_samples(reps, _parametric_params, params, info) if bootstrap else {}
    return ParametricFit(
        params=params,
        ci=_ci_from_samples(samples) if bootstrap else {},
        residuals={"log_loss": logy - _predict_log(theta, logX)},
        data={"N": N, "D": D, "loss": loss},
        samples=samples,
        info=info,
    )
