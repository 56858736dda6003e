"""The state-size law L(N, S [, D]) = E + A / N^alpha + B / S^gamma [+ C / D^beta] (:func:`fit_state_law`), and what
follows from a fitted one: the compute-optimal (N, S) per FLOP budget and loss-vs-state curves."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from scaling.analysis.fit_base import (
    _array,
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
from scaling.analysis.parametric import PARAMETRIC_GRID
from scaling.analysis.predict import PowerSumPrediction, broadcast_log

__all__ = ["STATE_GRID", "STATE_GRID_WITH_D", "StateLawFit", "compute_optimal_state", "fit_state_law",
           "loss_vs_state"]

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


@dataclass
class StateLawFit(PowerSumPrediction, _Fit):
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

    def predict_interval(self, N: Any, S: Any, D: Any = None, level: float = 0.9) -> tuple[Any, Any]:
        """(lo, hi): an interval expected to hold a new run's loss at (``N``, ``S`` [, ``D``]) with probability
        ``level`` (parameter uncertainty by the delta method plus the runs' scatter around the law, Student-t;
        scaling.analysis.predict). Scalars in, floats out."""
        self.predict(N, S, D)  # the same argument checks
        logX, scalar = broadcast_log(N, S, D) if self.has_D else broadcast_log(N, S)
        lo, hi = self._interval(logX, level)
        return (float(lo[0]), float(hi[0])) if scalar else (lo, hi)

    def _fit_covariates(self) -> np.ndarray:
        keys = ("N", "S", "D") if self.has_D else ("N", "S")
        return np.vstack([self.data[k] for k in keys])


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
    Huber loss (``delta``) on log-loss residuals summed over points, L-BFGS (batched) from every point of ``init_grid``
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
    params = _optimum_params(_state_params, theta, order)
    samples = _replicate_samples(reps, _state_params, params, info) if bootstrap else {}
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
