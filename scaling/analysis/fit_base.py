"""The common part of every fit result (:class:`_Fit`: params, ci, residuals, data, samples, info, and their JSON),
the input validation the fits share, and bootstrap percentile intervals. :mod:`scaling.analysis.fits` documents
the contract."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

CI_PERCENTILES = (2.5, 97.5)


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


def _check_loss_sd(loss_sd: Any, n: int, fn: str) -> np.ndarray | None:
    """``loss_sd`` (None, a scalar or one value per point) as None or a float array [n] of finite values >= 0."""
    if loss_sd is None:
        return None
    try:
        sd = np.broadcast_to(np.asarray(loss_sd, np.float64), (n,))
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: loss_sd must be a number or one value per point ({n}), got {loss_sd!r}") from None
    if not (np.all(np.isfinite(sd)) and np.all(sd >= 0)):
        raise ValueError(f"{fn}: loss_sd must be finite and >= 0")
    return sd


def _check_loss_sd_dof(dof: Any, sd: np.ndarray | None, fn: str) -> int | None:
    """``loss_sd_dof`` (None, or the degrees of freedom of an estimated ``loss_sd``: an integer >= 1)."""
    if dof is None:
        return None
    if isinstance(dof, bool) or not isinstance(dof, (int, np.integer)) or dof < 1:
        raise ValueError(f"{fn}: loss_sd_dof must be None or an integer >= 1 (the degrees of freedom of the "
                         f"estimated loss_sd), got {dof!r}")
    if sd is None:
        raise ValueError(f"{fn}: loss_sd_dof needs loss_sd")
    return int(dof)


def _sd_scale(rng: np.random.Generator, dof: int | None) -> float:
    """One replicate's factor on an estimated noise SD: 1 when the SD is known (``dof`` None), else
    sqrt(dof / chi2(dof)), a draw of sigma / s given s from ``dof`` degrees of freedom. With a handful of seeds the
    SD is itself uncertain (at 2 dof its 95% range is 0.52-6.3 times the estimate); drawing it per replicate makes
    the interval a Student-t-like one instead of a normal one with the estimate plugged in."""
    return 1.0 if dof is None else math.sqrt(dof / rng.chisquare(dof))


def _check_rtol(rtol: Any) -> float:
    if not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise ValueError(f"rtol: must be a number in (0, 1) (relative FLOP tolerance), got {rtol!r}")
    return float(rtol)


def _check_delta(delta: Any) -> float:
    if not isinstance(delta, (int, float)) or isinstance(delta, bool) or not delta > 0 or not math.isfinite(delta):
        raise ValueError(f"delta: must be a positive number (Huber threshold on log-loss residuals), got {delta!r}")
    return float(delta)


def _check_bootstrap_starts(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"bootstrap_starts: must be an integer >= 1, got {k!r}")
    return int(k)


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


def _point_law(fit: str, make: Callable, *args: Any) -> Any:
    """The point estimate ``make(*args)`` of a power law through fitted optima; a ValueError naming ``fit`` when its
    coefficient k = exp(intercept) overflows (a slope so steep that the optima do not pin the law down). Bootstrap
    replicates that overflow are failed replicates instead (``info["bootstrap_failed"]``)."""
    try:
        return make(*args)
    except OverflowError:
        raise ValueError(f"{fit}: the power law through the optima runs off to infinity (its coefficient overflows "
                         "float64): the optima do not pin down its slope; budgets further apart may") from None


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least-squares y = intercept + slope x; returns (slope, intercept, residuals y - fit)."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept), y - (intercept + slope * x)
