"""Figures of the state-size and context laws: loss vs state size, the state term, loss vs context."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from scaling.analysis.plots import (
    _WORDS,
    LABELS,
    _family_handles,
    _figure,
    _ordered_families,
    _plain_log_axis,
    family_style,
    lower_envelope,
    sci,
)

__all__ = ["plot_loss_vs_context", "plot_loss_vs_state", "plot_state_law", "state_contexts"]


# --------------------------------------------------------------------------------------------------------------
# Loss vs state size


def _budget_cells(runs: pd.DataFrame) -> list[tuple[float | None, pd.DataFrame]]:
    """Runs split by FLOP budget (ascending); one cell of all runs when the sweep is not FLOP-matched."""
    if "budget" in runs and runs["budget"].notna().all() and len(runs):
        return [(float(b), g) for b, g in runs.groupby("budget", sort=True)]
    return [(None, runs)]


def _budget_title(b: float | None) -> str:
    return f"C = {sci(b)} FLOPs" if b is not None else "all runs (not FLOP-matched)"


def state_contexts(runs: pd.DataFrame) -> list[float]:
    """The training contexts at which some mixer family has runs with >= 2 distinct state sizes (where a loss vs
    state-size line exists)."""
    return sorted(ctx for ctx, g in runs.groupby("context") if (g.groupby("family")["state_size"].nunique() > 1).any())


def plot_loss_vs_state(runs: pd.DataFrame, fits: Sequence[tuple[str, Any, dict]] = (), *,
                       loss: str = "final_val_loss", n_col: str = "non_embedding_params") -> Figure:
    """Final loss against state size: rows = training contexts, columns = FLOP budgets; one line per family.

    Each family's line joins its best (lowest) loss at each state size in the cell; faint markers are all its
    runs. Only contexts where some family has >= 2 state sizes get a row (:func:`state_contexts`).
    ``fits``: ``(family, StateLawFit, keys)`` with ``keys["context"]`` the context it was fitted at (None: all);
    its curve (dashed) is the law along S at the N and D of the family's best run in that cell.
    """
    runs = runs[runs[loss].notna() & (runs["state_size"] > 0)]
    contexts = state_contexts(runs)
    cells_by_ctx = [(ctx, _budget_cells(runs[runs["context"] == ctx])) for ctx in contexts]
    ncols = max((len(c) for _, c in cells_by_ctx), default=1)
    nrows = max(len(contexts), 1)
    fig, axes = _figure(nrows, ncols, panel=(5.2, 4.0))
    families = _ordered_families(runs)
    fit_of = {}
    for fam, fit, keys in fits:
        fit_of[(fam, keys.get("context"))] = fit
    drew_fit = False
    for r, (ctx, cells) in enumerate(cells_by_ctx):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(cells):
                ax.set_visible(False)
                continue
            budget, cell = cells[c]
            for fam in families:
                sub = cell[cell["family"] == fam]
                if not len(sub):
                    continue
                st = family_style(fam)
                ax.scatter(sub["state_size"], sub[loss], color=st["color"], marker=st["marker"], s=18, alpha=0.35)
                ex, ey = lower_envelope(sub["state_size"], sub[loss])
                ax.plot(ex, ey, color=st["color"], marker=st["marker"], lw=1.8, ms=5)
                fit = fit_of.get((fam, ctx), fit_of.get((fam, None)))
                if fit is not None:
                    b = sub.loc[sub[loss].idxmin()]
                    S = np.geomspace(sub["state_size"].min() / 1.5, sub["state_size"].max() * 1.5, 80)
                    D = float(b["tokens"]) if fit.has_D else None
                    ax.plot(S, fit.predict(float(b[n_col]), S, D), color=st["color"], ls="--", lw=1.2)
                    drew_fit = True
            ax.set_xscale("log")
            ax.set_yscale("log")
            _plain_log_axis(ax.yaxis)
            ax.set_xlabel(LABELS["state"])
            ax.set_ylabel(f"final {_WORDS.get(loss.split('_')[1], loss)} loss (nats/token)")
            ttl = _budget_title(budget)
            if len(contexts) > 1:
                ttl += f", context {int(ctx):,}"
            ax.set_title(ttl, fontsize=10)
            ax.grid(True, which="both", alpha=0.25)
    handles = _family_handles(families, line=True)
    if drew_fit:
        handles.append(Line2D([], [], color="0.3", ls="--", label="state-law fit at the best\nrun's N and D"))
    axes[0, 0].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle("Loss vs state size at fixed compute (markers: runs; line: best loss with at most that state)",
                 fontsize=12)
    return fig


def plot_state_law(items: Sequence[tuple[str, Any]]) -> Figure:
    """One panel per :class:`~scaling.analysis.fits.StateLawFit` (``items``: ``(label, fit)``): the loss with the
    fitted parameter and data terms removed, L - A/N^alpha [- C/D^beta], against S, and the fitted E + B/S^gamma.
    Points off the curve are the fit's residuals; the panel title gives gamma and its 95% interval.
    """
    ncols = min(3, len(items))
    nrows = -(-len(items) // ncols)
    fig, axes = _figure(nrows, ncols, panel=(5.0, 3.9))
    for ax in axes.flat[len(items):]:
        ax.set_visible(False)
    for ax, (label, fit) in zip(axes.flat, items, strict=False):
        p, d = fit.params, fit.data
        adj = np.asarray(d["loss"]) - p["A"] / np.asarray(d["N"]) ** p["alpha"]
        if fit.has_D:
            adj = adj - p["C"] / np.asarray(d["D"]) ** p["beta"]
        fam = label.split(" ")[0]
        st = family_style(fam)
        ax.scatter(d["S"], adj, color=st["color"], marker=st["marker"], s=18, alpha=0.7, label="runs")
        S = np.geomspace(np.min(d["S"]) / 1.5, np.max(d["S"]) * 1.5, 100)
        with np.errstate(over="ignore", invalid="ignore"):
            curve = p["E"] + p["B"] / S ** p["gamma"]
        ax.plot(S, curve, color="black", lw=1.5, label=r"fit $E + B/S^{\gamma}$")
        # the axes follow the runs: a law whose state term is not identified (|gamma| large) shoots off beyond them
        span = float(np.ptp(adj)) or max(abs(float(np.mean(adj))), 1e-3)
        ax.set_ylim(float(np.min(adj)) - 0.5 * span, float(np.max(adj)) + 0.5 * span)
        ax.axhline(p["E"], color="0.5", ls=":", lw=1, label=f"E = {p['E']:.3f}")
        ci = fit.ci.get("gamma")
        ci_text = f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        ax.set_title(f"{label}\n" + r"$\gamma$" + f" = {p['gamma']:.3f}{ci_text}", fontsize=10)
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        ax.set_xlabel(LABELS["state"])
        ax.set_ylabel(r"$L - A/N^{\alpha}$" + (r"$ - C/D^{\beta}$" if fit.has_D else "") + " (nats/token)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    fig.suptitle("State-size law: loss less the fitted parameter (and data) terms, against state size",
                 fontsize=12)
    return fig


# --------------------------------------------------------------------------------------------------------------
# Loss vs context


def plot_loss_vs_context(runs: pd.DataFrame, fits: Sequence[tuple[str, Any]] = (), *,
                         loss: str = "final_val_loss") -> Figure:
    """Final loss against training context, one panel per FLOP budget, one line per mixer family.

    A family's line joins its best loss at each context in the budget (faint markers: all its runs). ``fits``:
    ``(family, ContextLawFit)`` of a family's runs; each budget's fitted optimum is marked with a vertical tick.
    """
    runs = runs[runs[loss].notna() & (runs["context"] > 0)]
    cells = _budget_cells(runs)
    ncols = min(3, len(cells))
    nrows = -(-len(cells) // ncols)
    fig, axes = _figure(nrows, ncols, panel=(5.2, 4.0))
    for ax in axes.flat[len(cells):]:
        ax.set_visible(False)
    families = _ordered_families(runs)
    for ax, (budget, cell) in zip(axes.flat, cells, strict=False):
        for fam in families:
            sub = cell[cell["family"] == fam]
            if not len(sub):
                continue
            st = family_style(fam)
            ax.scatter(sub["context"], sub[loss], color=st["color"], marker=st["marker"], s=18, alpha=0.35)
            best = sub.loc[sub.groupby("context")[loss].idxmin()].sort_values("context")
            ax.plot(best["context"], best[loss], color=st["color"], marker=st["marker"], lw=1.6, ms=5)
        for fam, fit in fits:
            bc = np.asarray(fit.data["budget_C"], dtype=np.float64)
            if budget is None or not len(bc):
                continue
            g = int(np.argmin(np.abs(np.log(bc) - math.log(budget))))
            if abs(math.log(bc[g]) - math.log(budget)) < 0.05 and not fit.data["budget_extrapolated"][g]:
                ax.plot([fit.data["budget_context_opt"][g]] * 2, [0, 0.08], transform=ax.get_xaxis_transform(),
                        color=family_style(fam)["color"], lw=2.2, solid_capstyle="butt")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel(LABELS["context"])
        ax.set_ylabel(f"final {_WORDS.get(loss.split('_')[1], loss)} loss (nats/token)")
        ax.set_title(_budget_title(budget), fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
    handles = _family_handles(families, line=True)
    if fits:
        handles.append(Line2D([], [], color="0.3", lw=2.2, label="fitted optimal context (bottom tick;\n"
                              "only inside the contexts trained)"))
    axes.flat[0].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle("Loss vs training context at fixed compute (line: best run per context)", fontsize=13)
    return fig
