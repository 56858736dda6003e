"""Prediction intervals for the power-sum laws (approach 3's L(N, D) and the state-size law L(N, S [, D])).

Both laws are fitted in log space as ``log L = LSE(c_1 - p_1 log X_1, ..., c_K - p_K log X_K, e)`` with
``theta = [e, c_1, p_1, ..., c_K, p_K]`` (scaling.analysis.optimize). For a new run at covariates ``x`` the
interval for its log loss is

    f(x; theta_hat) +- t_{n - p, (1 + level) / 2} * sqrt(s^2 + g(x)^T Cov g(x))

- ``s^2 = sum_i r_i^2 / (n - p)``: the scatter of the n fitted runs around the law (residuals r_i in log loss,
  p = len(theta)), the part of a new run's loss that no law predicts (seed, data order, evaluation sample);
- ``Cov = s^2 (J^T J)^+``: the parameter uncertainty by the delta method (Gauss-Newton), J the n x p Jacobian of
  f at the fitted points and g(x) the gradient at x, so extrapolating far from the data widens the interval;
- Student's t with n - p degrees of freedom, since s is itself estimated from few runs.

The interval is then exponentiated (losses are positive; the fit's residuals are multiplicative). Its coverage
is checked on synthetic laws in tests/analysis/test_predict.py (fit, then predict runs at a larger budget).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

__all__ = ["gradient", "log_prediction", "parameter_covariance", "prediction_interval", "residual_scale",
           "sample_thetas"]


def _weights(theta: np.ndarray, logX: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log prediction [n], softmax weights [K + 1, n] of the K power terms and the constant)."""
    T = np.vstack([theta[1::2, None] - theta[2::2, None] * logX, np.full((1, logX.shape[1]), theta[0])])
    m = T.max(axis=0)
    W = np.exp(T - m)
    s = W.sum(axis=0)
    return m + np.log(s), W / s


def log_prediction(theta: Any, logX: Any) -> np.ndarray:
    """log L at log covariates ``logX`` [K, n] for parameters ``theta`` [1 + 2K]."""
    return _weights(np.asarray(theta, np.float64), np.atleast_2d(np.asarray(logX, np.float64)))[0]


def gradient(theta: Any, logX: Any) -> np.ndarray:
    """d log L / d theta at each point: [n, 1 + 2K] (columns e, c_1, p_1, ..., c_K, p_K)."""
    theta = np.asarray(theta, np.float64)
    logX = np.atleast_2d(np.asarray(logX, np.float64))
    _, W = _weights(theta, logX)
    K = logX.shape[0]
    J = np.empty((logX.shape[1], 1 + 2 * K))
    J[:, 0] = W[K]
    J[:, 1::2] = W[:K].T
    J[:, 2::2] = -(W[:K] * logX).T
    return J


def residual_scale(residuals: Any, n_params: int) -> tuple[float, int]:
    """(s, degrees of freedom): s^2 = sum r^2 / (n - p), dof = n - p (at least 1)."""
    r = np.asarray(residuals, np.float64)
    r = r[np.isfinite(r)]
    dof = max(len(r) - n_params, 1)
    return float(np.sqrt(np.sum(r**2) / dof)), dof


def parameter_covariance(theta: Any, logX_fit: Any, residuals: Any) -> np.ndarray:
    """Delta-method covariance of theta: s^2 (J^T J)^+ at the fitted points (pseudo-inverse: exponents and
    coefficients of one term are strongly correlated, so J^T J may be near singular)."""
    theta = np.asarray(theta, np.float64)
    J = gradient(theta, logX_fit)
    s, _ = residual_scale(residuals, len(theta))
    return s**2 * np.linalg.pinv(J.T @ J, rcond=1e-12, hermitian=True)


def prediction_interval(theta: Any, logX_fit: Any, residuals: Any, logX_new: Any,
                        level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) loss bounds for new runs at ``logX_new`` [K, m] (see the module docstring).

    ``logX_fit`` [K, n] and ``residuals`` [n] are those of the fitted runs, in log loss.
    """
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level = {level!r}: must be a coverage probability in (0, 1), e.g. 0.9")
    theta = np.asarray(theta, np.float64)
    logX_new = np.atleast_2d(np.asarray(logX_new, np.float64))
    s, dof = residual_scale(residuals, len(theta))
    cov = parameter_covariance(theta, logX_fit, residuals)
    g = gradient(theta, logX_new)
    var = s**2 + np.maximum(np.einsum("mp,pq,mq->m", g, cov, g), 0.0)
    half = stats.t.ppf(0.5 + level / 2, dof) * np.sqrt(var)
    center = log_prediction(theta, logX_new)
    return np.exp(center - half), np.exp(center + half)


def sample_thetas(theta: Any, logX_fit: Any, residuals: Any, n: int, seed: int = 0) -> np.ndarray:
    """``n`` parameter vectors drawn from the delta-method normal approximation N(theta, Cov): [n, p].

    Used to put intervals on quantities derived from a law (compute-optimal N, D and S at a budget)."""
    theta = np.asarray(theta, np.float64)
    cov = parameter_covariance(theta, logX_fit, residuals)
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(theta, cov, size=n, method="eigh")


class PowerSumPrediction:
    """Mixin of the fits of power-sum laws: ``_fit_covariates()`` gives the fitted runs' covariates [K, n]
    (N, D or N, S [, D]); the fitted theta is ``info["theta"]``, the residuals ``residuals["log_loss"]``."""

    def _fit_covariates(self) -> np.ndarray:  # pragma: no cover - each fit defines it
        raise NotImplementedError

    def _theta(self) -> np.ndarray:
        theta = self.info.get("theta")  # type: ignore[attr-defined]
        if theta is None:
            raise ValueError("this fit carries no theta (info['theta']); refit it to predict with intervals")
        return np.asarray(theta, np.float64)

    def _interval(self, logX_new: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        return prediction_interval(self._theta(), np.log(self._fit_covariates()),
                                   self.residuals["log_loss"], logX_new, level)  # type: ignore[attr-defined]

    @property
    def scatter(self) -> float:
        """s: the residual standard deviation of the fitted runs around the law, in log loss (n - p dof)."""
        return residual_scale(self.residuals["log_loss"], len(self._theta()))[0]  # type: ignore[attr-defined]


def broadcast_log(*xs: Any) -> tuple[np.ndarray, bool]:
    """log of the broadcast covariates as [K, m], and whether they were all scalars."""
    arrs = np.broadcast_arrays(*[np.asarray(x, np.float64) for x in xs])
    scalar = all(np.ndim(x) == 0 for x in xs)
    if np.any(~(np.concatenate([a.ravel() for a in arrs]) > 0)):
        raise ValueError("covariates must be positive (parameters, tokens, state size)")
    return np.log(np.vstack([a.ravel() for a in arrs])), scalar
