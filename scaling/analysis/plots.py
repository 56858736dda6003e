"""Figures of a sweep: loss vs FLOPs, isoFLOP parabolas, compute-optimal allocation, loss vs state size and context.

Every function takes the DataFrames of :mod:`scaling.analysis.report` (``runs``: one row per finished run;
``curves``: one row per logged step) and/or fitted laws as ``(label, fit)`` pairs, and returns a
``matplotlib.figure.Figure`` built without pyplot (no global state, no GUI backend: PNG is drawn by Agg, SVG by
the SVG backend), so the same code serves ``scaling analyze``, notebooks and tests. :func:`save_figure` writes
PNG and SVG.

Units on the axes: training compute in FLOPs (3 x forward), model size in parameters, data in tokens, state size
in elements per sequence (``scaling.accounting.state_size``), context in tokens, loss in nats per token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = [
    "FAMILY_STYLE",
    "curve_envelope",
    "lower_envelope",
    "plot_allocation",
    "plot_isoflops",
    "plot_loss_vs_flops",
    "save_figure",
    "sci",
]

# One colour and marker per mixer family, the same in every figure.
FAMILY_STYLE: dict[str, dict[str, str]] = {
    "attention": {"color": "#1f77b4", "marker": "o"},
    "retention": {"color": "#d62728", "marker": "s"},
    "mamba": {"color": "#2ca02c", "marker": "^"},
    "hybrid": {"color": "#9467bd", "marker": "D"},
    "gla": {"color": "#ff7f0e", "marker": "v"},
    "gated_delta": {"color": "#8c564b", "marker": "P"},
    "based": {"color": "#e377c2", "marker": "X"},
}
_OTHER_STYLE = {"color": "#7f7f7f", "marker": "h"}  # filled markers only: figures draw dominated points hollow
_STATE_CMAP = "viridis"
_PANELS_PER_PAGE = 12

LABELS = {
    "flops": "training compute C (FLOPs)",
    "state": "state size S (elements per sequence)",
    "context": "training context T (tokens)",
    "tokens": "training data D (tokens)",
}


def family_style(family: str) -> dict[str, str]:
    return FAMILY_STYLE.get(family, _OTHER_STYLE)


def sci(x: float, digits: int = 2) -> str:
    """Compact scientific notation for labels: 1e15, 3e15, 1.5e12 (``digits`` significant digits)."""
    if x is None or not np.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    exp = math.floor(math.log10(abs(x)))
    mant = round(x / 10**exp, digits - 1)
    if abs(mant) >= 10:
        mant, exp = mant / 10, exp + 1
    return f"{mant:g}e{exp}"


def _figure(nrows: int, ncols: int, panel: tuple[float, float] = (5.2, 4.0), extra_w: float = 0.0):
    fig = Figure(figsize=(panel[0] * ncols + extra_w, panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``fig`` as ``out_dir/name.<fmt>`` for each format; returns the paths.

    PNG at 150 dpi. SVG keeps its text as text (smaller, searchable) and carries no date, and its ids come from a
    fixed salt, so rerunning the analysis on the same data rewrites identical files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "statescale"}):
        # Constrained layout measures every label on each save; lay out once and keep it for every format.
        fig.draw_without_rendering()
        engine = fig.get_layout_engine()
        fig.set_layout_engine("none")
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            meta = {"Date": None} if fmt == "svg" else {"Software": None}
            fig.savefig(path, dpi=150, metadata=meta)
            paths.append(path)
    fig.set_layout_engine(engine)
    return paths


def lower_envelope(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """The points whose ``y`` is below every point with smaller or equal ``x`` (the Pareto frontier), sorted by x.

    x, y: arrays [n] (e.g. training FLOPs and loss of every logged point). Returns (x [m], y [m]).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    prev = np.concatenate([[np.inf], np.minimum.accumulate(y)[:-1]])
    keep = y < prev
    return x[keep], y[keep]


_WORDS = {"val": "validation", "train": "training"}
_NICE = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)


