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
summed over points, and L-BFGS runs from every point of a grid, keeping the best. The state-size law
reuses the same machinery with a state term (and optionally a data term).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from scaling.analysis.allocation import EnvelopeFit, IsoflopFit, fit_envelope, fit_isoflop
from scaling.analysis.context_law import ContextLawFit, fit_context_law
from scaling.analysis.fit_base import _Fit
from scaling.analysis.parametric import PARAMETRIC_GRID, ParametricFit, fit_parametric
from scaling.analysis.state_law import (
    STATE_GRID,
    STATE_GRID_WITH_D,
    StateLawFit,
    compute_optimal_state,
    fit_state_law,
    loss_vs_state,
)

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
