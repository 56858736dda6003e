"""Study figures of the recall benchmarks (:mod:`scaling.data.synthetic`), drawn by ``scaling analyze``.

``recall_vs_state``  (experiments/mqar_state_size.py) the final ``task_accuracy`` of each run against its state
    size (elements per sequence at the run's context, :func:`scaling.accounting.state_size`; attention's KV cache
    counts as its state), log x. Every variant is a marker; one line per mixer family joins its recall-vs-state
    Pareto frontier (Based, Arora et al. 2024): the variants that beat every smaller state of the family.
    Dominated variants are hollow markers, and the table marks the frontier.
``loss_vs_position``  (experiments/length_generalisation.py) from each run's ``eval_contexts.json`` (written when
    ``train.eval_contexts`` is set): the validation loss per position up to the longest evaluated context for
    runs on a corpus, and the task accuracy at each evaluated context for runs on a synthetic task.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.ticker
import numpy as np
import pandas as pd

from scaling.analysis import plots
from scaling.analysis.figures import FigureSkipped, StudyFigure

FAMILY_ORDER = ("attention", "retention", "mamba", "hybrid")


def _families(df: pd.DataFrame) -> list[str]:
    have = list(dict.fromkeys(df["family"]))
    return [f for f in FAMILY_ORDER if f in have] + [f for f in have if f not in FAMILY_ORDER]


def recall_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (family, variant): mean final task accuracy over its runs (e.g. seeds), state size, params."""
    done = runs.dropna(subset=["final_task_accuracy", "state_size"])
    if done.empty:
        return pd.DataFrame(columns=["family", "variant", "state_size", "params", "accuracy", "runs"])
    g = done.groupby(["family", "variant"], sort=False)
    table = g.agg(state_size=("state_size", "median"), params=("params", "median"),
                  accuracy=("final_task_accuracy", "mean"), runs=("run_id", "count")).reset_index()
    order = {f: i for i, f in enumerate(_families(done))}
    table = table.sort_values(["family", "state_size"], key=lambda s: s.map(order) if s.name == "family" else s,
                              ignore_index=True)
    table["frontier"] = pareto_frontier(table)
    return table


def pareto_frontier(table: pd.DataFrame) -> np.ndarray:
    """Per row of a table sorted by (family, state_size): True when its accuracy beats that of every variant of
    its family with a smaller or equal state (the first of a family is always on it)."""
    on = np.zeros(len(table), bool)
    for _, t in table.groupby("family", sort=False):
        best = -np.inf
        for i, acc in zip(t.index, t["accuracy"], strict=True):
            on[i] = acc > best
            best = max(best, acc)
    return on


