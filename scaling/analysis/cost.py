"""The training cost of a run as the fits see it: FLOPs per token from the accounting, as a power law.

Every allocation the analysis reports (compute-optimal N, D and S at a budget C) spends C = cost(N [, S]) x D,
where cost is the training FLOPs per token of the mixer at the sweep's context: 3 x
``scaling.accounting.flops_per_token`` (every matmul plus the mixer's context term), the same number the sweep
used to match budgets. Chinchilla's C = 6ND is the special case cost = 6 N. The runs of a fit group carry their
own cost (``flops_per_token`` column); :func:`fit_cost` fits log cost = log k + e log N [+ f log S] by least
squares, so that the allocation can be solved for any N (and S) between and beyond the runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CostModel", "fit_cost"]


@dataclass(frozen=True)
class CostModel:
    """Training FLOPs per token = k N^e S^f (f = 0 without a state term); ``rms``: log residual RMS of the fit."""

    k: float
    e: float
    f: float = 0.0
    rms: float = 0.0

    def __call__(self, N: Any, S: Any = None) -> np.ndarray:
        out = self.k * np.asarray(N, np.float64) ** self.e
        if self.f:
            if S is None:
                raise ValueError("S: this cost model has a state term; pass the state size")
            out = out * np.asarray(S, np.float64) ** self.f
        return out

    def to_dict(self) -> dict[str, float]:
        return {"k": self.k, "e": self.e, "f": self.f, "rms": self.rms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostModel:
        return cls(float(d["k"]), float(d["e"]), float(d.get("f", 0.0)), float(d.get("rms", 0.0)))

    def describe(self, n_label: str = "N") -> str:
        s = f"{self.k:.3g} x {n_label}^{self.e:.3f}"
        return s + (f" x S^{self.f:.3f}" if self.f else "")


def fit_cost(N: Any, train_flops_per_token: Any, S: Any = None) -> CostModel:
    """Least squares of log cost on log N (and log S when given and it varies apart from N)."""
    N = np.asarray(N, np.float64)
    y = np.log(np.asarray(train_flops_per_token, np.float64))
    cols = [np.ones_like(N), np.log(N)]
    use_S = S is not None and len(np.unique(np.asarray(S))) > 1
    if use_S:
        cols.append(np.log(np.asarray(S, np.float64)))
    X = np.stack(cols, axis=1)
    if len(np.unique(N)) < 2:
        raise ValueError("fit_cost: needs at least two model sizes")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    rms = float(np.sqrt(np.mean((y - X @ coef) ** 2)))
    return CostModel(float(np.exp(coef[0])), float(coef[1]), float(coef[2]) if use_S else 0.0, rms)
