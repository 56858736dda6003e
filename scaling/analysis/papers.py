"""Study figures of the paper reproductions (experiments/papers/, docs/papers/), drawn by ``scaling analyze``.

Each function takes the :class:`scaling.analysis.report.SweepData` of a reproduction's sweep and the output
directory, writes PNG + SVG with :func:`scaling.analysis.plots.save_figure`, and returns a
:class:`scaling.analysis.figures.StudyFigure` (files and the markdown table of the plotted numbers), or raises
:class:`scaling.analysis.figures.FigureSkipped` saying what is missing. They are registered by name in
``scaling.analysis.figures.FIGURES``; the fits are those of :mod:`scaling.analysis.fits` (the context law for
the context-size study, Chinchilla's approach 1 for the Mamba scaling curves).

Losses are in nats per token; FLOPs are training FLOPs (3 x forward, ``scaling.accounting``); state sizes are
elements per sequence at the run's training context.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.ticker
import numpy as np
import pandas as pd

from scaling.analysis import fits as _fits
from scaling.analysis.figures import FigureSkipped, StudyFigure
from scaling.analysis.plots import _figure, _plain_log_axis, family_style, save_figure, sci

# Published final losses of "Scaling Context Requires Rethinking Attention" (Gelada et al. 2025), Table 4:
# ~750M backbone on LongCrawl64, attention at context 1024, window-1k attention and power attention p = 2 at 4096.
PAPER_POWER_ATTENTION = {"attention": 1.631, "window": 1.638, "power": 1.613}

_VARIANT_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")


def _done(data, what: str) -> pd.DataFrame:
    runs = data.runs
    runs = runs[runs["final_val_loss"].notna()] if len(runs) else runs
    if not len(runs):
        raise FigureSkipped(f"{what}: no finished run with a validation loss yet")
    return runs


def _colors(labels) -> dict[str, str]:
    return {lab: _VARIANT_COLORS[i % len(_VARIANT_COLORS)] for i, lab in enumerate(labels)}


def _val_curve(data, run_id: str) -> pd.DataFrame:
    c = data.curves[(data.curves["run_id"] == run_id) & data.curves["val_loss"].notna()]
    return c.sort_values("step")


def _flops_axis(ax) -> None:
    """Log x axis of FLOPs labelled at 1, 2 and 5 x 10^k as 1e12, 2e12, 5e12."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: sci(v, 1)))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows]


# ----------------------------------------------------------------------------------------------------------
# 1. Scaling Context Requires Rethinking Attention: power vs softmax vs windowed attention at equal FLOPs