def recall_vs_state(data, out: Path) -> StudyFigure:
    """Task accuracy vs state size (log x), one line per mixer family; a markdown table of the points."""
    table = recall_table(data.runs)
    if table.empty:
        raise FigureSkipped("no finished run has a task_accuracy (train on a synthetic task: data.source = mqar, ...)")
    fig, axes = plots._figure(1, 1, panel=(7.0, 4.6))
    ax = axes[0, 0]
    for family in _families(table):
        t = table[table["family"] == family]
        style = plots.family_style(family)
        f = t[t["frontier"]]
        ax.plot(f["state_size"], f["accuracy"], color=style["color"], marker=style["marker"], label=family, lw=1.6)
        d = t[~t["frontier"]]
        # hollow: dominated (every family style is a filled marker, scaling.analysis.plots.FAMILY_STYLE)
        ax.scatter(d["state_size"], d["accuracy"], marker=style["marker"], facecolors="none",
                   edgecolors=style["color"], zorder=3)
    # labels (family prefix off) alternate below / above the points in order of state size, so neighbours part
    rank = {i: k for k, i in enumerate(table.sort_values("state_size", kind="stable").index)}
    for i, r in table.iterrows():
        label = r["variant"].removeprefix(f"{r['family']}-") if r["variant"] != r["family"] else r["family"]
        ax.annotate(label, (r["state_size"], r["accuracy"]), textcoords="offset points", fontsize=7,
                    xytext=(4, -11 if rank[i] % 2 == 0 else 5), color=plots.family_style(r["family"])["color"])
    ax.set_xscale("log")
    lo, hi = table["state_size"].min() / 1.3, table["state_size"].max() * 1.3
    ticks = [m * 10.0**e for e in range(int(math.log10(lo)), int(math.log10(hi)) + 1) for m in (1, 2, 5)]
    ax.set_xticks([t for t in ticks if lo <= t <= hi])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.03, 1.05)
    ax.axhline(1.0, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel(plots.LABELS["state"])
    ax.set_ylabel("task accuracy (exact match on answer tokens)")
    ax.set_title("recall vs state size (lines: each family's Pareto frontier; hollow: dominated)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right")
    lines = ["| family | variant | state size | params | accuracy | runs | frontier |",
             "|---|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r.family} | {r.variant} | {int(r.state_size):,} | {int(r.params):,} | {r.accuracy:.3f} | {r.runs} "
              f"| {'yes' if r.frontier else 'no'} |" for r in table.itertuples()]
    return StudyFigure(plots.save_figure(fig, out, "recall_vs_state"), lines)


# --------------------------------------------------------------------------------------------------------------
# Length generalisation


def load_eval_contexts(data) -> list[dict]:
    """Each finished run's ``eval_contexts.json`` with its ``run_id``, ``variant`` and ``family`` added."""
    found = []
    for r in data.runs.itertuples():
        path = Path(data.path) / "runs" / r.run_id / "eval_contexts.json"
        if path.is_file():
            found.append({**json.loads(path.read_text()), "run_id": r.run_id, "variant": r.variant,
                          "family": r.family})
    return found


def binned_loss(row: dict, n_bins: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(bin centre, mean loss) of a context row's per-position loss over log-spaced position bins, weighted by the
    loss tokens at each position; empty bins dropped."""
    loss = np.array([np.nan if v is None else v for v in row["loss_by_position"]], float)
    n = np.asarray(row["tokens_by_position"], float)
    pos = np.arange(1, loss.size + 1)
    edges = np.unique(np.round(np.geomspace(1, loss.size + 1, n_bins + 1)).astype(int))
    centre, mean = [], []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        sel = (pos >= a) & (pos < b) & (n > 0)
        if sel.any():
            centre.append(math.sqrt(a * (b - 1)) if b - 1 > a else a)
            mean.append(float(np.sum(loss[sel] * n[sel]) / np.sum(n[sel])))
    return np.array(centre), np.array(mean)


def loss_vs_position(data, out: Path) -> StudyFigure:
    """Loss per position (corpus runs) and task accuracy per evaluated context (task runs), trained context marked."""
    evals = load_eval_contexts(data)
    if not evals:
        raise FigureSkipped("no finished run wrote eval_contexts.json (set train.eval_contexts)")
    text = [e for e in evals if "task_accuracy" not in e["contexts"][0]]
    task = [e for e in evals if "task_accuracy" in e["contexts"][0]]
    panels = [p for p in (("loss", text), ("accuracy", task)) if p[1]]
    fig, axes = plots._figure(1, len(panels), panel=(6.0, 4.4))
    lines = []
    for ax, (kind, group) in zip(axes[0], panels, strict=True):
        fams = list(dict.fromkeys(e["family"] for e in group))
        for e in group:
            style = plots.family_style(e["family"])
            same = [x["variant"] for x in group if x["family"] == e["family"]]
            ls = ["-", "--", ":", "-."][same.index(e["variant"]) % 4]
            if kind == "loss":
                longest = max(e["contexts"], key=lambda c: c["context"])
                x, y = binned_loss(longest)
                ax.plot(x, y, color=style["color"], ls=ls, label=e["variant"])
            else:
                xs = [c["context"] / e["train_context"] for c in e["contexts"]]
                ax.plot(xs, [c["task_accuracy"] for c in e["contexts"]], color=style["color"], ls=ls,
                        marker=style["marker"], label=e["variant"])
        tcs = sorted({e["train_context"] for e in group})
        if kind == "loss":
            for tc in tcs:
                ax.axvline(tc, color="0.5", ls=":", lw=1)
            ax.set_xscale("log")
            ax.set_xlabel("position in the sequence (tokens); dotted: training context")
            ax.set_ylabel("validation loss (nats per token)")
            ax.set_title("loss vs position")
        else:
            ax.set_xscale("log", base=2)
            ax.axvline(1.0, color="0.5", ls=":", lw=1)
            ax.set_ylim(-0.03, 1.05)
            ax.set_xlabel("evaluation context / training context")
            ax.set_ylabel("task accuracy (exact match on answer tokens)")
            ax.set_title("recall at longer contexts")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8, title=", ".join(fams), title_fontsize=8)
        ctxs = sorted({c["context"] for e in group for c in e["contexts"]})
        what = "validation loss (nats per token)" if kind == "loss" else "task accuracy"
        lines += [f"{what} at each evaluated context (trained at {', '.join(map(str, tcs))}):", "",
                  "| variant | " + " | ".join(map(str, ctxs)) + " |", "|---|" + "---:|" * len(ctxs)]
        for e in group:
            by = {c["context"]: c["val_loss" if kind == "loss" else "task_accuracy"] for c in e["contexts"]}
            lines.append(f"| {e['variant']} | " + " | ".join(f"{by[c]:.3f}" if c in by else "-" for c in ctxs) + " |")
        lines.append("")
    return StudyFigure(plots.save_figure(fig, out, "loss_vs_position"), lines)
