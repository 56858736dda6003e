"""Scaling-law analysis: fits (Chinchilla approaches 1-3, state-size and context-length laws), the sweep report
(``report``: sweep.db -> DataFrames -> fits -> figures and report.md) and its figures (``plots``)."""

import importlib

from scaling.analysis.fits import (
    PARAMETRIC_GRID,
    STATE_GRID,
    STATE_GRID_WITH_D,
    ContextLawFit,
    EnvelopeFit,
    IsoflopFit,
    ParametricFit,
    StateLawFit,
    compute_optimal_state,
    fit_context_law,
    fit_envelope,
    fit_from_dict,
    fit_from_json,
    fit_isoflop,
    fit_parametric,
    fit_state_law,
    loss_vs_state,
)

__all__ = [
    "PARAMETRIC_GRID",
    "STATE_GRID",
    "STATE_GRID_WITH_D",
    "ContextLawFit",
    "EnvelopeFit",
    "IsoflopFit",
    "ParametricFit",
    "StateLawFit",
    "compute_optimal_state",
    "fit_context_law",
    "fit_envelope",
    "fit_from_dict",
    "fit_from_json",
    "fit_isoflop",
    "fit_parametric",
    "fit_state_law",
    "loss_vs_state",
    "FitRecord",
    "SweepData",
    "fit_sweep",
    "load_curves",
    "load_runs",
    "load_sweep",
    "write_report",
]

# The report pulls in pandas and matplotlib: imported on first use, so that the fits alone stay light.
_REPORT_EXPORTS = ("FitRecord", "SweepData", "fit_sweep", "load_curves", "load_runs", "load_sweep",
                   "write_report")


def __getattr__(name):
    if name in _REPORT_EXPORTS:
        return getattr(importlib.import_module("scaling.analysis.report"), name)
    if name in ("report", "plots"):
        return importlib.import_module(f"scaling.analysis.{name}")
    raise AttributeError(f"module 'scaling.analysis' has no attribute {name!r}")