def power_attention(data, out: Path) -> StudyFigure:
    """Left: validation loss against training FLOPs per variant (curves of the largest budget's runs, markers:
    final losses at every budget). Right: each variant's final loss minus softmax attention's, ours (largest
    budget) beside the paper's Table 4 (1.631 attention, 1.638 window-1k, 1.613 power p = 2)."""
    runs = _done(data, "power_attention")
    known = [v for v in PAPER_POWER_ATTENTION if v in set(runs["variant"])]
    if "attention" not in known or len(known) < 2:
        raise FigureSkipped("power_attention: needs finished runs of variant 'attention' and of 'window' or "
                            f"'power'; have {sorted(set(runs['variant']))}")
    colors = {"attention": "#1f77b4", "window": "#7fb3e0", "power": "#d62728"}
    fig, axes = _figure(1, 2, panel=(5.6, 4.2))
    ax, bx = axes[0]
    top = runs["flops"].max()
    rows = []
    for v in known:
        sub = runs[runs["variant"] == v].sort_values("flops")
        ctx = int(sub["context"].iloc[0])
        label = f"{v} (context {ctx:,}" + (f", window {ctx // 4:,})" if v == "window" else ")")
        big = sub.iloc[-1]
        c = _val_curve(data, big["run_id"])
        ax.plot(c["flops"], c["val_loss"], color=colors[v], lw=1.6, label=label)
        ax.scatter(sub["flops"], sub["final_val_loss"], color=colors[v], s=30, zorder=3, edgecolor="k", lw=0.5)
        for _, r in sub.iterrows():
            rows.append((v, f"{ctx:,}", f"{int(r['state_size']):,}", f"{int(r['params']):,}", f"{int(r['tokens']):,}",
                         f"{r['flops']:.3e}", f"{r['final_val_loss']:.4f}", f"{PAPER_POWER_ATTENTION[v]:.3f}"))
    _flops_axis(ax)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("equal parameters, FLOP-matched budgets (markers: final losses)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)

    ours = runs[np.isclose(runs["flops"], top, rtol=0.05)].groupby("variant")["final_val_loss"].min()
    if "attention" not in ours:
        raise FigureSkipped("power_attention: the largest budget has no finished attention run yet")
    x = np.arange(len(known))
    d_ours = [ours.get(v, np.nan) - ours["attention"] for v in known]
    d_paper = [PAPER_POWER_ATTENTION[v] - PAPER_POWER_ATTENTION["attention"] for v in known]
    bx.bar(x - 0.2, d_ours, 0.4, color=[colors[v] for v in known], edgecolor="k", lw=0.5,
           label=f"this sweep (bytes, {sci(top)} FLOPs)")
    bx.bar(x + 0.2, d_paper, 0.4, color=[colors[v] for v in known], edgecolor="k", lw=0.5, hatch="//",
           alpha=0.55, label="paper, Table 4 (LongCrawl64, ~750M)")
    for xi, (a, b) in enumerate(zip(d_ours, d_paper, strict=True)):
        for off, val in ((-0.2, a), (0.2, b)):
            if np.isfinite(val) and known[xi] != "attention":  # attention's difference is 0 by definition
                bx.annotate(f"{val:+.3f}", (xi + off, val), ha="center", va="bottom" if val >= 0 else "top",
                            fontsize=8, xytext=(0, 2 if val >= 0 else -2), textcoords="offset points")
    bx.axhline(0, color="k", lw=0.8)
    bx.set_xticks(x, known)
    bx.set_ylabel("final loss minus softmax attention's (nats/token)")
    bx.set_title(f"paper reference points: {', '.join(f'{v} {PAPER_POWER_ATTENTION[v]}' for v in known)}",
                 fontsize=9)
    bx.legend(fontsize=8, loc="best")
    bx.grid(True, axis="y", alpha=0.25)
    fig.suptitle("Power attention vs softmax and windowed attention at equal FLOPs", fontsize=12)
    paths = save_figure(fig, out, "power_attention")
    lines = _table(("variant", "context", "state", "params", "tokens", "FLOPs", "final val loss", "paper loss"), rows)
    return StudyFigure(paths, lines)


# ----------------------------------------------------------------------------------------------------------
# 2. Symmetric Power Transformers: loss vs steps, loss vs state size


def sympow(data, out: Path) -> StudyFigure:
    """Left: validation loss against training steps per variant (same steps and batches for all). Right: final
    validation loss against state size (elements per sequence), attention's KV cache at the training context."""
    runs = _done(data, "sympow").sort_values("state_size")
    colors = _colors(list(runs["variant"]))
    fig, axes = _figure(1, 2, panel=(5.6, 4.2))
    ax, bx = axes[0]
    rows = []
    for _, r in runs.iterrows():
        c = _val_curve(data, r["run_id"])
        st = family_style(r["family"])
        ax.plot(c["step"], c["val_loss"], color=colors[r["variant"]], lw=1.6, label=r["variant"])
        bx.scatter(r["state_size"], r["final_val_loss"], color=colors[r["variant"]], marker=st["marker"], s=60,
                   edgecolor="k", lw=0.5, zorder=3)
        bx.annotate(r["variant"], (r["state_size"], r["final_val_loss"]), fontsize=8, xytext=(5, 4),
                    textcoords="offset points")
        rows.append((r["variant"], r["family"], f"{int(r['params']):,}", f"{int(r['state_size']):,}",
                     f"{int(r['steps']):,}", f"{r['flops']:.3e}", f"{r['final_val_loss']:.4f}"))
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss (nats/token)")
    lo = runs["final_val_loss"].min()
    ax.set_ylim(lo - 0.03, min(ax.get_ylim()[1], lo + 0.5))  # the late part, where the variants separate
    ax.set_title(f"fixed parameters ({int(runs['params'].min()):,} to {int(runs['params'].max()):,}), "
                 f"context {int(runs['context'].iloc[0]):,}", fontsize=10)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8)
    bx.set_xscale("log")
    bx.margins(x=0.15, y=0.15)
    bx.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    bx.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    bx.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    bx.set_xlabel("state size S (elements per sequence)")
    bx.set_ylabel("final validation loss (nats/token)")
    bx.set_title("loss vs state size (attention: KV cache at the training context)", fontsize=10)
    bx.grid(True, which="both", alpha=0.25)
    fig.suptitle("Symmetric power transformers: softmax vs sympow p = 2, 4", fontsize=12)
    paths = save_figure(fig, out, "sympow")
    lines = _table(("variant", "family", "params", "state", "steps", "FLOPs", "final val loss"), rows)
    return StudyFigure(paths, lines)


