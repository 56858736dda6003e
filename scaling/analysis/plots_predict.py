"""Figures of prediction: held-out runs, predicted against measured (scaling.analysis.holdout)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from scaling.analysis.plots import _figure, family_style, sci

__all__ = ["plot_holdout", "plot_optimum"]

_LAW_STYLE = {"approach 3: L(N, D)": ("o", "#1f77b4"), "state law: L(N, S, D)": ("s", "#d62728")}


def plot_holdout(pred: pd.DataFrame, level: float = 0.9) -> Figure:
    """Predicted against measured final loss of each held-out run, one panel per mixer family: the marker is the
    law's prediction, the vertical bar its ``level`` prediction interval, the horizontal bar +-2 standard errors of
    the measured loss; on the diagonal the prediction is exact. Hollow markers: the interval missed the run."""
    fams = sorted(pred["family"].unique())
    fig, axes = _figure(1, max(len(fams), 1), panel=(4.6, 4.2))
    for ax, fam in zip(axes.flat, fams, strict=False):
        sub = pred[pred["family"] == fam]
        se2 = 2 * sub["measured_se"].fillna(0.0) if "measured_se" in sub else 0.0
        lo_all = min(sub["lo"].min(), (sub["measured"] - se2).min())
        hi_all = max(sub["hi"].max(), (sub["measured"] + se2).max())
        # a square panel holding every interval and the diagonal
        pad = 0.03 * (hi_all - lo_all)
        lim = (lo_all - pad, hi_all + pad)
        ax.plot(lim, lim, color="0.6", lw=1, zorder=1)
        for law, g in sub.groupby("law", sort=True):
            marker, col = _LAW_STYLE.get(law, ("^", "0.3"))
            yerr = np.vstack([g["predicted"] - g["lo"], g["hi"] - g["predicted"]])
            se = g["measured_se"].to_numpy(float) if "measured_se" in g else np.full(len(g), np.nan)
            xerr = np.where(np.isfinite(se), 2 * se, 0.0)
            ax.errorbar(g["measured"], g["predicted"], yerr=yerr, xerr=xerr, fmt="none", ecolor=col, alpha=0.6,
                        lw=1.2, capsize=3, zorder=2)
            cov = g["covered"].to_numpy(bool)
            ax.scatter(g["measured"][cov], g["predicted"][cov], marker=marker, s=40, color=col,
                       edgecolors="black", linewidths=0.5, zorder=3)
            ax.scatter(g["measured"][~cov], g["predicted"][~cov], marker=marker, s=40, facecolors="white",
                       edgecolors=col, linewidths=1.2, zorder=3)
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_aspect("equal")
        ax.set_xlabel("measured final validation loss (nats/token)")
        ax.set_ylabel("predicted loss (nats/token)")
        budgets = ", ".join(f"{b:.2g}" for b in sorted(sub["budget"].unique()))
        ax.set_title(f"{fam}: {budgets} FLOPs", color=family_style(fam)["color"], fontsize=10)
        ax.grid(True, alpha=0.25)
    handles = [Line2D([], [], marker=m, color=c, ls="", label=law) for law, (m, c) in _LAW_STYLE.items()
               if law in set(pred["law"])]
    handles.append(Line2D([], [], color="0.4", lw=1.2, label=f"{100 * level:.0f}% prediction interval (vertical), "
                          "measured ± 2 SE (horizontal)"))
    handles.append(Line2D([], [], marker="o", color="0.4", ls="", markerfacecolor="white",
                          label="interval missed the run"))
    # below the panels: inside one, the legend hid the intervals of the runs it covered
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle("Held-out runs, predicted by the laws\nfitted on the smaller budgets", fontsize=10)
    return fig


def plot_optimum(records, optimum: pd.DataFrame) -> Figure:
    """Approach 2's N_opt(C) per group extrapolated to the held-out budget (the line, its 95% band from the fit's
    replicates, the fitted budgets' parabola minima as squares) against the minimum of the held-out runs' own
    parabola (a star; hollow when the band misses it): :func:`scaling.analysis.holdout.predict_optimum`."""
    fits = {r.keys.get("model"): r.fit for r in records if r.kind == "isoflop" and r.ok}
    rows = [r for r in optimum.itertuples() if (r.variant or r.family) in fits]
    fig, axes = _figure(1, max(len(rows), 1), panel=(4.6, 4.0))
    for ax, row in zip(axes.flat, rows, strict=False):
        fit, col = fits[row.variant or row.family], family_style(row.family)["color"]
        C = np.geomspace(float(np.min(fit.data["budget_C"])), row.budget, 50)
        ax.plot(C, fit.N_opt(C), color=col, lw=1.5, label=f"approach 2: N_opt ~ C^{fit.a:.2f}")
        if fit.samples:
            ax.fill_between(C, *fit.N_opt_interval(C), color=col, alpha=0.15, lw=0, label="95% band (replicates)")
        ax.scatter(fit.data["budget_C"], fit.data["budget_N_opt"], marker="s", color=col, edgecolors="black",
                   linewidths=0.5, zorder=3, label="fitted budgets' minima")
        if np.isfinite(row.measured):
            ax.scatter([row.budget], [row.measured], marker="*", s=160, zorder=4, edgecolors=col, linewidths=1.2,
                       facecolors=col if row.covered else "white", label="held-out runs' minimum")
        ax.scatter([row.budget] * len(row.sizes), row.sizes, marker="|", s=80, color="0.4", zorder=2,
                   label="held-out sizes")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = sorted({*map(float, fit.data["budget_C"]), float(row.budget)})
        ax.set_xticks(ticks, [sci(c) for c in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel("compute-optimal model size N_opt")
        ax.set_title(f"{row.variant or row.family}: held out at {row.budget:.2g}", color=col, fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Approach 2's compute-optimal size, extrapolated to the held-out budget", fontsize=10)
    return fig
