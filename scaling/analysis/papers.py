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
from scaling.analysis import seeds as _seeds
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


def eval_losses(data, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, evaluated context) of the runs' ``eval_contexts.json`` (``train.eval_contexts``):
    ``run_id``, ``eval_context``, ``eval_loss`` (nats per token averaged over the row's positions)."""
    from scaling.analysis.recall import load_eval_contexts

    keep = set(runs["run_id"])
    rows = [{"run_id": e["run_id"], "eval_context": int(c["context"]), "eval_loss": float(c["val_loss"])}
            for e in load_eval_contexts(data) if e["run_id"] in keep for c in e["contexts"]]
    return pd.DataFrame(rows, columns=["run_id", "eval_context", "eval_loss"])


def _errorbar(ax, x, point, color, **kw):
    """A point's seed mean with +- 1 SE bars (none for one seed)."""
    se = point["se"] if np.isfinite(point["se"]) else 0.0
    ax.errorbar(x, point["mean"], yerr=se, color=color, capsize=3, elinewidth=1, **kw)


def power_attention(data, out: Path) -> StudyFigure:
    """Every run is evaluated at each context of ``train.eval_contexts`` (both training contexts and a longer one)
    and scored at the best of them: the loss at its best context, so that softmax attention, trained at a quarter
    of the others' context, is not scored where it must extrapolate. Left: that loss against training FLOPs per
    variant (seed means +- SE at every budget). Middle: loss against evaluation context at the largest budget.
    Right: each variant's best-context loss minus softmax attention's, +- 2 SE (ours, largest budget) beside the
    paper's Table 4 (1.631 attention, 1.638 window-1k, 1.613 power p = 2). Without eval_contexts.json the
    training-context validation loss stands in, and the titles say so."""
    runs = _done(data, "power_attention")
    known = [v for v in PAPER_POWER_ATTENTION if v in set(runs["variant"])]
    if "attention" not in known or len(known) < 2:
        raise FigureSkipped("power_attention: needs finished runs of variant 'attention' and of 'window' or "
                            f"'power'; have {sorted(set(runs['variant']))}")
    colors = {"attention": "#1f77b4", "window": "#7fb3e0", "power": "#d62728"}
    ctx = {v: int(runs.loc[runs["variant"] == v, "context"].iloc[0]) for v in known}
    ev = eval_losses(data, runs)
    has_eval = bool(len(ev))
    runs = runs.assign(budget=runs["budget"].fillna(runs["flops"]))
    if has_eval:  # each run at the best of its evaluation contexts (a short-trained model is not made to extrapolate)
        runs = runs.assign(long_loss=runs["run_id"].map(ev.groupby("run_id")["eval_loss"].min()))
        metric = "loss at the best evaluation context"
    else:
        runs = runs.assign(long_loss=runs["final_val_loss"])
        metric = "validation loss at the training context (no eval_contexts.json)"
    pts = _seeds.by_point(runs, ["variant", "budget"], "long_loss")
    top = float(pts["budget"].max())
    fig, axes = _figure(1, 3, panel=(5.0, 4.2))
    ax, mx, bx = axes[0]
    for v in known:
        sub = pts[pts["variant"] == v].sort_values("budget")
        label = f"{v} (trained at {ctx[v]:,}" + (f", window {ctx[v] // 4:,})" if v == "window" else ")")
        ax.plot(sub["budget"], sub["mean"], color=colors[v], lw=1.4)
        for _, r in sub.iterrows():
            _errorbar(ax, r["budget"], r, colors[v], marker="o", ms=5, mec="k", mew=0.5,
                      label=label if r["budget"] == sub["budget"].iloc[0] else None)
    _flops_axis(ax)
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(f"{metric} (nats/token)" if has_eval else "validation loss (nats/token)")
    ax.set_title(f"{metric}; bars: +-1 SE over seeds", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)

    big = runs[np.isclose(runs["budget"], top, rtol=0.05)]
    if len(ev):
        e = ev.merge(big[["run_id", "variant", "seed"]], on="run_id")
        by_ctx = _seeds.by_point(e.rename(columns={"eval_loss": "loss"}), ["variant", "eval_context"], "loss")
        for v in known:
            sub = by_ctx[by_ctx["variant"] == v].sort_values("eval_context")
            mx.errorbar(sub["eval_context"], sub["mean"], yerr=sub["se"].fillna(0), color=colors[v], marker="o",
                        ms=4, capsize=3, lw=1.4, label=v)
            mx.axvline(ctx[v], color=colors[v], lw=0.8, ls=":")
        mx.set_xscale("log", base=2)
        mx.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        mx.set_xlabel("evaluation context (tokens); dotted: training context")
        mx.set_ylabel("loss averaged over the context (nats/token)")
        mx.set_title(f"largest budget ({sci(top)} FLOPs)", fontsize=9)
        mx.grid(True, which="both", alpha=0.25)
        mx.legend(fontsize=8)
    else:
        mx.set_axis_off()
        mx.text(0.5, 0.5, "no eval_contexts.json\n(set train.eval_contexts)", ha="center", va="center")

    cell = pts[np.isclose(pts["budget"], top, rtol=0.05)].set_index("variant")
    if "attention" not in cell.index:
        raise FigureSkipped("power_attention: the largest budget has no finished attention run yet")
    x = np.arange(len(known))
    diffs = {v: _seeds.difference(cell.loc["attention"], cell.loc[v]) if v in cell.index else (np.nan, np.nan)
             for v in known}
    verdicts = {v: _seeds.compare(cell.loc["attention"], cell.loc[v]) if v in cell.index else "-" for v in known}
    d_ours = [diffs[v][0] for v in known]
    err = [2 * diffs[v][1] if np.isfinite(diffs[v][1]) and v != "attention" else 0.0 for v in known]
    d_paper = [PAPER_POWER_ATTENTION[v] - PAPER_POWER_ATTENTION["attention"] for v in known]
    bx.bar(x - 0.2, d_ours, 0.4, yerr=err, capsize=4, color=[colors[v] for v in known], edgecolor="k", lw=0.5,
           label=f"this sweep (bytes, {sci(top)} FLOPs), +-2 SE")
    bx.bar(x + 0.2, d_paper, 0.4, color=[colors[v] for v in known], edgecolor="k", lw=0.5, hatch="//",
           alpha=0.55, label="paper, Table 4 (LongCrawl64, ~750M)")
    for xi, (a, b) in enumerate(zip(d_ours, d_paper, strict=True)):
        for off, val in ((-0.2, a), (0.2, b)):
            if np.isfinite(val) and known[xi] != "attention":  # attention's difference is 0 by definition
                bx.annotate(f"{val:+.3f}", (xi + off, val), ha="center", va="bottom" if val >= 0 else "top",
                            fontsize=8, xytext=(0, 2 if val >= 0 else -2), textcoords="offset points")
    bx.axhline(0, color="k", lw=0.8)
    bx.set_xticks(x, known)
    bx.set_ylabel("minus softmax attention's (nats/token)")
    bx.set_title(f"paper: {', '.join(f'{v} {PAPER_POWER_ATTENTION[v]}' for v in known)}", fontsize=9)
    bx.legend(fontsize=7, loc="best")
    bx.grid(True, axis="y", alpha=0.25)
    fig.suptitle("Power attention vs softmax and windowed attention at equal FLOPs", fontsize=12)
    paths = save_figure(fig, out, "power_attention")

    contexts = sorted(ev["eval_context"].unique()) if len(ev) else []
    rows = []
    for v in known:
        for _, p in pts[pts["variant"] == v].sort_values("budget").iterrows():
            rs = runs[runs["run_id"].isin(p["run_ids"])]
            mask = ev["run_id"].isin(p["run_ids"]) if len(ev) else None
            cells = [_seeds.fmt(*_seeds.summary(ev.loc[mask & (ev["eval_context"] == c), "eval_loss"]))
                     for c in contexts]
            r0 = rs.iloc[0]
            rows.append((v, f"{ctx[v]:,}", f"{int(r0['state_size']):,}", f"{int(r0['params']):,}",
                         f"{p['budget']:.2e}", _seeds.fmt(*_seeds.summary(rs["final_val_loss"])), *cells,
                         f"{PAPER_POWER_ATTENTION[v]:.3f}"))
    lines = _table(("variant", "trained at", "state", "params", "budget", "val loss at training context",
                    *(f"loss at context {c:,}" for c in contexts), "paper loss"), rows)
    lines += ["", f"Differences at the largest budget ({sci(top)} FLOPs), {metric}: b minus attention, seed "
              "means, SE = sqrt(SE_a^2 + SE_b^2):", ""]
    lines += _table(("variant", "minus attention", "SE", "verdict", "paper"),
                    [(v, f"{diffs[v][0]:+.4f}", f"{diffs[v][1]:.4f}", verdicts[v], f"{d:+.3f}")
                     for v, d in zip(known, d_paper, strict=True) if v != "attention"])
    return StudyFigure(paths, lines)


# ----------------------------------------------------------------------------------------------------------
# 2. Symmetric Power Transformers: loss vs steps, loss vs state size


def sympow(data, out: Path) -> StudyFigure:
    """Left: validation loss against training steps per variant (same steps and batches for all; the mean over
    seeds, a band from the lowest to the highest). Right: final validation loss (seed mean +- SE) against state
    size (elements per sequence), attention's KV cache at the training context. The table gives each variant's
    difference from softmax attention with its SE."""
    runs = _done(data, "sympow")
    pts = _seeds.by_point(runs, ["variant"]).merge(
        runs.drop_duplicates("variant")[["variant", "family", "params", "state_size", "steps", "flops"]], on="variant")
    pts = pts.sort_values("state_size")
    colors = _colors(list(pts["variant"]))
    fig, axes = _figure(1, 2, panel=(5.6, 4.2))
    ax, bx = axes[0]
    rows = []
    for _, p in pts.iterrows():
        c = colors[p["variant"]]
        steps, mean, lo, hi = _seeds.mean_curve(data.curves, p["run_ids"])
        ax.plot(steps, mean, color=c, lw=1.6, label=p["variant"] + (f" ({p['n']} seeds)" if p["n"] > 1 else ""))
        if p["n"] > 1:
            ax.fill_between(steps, lo, hi, color=c, alpha=0.18, lw=0)
        _errorbar(bx, p["state_size"], p, c, marker=family_style(p["family"])["marker"], ms=8, mec="k", mew=0.5,
                  zorder=3)
        bx.annotate(p["variant"], (p["state_size"], p["mean"]), fontsize=8, xytext=(5, 4), textcoords="offset points")
        rows.append((p["variant"], p["family"], f"{int(p['params']):,}", f"{int(p['state_size']):,}",
                     f"{int(p['steps']):,}", f"{p['flops']:.3e}", _seeds.fmt(p["mean"], p["se"], p["n"])))
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
    bx.set_ylabel("final validation loss (nats/token), +-1 SE")
    bx.set_title("loss vs state size (attention: KV cache at the training context)", fontsize=10)
    bx.grid(True, which="both", alpha=0.25)
    fig.suptitle("Symmetric power transformers: softmax vs sympow p = 2, 4", fontsize=12)
    paths = save_figure(fig, out, "sympow")
    lines = _table(("variant", "family", "params", "state", "steps", "FLOPs", "final val loss"), rows)
    ref = pts.set_index("variant")
    if "attention" in ref.index:
        lines += ["", "Minus softmax attention (seed means; SE = sqrt(SE_a^2 + SE_b^2)):", ""]
        diffs = [(v, *_seeds.difference(ref.loc["attention"], ref.loc[v]), _seeds.compare(ref.loc["attention"],
                                                                                         ref.loc[v]))
                 for v in ref.index if v != "attention"]
        lines += _table(("variant", "minus attention", "SE", "verdict"),
                        [(v, f"{d:+.4f}", f"{se:.4f}", verdict) for v, d, se, verdict in diffs])
    return StudyFigure(paths, lines)


# ----------------------------------------------------------------------------------------------------------
# 3. Mamba / Mamba-2 scaling: loss vs FLOPs at two contexts


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
    means: dict[tuple, pd.DataFrame] = {}
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
            pts = _seeds.by_point(sub, ["variant"]).merge(
                sub.drop_duplicates("variant")[["variant", "params", "tokens", "flops"]], on="variant")
            pts = pts.sort_values("flops")
            means[(ctx, fam)] = pts.assign(width=pts["variant"].str.rsplit("-", n=1).str[-1])
            for _, r in pts.iterrows():
                rows.append((names.get(fam, fam), f"{ctx:,}", r["variant"], f"{int(r['params']):,}",
                             f"{int(r['tokens']):,}", f"{r['tokens'] / r['params']:.1f}", f"{r['flops']:.3e}",
                             _seeds.fmt(r["mean"], r["se"], r["n"])))
            ax.errorbar(pts["flops"], pts["mean"], yerr=pts["se"].fillna(0), marker=st["marker"], color=st["color"],
                        lw=1.8, ms=7, mec="k", mew=0.5, capsize=3,
                        label=f"{names.get(fam, fam)} (final loss per size; bars +-1 SE over seeds)")
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
    gaps = []
    for ctx in contexts:
        if (ctx, "attention") in means and (ctx, "mamba") in means:
            a_pts = means[(ctx, "attention")].set_index("width")
            for w, m in means[(ctx, "mamba")].set_index("width").iterrows():
                if w in a_pts.index:
                    d, se = _seeds.difference(a_pts.loc[w], m)
                    gaps.append((f"{ctx:,}", w, f"{d:+.4f}", f"{se:.4f}" if np.isfinite(se) else "-",
                                 _seeds.compare(a_pts.loc[w], m)))
    if gaps:
        lines += ["", "Mamba-2 minus Transformer++ at the same width (seed means; SE = sqrt(SE_a^2 + SE_b^2)):", ""]
        lines += _table(("context", "width", "Mamba-2 minus Transformer++", "SE", "verdict"), gaps)
    return StudyFigure(paths, lines)