# ----------------------------------------------------------------------------------------------------------
# 3. Compute-Optimal Context Size: the U in log context at fixed FLOPs


def context_size(data, out: Path) -> StudyFigure:
    """Final validation loss against training context at fixed FLOPs, one line per model size (variant) and a
    panel per budget, with each size's fitted parabola in log context and its minimum
    (:func:`scaling.analysis.fits.fit_context_law`), when its contexts bracket one."""
    runs = _done(data, "context_size")
    budgets = sorted(runs["budget"].dropna().unique()) or [None]
    sizes = list(dict.fromkeys(runs.sort_values("params")["variant"]))
    colors = _colors(sizes)
    fig, axes = _figure(1, len(budgets), panel=(5.8, 4.4))
    rows = []
    for ax, budget in zip(axes[0], budgets, strict=True):
        cell = runs if budget is None else runs[np.isclose(runs["budget"], budget)]
        for v in sizes:
            sub = cell[cell["variant"] == v].sort_values("context")
            if not len(sub):
                continue
            n = int(sub["non_embedding_params"].iloc[0])
            ax.plot(sub["context"], sub["final_val_loss"], "o-", color=colors[v], lw=1.4, ms=5,
                    label=f"{v} ({n:,} non-emb. params)")
            opt, loss_opt, note = "-", "", ""
            if sub["context"].nunique() >= 3:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        fit = _fits.fit_context_law(sub["context"], sub["final_val_loss"])
                    t_opt = float(fit.data["budget_context_opt"][0])
                    grid = np.geomspace(sub["context"].min() / 1.5, sub["context"].max() * 1.5, 100)
                    ax.plot(grid, fit.loss_curve(0, grid), "--", color=colors[v], lw=1, alpha=0.8)
                    if np.isfinite(t_opt) and not bool(fit.data["budget_extrapolated"][0]):
                        ax.plot([t_opt], [fit.loss_curve(0, [t_opt])[0]], marker="*", ms=14, color=colors[v],
                                mec="k", mew=0.6, zorder=4)
                        opt, loss_opt = f"{t_opt:,.0f}", f"{float(fit.data['budget_loss_opt'][0]):.4f}"
                    else:
                        note = (f"no U shape: the fitted minimum ({t_opt:,.0f}) is outside the contexts trained"
                                if np.isfinite(t_opt) else "no U shape")
                except ValueError:
                    note = "no U shape (loss not convex in log context)"
            best = sub.loc[sub["final_val_loss"].idxmin()]
            rows.append((v, f"{n:,}", "-" if budget is None else f"{budget:.2e}",
                         ", ".join(f"{int(c):,}: {lo:.3f}" for c, lo in zip(sub["context"], sub["final_val_loss"],
                                                                           strict=True)),
                         f"{int(best['context']):,}", opt, loss_opt or note or "-"))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel("training context T (tokens)")
        ax.set_ylabel("final validation loss (nats/token)")
        ax.set_title(("all runs" if budget is None else f"budget {sci(budget)} training FLOPs")
                     + "; star: fitted optimum", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    fig.suptitle("Compute-optimal context size: loss vs training context at fixed FLOPs", fontsize=12)
    paths = save_figure(fig, out, "context_size")
    lines = _table(("size", "non-emb. params", "budget", "final val loss by context", "best context trained",
                    "fitted optimal context", "fitted loss at optimum"), rows)
    return StudyFigure(paths, lines)


# ----------------------------------------------------------------------------------------------------------
# 4. Mamba / Mamba-2 scaling: loss vs FLOPs at two contexts


def mamba_scaling(data, out: Path) -> StudyFigure:
    """One panel per training context: final validation loss against training FLOPs, one line per mixer family
    through its model sizes (each on its Chinchilla token budget), faint validation curves, and the family's
    compute-optimal frontier from its curves (Chinchilla approach 1, :func:`scaling.analysis.fits.fit_envelope`),
    where it can be fitted."""
    runs = _done(data, "mamba_scaling")
    contexts = sorted(int(c) for c in runs["context"].unique())
    fig, axes = _figure(1, len(contexts), panel=(5.6, 4.4))
    rows = []
    families = [f for f in ("attention", "mamba", "retention", "hybrid") if f in set(runs["family"])]
    names = {"attention": "Transformer++", "mamba": "Mamba-2"}
    for ax, ctx in zip(axes[0], contexts, strict=True):
        cell = runs[runs["context"] == ctx]
        for fam in families:
            sub = cell[cell["family"] == fam].sort_values("flops")
            if not len(sub):
                continue
            st = family_style(fam)
            for _, r in sub.iterrows():
                c = _val_curve(data, r["run_id"])
                ax.plot(c["flops"], c["val_loss"], color=st["color"], lw=0.8, alpha=0.3)
                rows.append((names.get(fam, fam), f"{ctx:,}", r["variant"], f"{int(r['params']):,}",
                             f"{int(r['tokens']):,}", f"{r['tokens'] / r['params']:.1f}", f"{r['flops']:.3e}",
                             f"{r['final_val_loss']:.4f}"))
            ax.plot(sub["flops"], sub["final_val_loss"], marker=st["marker"], color=st["color"], lw=1.8, ms=7,
                    mec="k", mew=0.5, label=f"{names.get(fam, fam)} (final loss per size)")
            curves = data.curves[data.curves["run_id"].isin(sub["run_id"]) & data.curves["val_loss"].notna()
                                 & (data.curves["step"] > 0)]
            curves = curves.merge(sub[["run_id", "params"]], on="run_id")
            if curves["params"].nunique() >= 2:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        env = _fits.fit_envelope(curves["params"], curves["tokens"], curves["flops"],
                                                 curves["val_loss"], drop_edge_sizes=False, n_bins=24)
                    ax.plot(env.data["frontier_C"], env.data["frontier_loss"], ls="--", color=st["color"], lw=1.2,
                            label=f"{names.get(fam, fam)} frontier (approach 1)")
                except ValueError:
                    pass
        _flops_axis(ax)
        ax.set_yscale("log")
        lo, hi = cell["final_val_loss"].min(), cell["final_val_loss"].max()
        ax.set_ylim(lo * 0.97, hi * 1.15)
        _plain_log_axis(ax.yaxis)
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel("validation loss (nats/token)")
        ax.set_title(f"context {ctx:,}", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    fig.suptitle("Scaling: Mamba-2 vs Transformer++ on Chinchilla token budgets", fontsize=12)
    paths = save_figure(fig, out, "mamba_scaling")
    lines = _table(("family", "context", "size", "params", "tokens", "tokens/param", "FLOPs", "final val loss"),
                   rows)
    return StudyFigure(paths, lines)

