"""Shared test utilities."""

import numpy as np


def rel_err(a, b) -> float:
    """Norm-relative difference ||a - b|| / max(||b||, tiny)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