def _plain_log_axis(axis) -> None:
    """Tick labels as plain numbers (2.5, 3, 4) on a log axis spanning less than about two decades, where the
    default labels only 10^k and a few n x 10^k; 4 to 8 ticks from 1-1.2-1.5-2-2.5-3-4-5-6-7-8 x 10^k."""
    axis.axes.autoscale_view()  # autoscaling is lazy: settle the limits before reading them
    lo, hi = sorted(axis.get_view_interval())
    if not (lo > 0 and hi / lo < 150):
        return
    cands = sorted({m * 10.0**e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                    for m in _NICE})
    inside = [v for v in cands if lo <= v <= hi]
    ticks = inside
    for step in range(1, len(inside) + 1):
        ticks = inside[::step]
        if len(ticks) <= 8:
            break
    if len(ticks) < 3:  # a narrow range: evenly spaced round numbers (nearly even on the log scale too)
        ticks = [v for v in matplotlib.ticker.MaxNLocator(nbins=5).tick_values(lo, hi) if lo <= v <= hi]
    if len(ticks) < 2:
        return
    axis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def curve_envelope(curves: Sequence[tuple[Any, Any]], n_grid: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The lowest loss over several loss curves at each of ``n_grid`` log-spaced compute values.

    ``curves``: ``(C [k], loss [k])`` per run, C increasing; each is interpolated linearly in (log C, log loss)
    inside its own range, as Chinchilla's approach 1 does. Returns (C [m], loss [m]) where some curve is defined.
    """
    lo = min(float(np.min(c)) for c, _ in curves)
    hi = max(float(np.max(c)) for c, _ in curves)
    grid = np.log(np.geomspace(lo, hi, n_grid))
    best = np.full(n_grid, np.inf)
    for c, loss in curves:
        lc, ll = np.log(np.asarray(c, float)), np.log(np.asarray(loss, float))
        inside = (grid >= lc[0]) & (grid <= lc[-1])
        if len(lc) == 1:
            inside = np.isclose(grid, lc[0])
        best[inside] = np.minimum(best[inside], np.interp(grid[inside], lc, ll))
    ok = np.isfinite(best)
    return np.exp(grid[ok]), np.exp(best[ok])


def _state_norm(values: Any) -> LogNorm | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return None
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:  # a single state size: widen so that the colour scale still exists
        lo, hi = lo / 1.5, hi * 1.5
    return LogNorm(vmin=lo, vmax=hi)


def _family_handles(families: Sequence[str], *, line: bool = False) -> list[Line2D]:
    out = []
    for fam in families:
        st = family_style(fam)
        out.append(Line2D([], [], color=st["color"] if line else "0.35", marker=st["marker"],
                          ls="-" if line else "", label=fam, markersize=6))
    return out


def _ordered_families(runs: pd.DataFrame) -> list[str]:
    known = [f for f in FAMILY_STYLE if f in set(runs["family"])]
    return known + sorted(set(runs["family"]) - set(known))


# --------------------------------------------------------------------------------------------------------------
# Loss vs FLOPs with the frontier


def ema(y: Any, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average (bias-corrected, as TensorBoard's smoothing) of a 1-D series in order."""
    y = np.asarray(y, np.float64)
    out, acc = np.empty_like(y), 0.0
    for i, v in enumerate(y):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight ** (i + 1))
    return out


