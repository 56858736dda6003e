"""Study figure of the compute-optimal context size reproduction (experiments/papers/context_size.py,
docs/papers/context_size.md): the U in log context at fixed FLOPs, and the optimal context against compute.

The metric is each run's loss at the best of its evaluation contexts (``train.eval_contexts``, written to
``eval_contexts.json``): a model trained at context T is evaluated at every context of the sweep and scored at
the one where its average loss is lowest, so that a short-context model is not scored on the longer window it
was never trained for, nor a long-context one on positions it need not use. Without eval_contexts.json the
validation loss at the training context stands in (and the table says so). Replicates (``train.seed``) are
pooled: points are seed means +- SE, and each seed's own parabola gives the spread of the optimum.
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
from scaling.analysis.papers import _colors, _done, _table, eval_losses
from scaling.analysis.plots import _figure, save_figure, sci


def with_metric(data, runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """``runs`` with ``metric`` (the loss at the run's best evaluation context, else its validation loss) and
    ``best_eval_context``; and the metric's name."""
    ev = eval_losses(data, runs)
    if not len(ev):
        return runs.assign(metric=runs["final_val_loss"], best_eval_context=runs["context"]), \
            "validation loss at the training context (no eval_contexts.json)"
    best = ev.loc[ev.groupby("run_id")["eval_loss"].idxmin()].set_index("run_id")
    out = runs[runs["run_id"].isin(best.index)]
    return (out.assign(metric=out["run_id"].map(best["eval_loss"]),
                       best_eval_context=out["run_id"].map(best["eval_context"])),
            "loss at the best evaluation context")


def _optimum(context, loss):
    """(optimal context, loss there, inside the contexts trained, the fit) of the parabola in log context, or
    (NaN, NaN, False, None) when there is no U shape or fewer than three contexts."""
    if len(set(context)) < 3:
        return float("nan"), float("nan"), False, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = _fits.fit_context_law(context, loss)
    except ValueError:
        return float("nan"), float("nan"), False, None
    return (float(fit.data["budget_context_opt"][0]), float(fit.data["budget_loss_opt"][0]),
            not bool(fit.data["budget_extrapolated"][0]), fit)


def context_size(data, out: Path) -> StudyFigure:
    """One panel per budget: the metric against training context per model size (seed means +- SE) with the
    parabola through the means and its minimum (a star when inside the contexts trained). Last panel, when a
    size was run at two or more budgets: its optimal context against training FLOPs, bars from the lowest to
    the highest seed's own optimum."""
    runs, metric = with_metric(data, _done(data, "context_size"))
    runs = runs.assign(budget=runs["budget"].fillna(runs["flops"]))
    budgets = sorted(runs["budget"].unique())
    sizes = list(dict.fromkeys(runs.sort_values("params")["variant"]))
    colors = _colors(sizes)
    opt_rows: list[dict] = []
    multi = [v for v in sizes if runs.loc[runs["variant"] == v, "budget"].nunique() >= 2]
    fig, axes = _figure(1, len(budgets) + bool(multi), panel=(5.4, 4.4))
    rows = []
    for ax, budget in zip(axes[0], budgets, strict=False):
        cell = runs[np.isclose(runs["budget"], budget, rtol=0.05)]
        for v in sizes:
            sub = cell[cell["variant"] == v]
            if not len(sub):
                continue
            pts = _seeds.by_point(sub, ["context"], "metric")
            n = int(sub["non_embedding_params"].iloc[0])
            ax.errorbar(pts["context"], pts["mean"], yerr=pts["se"].fillna(0), fmt="o-", color=colors[v], lw=1.4,
                        ms=5, capsize=3, label=f"{v} ({n:,} non-emb. params, {int(pts['n'].max())} seed(s))")
            t_opt, l_opt, inside, fit = _optimum(list(pts["context"]), pts["mean"])
            per_seed = []
            for _, g in sub.groupby("seed"):
                t, _, ok, _ = _optimum(list(g["context"]), g["metric"])
                if ok:
                    per_seed.append(t)
            if fit is not None:
                grid = np.geomspace(pts["context"].min() / 1.5, pts["context"].max() * 1.5, 100)
                ax.plot(grid, fit.loss_curve(0, grid), "--", color=colors[v], lw=1, alpha=0.8)
                if inside:
                    ax.plot([t_opt], [l_opt], marker="*", ms=14, color=colors[v], mec="k", mew=0.6, zorder=4)
                    opt_rows.append({"variant": v, "budget": budget, "t_opt": t_opt, "seeds": per_seed})
            best = pts.loc[pts["mean"].idxmin()]
            spread = (f" (seeds {min(per_seed):,.0f} to {max(per_seed):,.0f})" if len(per_seed) > 1 else "")
            rows.append((v, f"{n:,}", f"{budget:.2e}", int(pts["n"].max()),
                         ", ".join(f"{int(r.context):,}: {r.mean:.3f}" + (f" ± {r.se:.3f}" if r.n > 1 else "")
                                   for r in pts.itertuples()),
                         f"{int(best['context']):,}",
                         (f"{t_opt:,.0f}{spread}" if inside else
                          "no U shape" + (f" (fitted minimum {t_opt:,.0f} outside)" if np.isfinite(t_opt) else "")),
                         f"{l_opt:.4f}" if inside else "-"))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_xlabel("training context T (tokens)")
        ax.set_ylabel(f"{metric} (nats/token)")
        ax.set_title(f"budget {sci(budget)} training FLOPs; star: fitted optimum", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    law_lines = []
    if multi:
        cx = axes[0][-1]
        for v in multi:
            o = [r for r in opt_rows if r["variant"] == v]
            if not o:
                continue
            C = np.array([r["budget"] for r in o])
            T = np.array([r["t_opt"] for r in o])
            lo = [T[i] - min(r["seeds"]) if r["seeds"] else 0 for i, r in enumerate(o)]
            hi = [max(r["seeds"]) - T[i] if r["seeds"] else 0 for i, r in enumerate(o)]
            cx.errorbar(C, T, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], fmt="*-", ms=12, color=colors[v],
                        mec="k", capsize=4, label=v)
            if len(o) >= 2:
                a = float(np.polyfit(np.log(C), np.log(T), 1)[0])
                at = ", ".join(f"{t:,.0f} at {sci(c)}" for c, t in zip(C, T, strict=True))
                law_lines.append(f"- {v}: optimal context {at} FLOPs: T_opt ∝ C^{a:.2f} through these {len(o)} "
                                 "budgets.")
        cx.set_xscale("log")
        cx.set_yscale("log", base=2)
        cx.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        cx.set_xlabel("training compute C (FLOPs)")
        cx.set_ylabel("fitted optimal context (tokens)")
        cx.set_title("optimal context vs compute; bars: lowest to highest seed", fontsize=10)
        cx.grid(True, which="both", alpha=0.25)
        cx.legend(fontsize=8)
    if not rows:
        raise FigureSkipped("context_size: no finished run")
    fig.suptitle(f"Compute-optimal context size: {metric} vs training context at fixed FLOPs", fontsize=11)
    paths = save_figure(fig, out, "context_size")
    lines = [f"Metric: {metric} (nats/token); seed means ± SE.", ""]
    lines += _table(("size", "non-emb. params", "budget", "seeds", "loss by training context", "best context trained",
                     "fitted optimal context", "fitted loss at optimum"), rows)
    if law_lines:
        lines += ["", *law_lines]
    if "best_eval_context" in runs:
        pairs = runs.groupby("context")["best_eval_context"].agg(lambda x: ", ".join(
            f"{int(c):,} ({int(k)})" for c, k in x.value_counts().sort_index().items()))
        lines += ["", "Best evaluation context of the runs trained at each context (runs):", ""]
        lines += _table(("trained at", "best evaluation context (runs)"),
                        [(f"{int(c):,}", p) for c, p in pairs.items()])
    return StudyFigure(paths, lines)