def plot_loss_vs_flops(runs: pd.DataFrame, curves: pd.DataFrame | None = None, *, curve_loss: str = "train_loss",
                       final_loss: str = "final_val_loss", frontiers: Sequence[tuple[str, Any]] = ()) -> Figure:
    """Loss against training FLOPs for every run, coloured by state size (log scale), with the fitted frontiers.

    ``runs``: one row per run with ``run_id``, ``family``, ``state_size``, ``flops``, ``final_loss``;
    ``curves``: one row per logged step with ``run_id``, ``flops``, ``curve_loss`` (optional; single-batch
    training losses are smoothed by an EMA, :func:`ema`, and the legend says which loss they are). Markers (shape =
    mixer family) are the final losses on the held-out evaluation set. The black lines are the compute-optimal
    frontiers of the approach-1 fits in ``frontiers`` ((label, EnvelopeFit) pairs): the very points those fits
    were fitted to, so the figure and the fit are one code path.
    """
    fig, axes = _figure(1, 1, panel=(7.5, 5.0), extra_w=1.2)
    ax = axes[0, 0]
    norm = _state_norm(runs["state_size"])
    cmap = matplotlib.colormaps[_STATE_CMAP]

    def colour(s):
        return cmap(norm(s)) if norm is not None and np.isfinite(s) and s > 0 else "0.5"

    state_of = dict(zip(runs["run_id"], runs["state_size"].astype(float), strict=True))
    has_curves = bool(curves is not None and len(curves) and curve_loss in curves)
    smooth = curve_loss.startswith("train")
    if has_curves:
        c = curves[curves["run_id"].isin(state_of) & curves[curve_loss].notna() & (curves["flops"] > 0)]
        n = 0
        for rid, g in c.groupby("run_id", sort=False):
            g = g.sort_values("flops")
            y = ema(g[curve_loss]) if smooth else g[curve_loss]
            ax.plot(g["flops"], y, color=colour(state_of[rid]), lw=0.9, alpha=0.55, zorder=1)
            n += 1
        has_curves = n > 0
    fin = runs[runs[final_loss].notna() & (runs["flops"] > 0)]
    for fam in _ordered_families(fin):
        sub = fin[fin["family"] == fam]
        st = family_style(fam)
        ax.scatter(sub["flops"], sub[final_loss], c=[colour(s) for s in sub["state_size"].astype(float)],
                   marker=st["marker"], s=36, edgecolors="black", linewidths=0.5, zorder=3)
    styles = ("-", "--", ":", "-.")
    for i, (label, fit) in enumerate(frontiers):
        d = fit.data
        order = np.argsort(d["frontier_C"])
        ax.plot(d["frontier_C"][order], d["frontier_loss"][order], color="black", lw=2.0, ls=styles[i % 4],
                zorder=4, label=f"frontier, approach 1: {label}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel(LABELS["flops"])
    curve_what = _WORDS.get(curve_loss.split("_")[0], curve_loss)
    final_what = _WORDS.get(final_loss.split("_")[1], final_loss)
    same = curve_what == final_what
    ax.set_ylabel(f"{curve_what} loss (nats/token)" if same or not has_curves else "loss (nats/token)")
    ax.set_title("Loss vs compute, coloured by state size")
    ax.grid(True, which="both", alpha=0.25)
    handles = _family_handles(_ordered_families(fin))
    for h in handles:
        h.set_label(f"{h.get_label()} (final {final_what} loss)")
    if has_curves:
        what = f"{curve_what} loss" + (", single batches, EMA 0.9" if smooth else "")
        handles.append(Line2D([], [], color="0.5", lw=1, label=f"curves: {what}"))
    for i, (label, _) in enumerate(frontiers):
        handles.append(Line2D([], [], color="black", lw=2, ls=styles[i % 4], label=f"approach-1 frontier: {label}"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
    if norm is not None:
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=LABELS["state"], pad=0.01)
    return fig


# --------------------------------------------------------------------------------------------------------------
# Approach 2: isoFLOP parabolas


def plot_isoflops(items: Sequence[tuple[str, Any]], *, n_label: str = "non-embedding parameters",
                  loss_label: str = "final validation loss (nats/token)") -> list[Figure]:
    """One panel per :class:`~scaling.analysis.fits.IsoflopFit` (``items``: ``(group label, fit)``), 12 a figure.

    Each panel: the runs of every budget (loss vs N, colour = budget), the fitted parabola in log N, and the
    optimum N_opt (star) with its bootstrap 95% interval when the fit has one.
    """
    figs = []
    for page in range(0, len(items), _PANELS_PER_PAGE):
        chunk = items[page:page + _PANELS_PER_PAGE]
        ncols = min(3, len(chunk))
        nrows = -(-len(chunk) // ncols)
        fig, axes = _figure(nrows, ncols, panel=(5.0, 3.9))
        for ax in axes.flat[len(chunk):]:
            ax.set_visible(False)
        for ax, (label, fit) in zip(axes.flat, chunk, strict=False):
            _isoflop_panel(ax, label, fit, n_label, loss_label)
        n_pages = -(-len(items) // _PANELS_PER_PAGE)
        suffix = f" ({page // _PANELS_PER_PAGE + 1}/{n_pages})" if n_pages > 1 else ""
        fig.suptitle(f"IsoFLOP profiles (Chinchilla approach 2){suffix}", fontsize=13)
        figs.append(fig)
    return figs


def _isoflop_panel(ax, label, fit, n_label, loss_label):
    d = fit.data
    budgets = np.asarray(d["budget_C"], dtype=np.float64)
    cmap = matplotlib.colormaps["plasma"]
    lb = np.log(budgets)
    span = lb.max() - lb.min()
    for g, C in enumerate(budgets):
        col = cmap(0.1 + 0.75 * ((lb[g] - lb.min()) / span if span > 0 else 0.5))
        sel = np.asarray(d["group"]) == g
        N = np.asarray(d["N"])[sel]
        ax.scatter(N, np.asarray(d["loss"])[sel], color=col, s=22, zorder=3, label=f"C = {sci(C)} FLOPs")
        grid = np.geomspace(N.min() / 1.3, N.max() * 1.3, 100)
        ax.plot(grid, fit.loss_curve(g, grid), color=col, lw=1.3, zorder=2)
        n_opt, l_opt = d["budget_N_opt"][g], d["budget_loss_opt"][g]
        if "budget_N_opt_lo" in d and np.isfinite(d["budget_N_opt_lo"][g]):
            lo, hi = d["budget_N_opt_lo"][g], d["budget_N_opt_hi"][g]
            ax.errorbar([n_opt], [l_opt], xerr=[[max(n_opt - lo, 0)], [max(hi - n_opt, 0)]], color=col,
                        capsize=3, lw=1, zorder=4)
        ax.scatter([n_opt], [l_opt], marker="*", s=130, color=col, edgecolors="black", linewidths=0.6, zorder=5)
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.set_xlabel(f"model size N ({n_label})")
    ax.set_ylabel(loss_label)
    ci = fit.ci.get("a")
    ci_text = f", 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    ax.set_title(f"{label}\n" + r"$N_{opt} \propto C^{" + f"{fit.a:.3f}" + "}$" + ci_text, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best", title="★ optimum", title_fontsize=8)


# --------------------------------------------------------------------------------------------------------------
# Compute-optimal allocation N_opt(C), D_opt(C)


_APPROACH_STYLE = {
    "envelope": ("-", "o", "approach 1: lower envelope"),
    "isoflop": ("--", "s", "approach 2: isoFLOP minima"),
    "parametric": (":", None, "approach 3: L(N, D) fit, C = accounting cost x D"),
}


def plot_allocation(items: Sequence[tuple[str, str, Any, tuple[float, float]]], *,
                    n_label: str = "non-embedding parameters") -> Figure:
    """N_opt(C) and D_opt(C), side by side, for every fit in ``items``: ``(kind, group label, fit, (C_lo, C_hi))``.

    kind is ``"envelope"`` (frontier points + power law, solid), ``"isoflop"`` (per-budget optima + power law,
    dashed) or ``"parametric"`` (the allocation implied by L(N, D) under the fit's cost model,
    scaling.analysis.cost, or 6ND without one; dotted); the line spans (C_lo, C_hi) FLOPs. Colour = group.
    """
    groups = list(dict.fromkeys(label for _, label, _, _ in items))
    palette = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"]
    colours = {g: palette(i % palette.N) for i, g in enumerate(groups)}
    many = len(groups) > 4
    fig, axes = _figure(1, 2, panel=(6.0, 5.0))
    for kind, label, fit, (c_lo, c_hi) in items:
        ls, marker, _ = _APPROACH_STYLE[kind]
        col = colours[label]
        if kind == "envelope" and len(fit.data["frontier_C"]):  # the frontier spans the curves, not just the ends
            c_lo, c_hi = min(c_lo, np.min(fit.data["frontier_C"])), max(c_hi, np.max(fit.data["frontier_C"]))
        grid = np.geomspace(c_lo, c_hi, 60)
        for ax, fn, key in ((axes[0, 0], fit.N_opt, "N"), (axes[0, 1], fit.D_opt, "D")):
            ax.plot(grid, fn(grid), ls=ls, color=col, lw=1.6)
            if kind == "envelope":
                ax.scatter(fit.data["frontier_C"], fit.data[f"frontier_{key}"], color=col, s=10, alpha=0.6,
                           marker=marker)
            elif kind == "isoflop":
                ax.scatter(fit.data["budget_C"], fit.data[f"budget_{key}_opt"], color=col, s=34, marker=marker,
                           edgecolors="black", linewidths=0.5, zorder=3)
    for ax, what, unit in ((axes[0, 0], r"$N_{opt}(C)$", f"compute-optimal model size ({n_label})"),
                           (axes[0, 1], r"$D_{opt}(C)$", "compute-optimal data D (tokens)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(LABELS["flops"])
        ax.set_ylabel(unit)
        ax.set_title(what)
        ax.grid(True, which="both", alpha=0.25)
    kinds = list(dict.fromkeys(k for k, _, _, _ in items))
    style_handles = [Line2D([], [], color="0.3", ls=_APPROACH_STYLE[k][0], marker=_APPROACH_STYLE[k][1],
                            label=_APPROACH_STYLE[k][2]) for k in kinds]
    axes[0, 0].legend(handles=style_handles, fontsize=8, loc="upper left")
    group_handles = [Line2D([], [], color=colours[g], lw=2.5, label=g) for g in groups]
    if many:
        fig.legend(handles=group_handles, loc="outside lower center", ncols=min(4, len(groups)), fontsize=8,
                   title="group (colour)")
    else:
        axes[0, 1].legend(handles=group_handles, fontsize=8, loc="upper left")
    fig.suptitle("Compute-optimal allocation", fontsize=13)
    return fig
