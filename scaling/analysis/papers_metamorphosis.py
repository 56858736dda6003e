"""Study figure of the metamorphosis reproduction (experiments/papers/metamorphosis.py, docs/papers/metamorphosis.md).

The sweep holds three kinds of run, told apart by the store's ``depends_on`` column (not by labels):

- the *source*: a transformer trained from scratch;
- *converted* runs: ``train.init_from`` = the source (``depends_on`` = its id), attention layers turned into
  power retention with the same weights (scaling/convert.py), then every weight retrained;
- *blended* runs: converted runs with ``train.blend_steps`` (PowerCoder-style: each converted layer's output moves
  from softmax attention to power retention over that many steps, instead of the abrupt swap);
- *scratch* runs: the converted runs' layer pattern trained from a random initialisation.

The figure plots validation loss against retraining steps (steps since initialisation) for the converted and
scratch runs, with the source's final validation loss and the band 5% above it. ``steps_to_target`` is the
first evaluated step at which a run's validation loss is within ``TOLERANCE`` of the source's final loss
(None if it never is), ``steps_to_stay`` the first from which it stays there (the dashed lines: a blended run
starts inside the band, at its source's loss, and climbs out of it as retention takes over).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from scaling import config as _config
from scaling.analysis import seeds as _seeds
from scaling.analysis.figures import FigureSkipped, StudyFigure
from scaling.analysis.plots import _figure, save_figure

TOLERANCE = 0.05
# Published by Manifest AI for Brumby-14B-Base: retrained from Qwen3-14B-Base, it reaches Qwen3's training loss
# on the same data after 3000 steps (60 hours on 32 H100s).
PAPER_BRUMBY_STEPS = 3000


def _roles(data) -> dict[int, dict]:
    """{seed: {"source": id, "converted": [ids], "blended": [ids], "scratch": [ids]}} of the done runs, from
    depends_on, train.blend_steps, the patterns and train.seed (each converted run starts from its own seed's
    source; scratch runs are matched to the source of their seed)."""
    with sqlite3.connect(f"file:{Path(data.path) / 'sweep.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, depends_on, config FROM runs").fetchall()
    done = set(data.runs["run_id"]) if len(data.runs) else set()
    deps = {rid: dep for rid, dep, _ in rows if rid in done}
    cfgs = {rid: _config.from_dict(json.loads(cfg)) for rid, _, cfg in rows if rid in done}
    patterns = {rid: _config.layer_pattern(c.model) for rid, c in cfgs.items()}
    seed = {rid: int(c.train.get("seed") or 0) for rid, c in cfgs.items()}
    converted = [rid for rid, dep in deps.items() if dep]
    if not converted:
        raise FigureSkipped("metamorphosis: no finished run initialised from another run (train.init_from) yet")
    out: dict[int, dict] = {}
    for c in converted:
        src = deps[c]
        if src not in done:
            continue
        group = out.setdefault(seed[src], {"source": src, "converted": [], "blended": [], "scratch": []})
        if group["source"] != src:
            raise FigureSkipped(f"metamorphosis: seed {seed[src]} has converted runs from two sources "
                                f"({group['source']}, {src}); the figure compares each seed against one source")
        group["blended" if cfgs[c].train.get("blend_steps") else "converted"].append(c)
    if not out:
        raise FigureSkipped("metamorphosis: no converted run's source is done")
    sources = {g["source"] for g in out.values()}
    target_patterns = {patterns[c] for c in converted}
    for rid in deps:
        if not deps[rid] and rid not in sources and patterns[rid] in target_patterns and seed[rid] in out:
            out[seed[rid]]["scratch"].append(rid)
    return dict(sorted(out.items()))


def _curve(data, rid):
    c = data.curves[(data.curves["run_id"] == rid) & data.curves["val_loss"].notna()].sort_values("step")
    return c["step"].to_numpy(int), c["val_loss"].to_numpy(float)


def steps_to_target(steps, losses, target: float) -> int | None:
    """The first step whose loss is <= target, or None."""
    hit = np.flatnonzero(np.asarray(losses) <= target)
    return int(np.asarray(steps)[hit[0]]) if hit.size else None


def steps_to_stay(steps, losses, target: float) -> int | None:
    """The first step from which every later loss is <= target, or None (a blended run starts at its source's loss,
    so the first step under the target says nothing; this one counts the climb after the swap)."""
    above = np.flatnonzero(np.asarray(losses) > target)
    if not above.size:
        return int(np.asarray(steps)[0]) if len(steps) else None
    return int(np.asarray(steps)[above[-1] + 1]) if above[-1] + 1 < len(steps) else None


_STYLES = [("converted", "#d62728", "converted (same weights), retrained"),
           ("blended", "#9467bd", "converted, attention blended into retention"),
           ("scratch", "#2ca02c", "same power-retention model from scratch")]


def _mean_sd(values) -> str:
    v = [x for x in values if x is not None]
    if len(v) < len(values):
        return f"{len(values) - len(v)} of {len(values)} not reached"
    return f"{np.mean(v):,.0f} ± {np.std(v, ddof=1):,.0f}" if len(v) > 1 else f"{v[0]:,}"


def metamorphosis(data, out: Path) -> StudyFigure:
    """Validation loss against retraining steps: per role the mean over seeds (a band from the lowest to the highest
    seed), the sources' final loss and the 5% band above it; per run the steps to within 5% of its own seed's
    source, and a summary over seeds."""
    groups = _roles(data)
    runs = data.runs.set_index("run_id")
    src_ids = [g["source"] for g in groups.values()]
    finals = {s: float(runs.loc[g["source"], "final_val_loss"]) for s, g in groups.items()}
    final = float(np.mean(list(finals.values())))
    target = (1 + TOLERANCE) * final
    n_seeds = len(groups)

    fig, axes = _figure(1, 1, panel=(7.5, 4.8))
    ax = axes[0, 0]
    steps, mean, lo, hi = _seeds.mean_curve(data.curves, src_ids)
    if not len(steps):
        raise FigureSkipped("metamorphosis: the source runs have no validation loss")
    ax.plot(steps, mean, color="#7f7f7f", lw=1.2, ls=":", label="source transformer (its own training)")
    spread = f", seeds {min(finals.values()):.3f} to {max(finals.values()):.3f}" if n_seeds > 1 else ""
    ax.axhline(final, color="#1f77b4", lw=1.2, label=f"source transformer, final ({final:.3f}{spread})")
    ax.axhspan(final, target, color="#1f77b4", alpha=0.12, label=f"within {TOLERANCE:.0%} of it")
    rows, result = [], {"seeds": {}, "target": target, "tolerance": TOLERANCE, "runs": [], "summary": []}
    per_role: dict[str, list[dict]] = {role: [] for role, *_ in _STYLES}
    for s, g in groups.items():
        s_target = (1 + TOLERANCE) * finals[s]
        result["seeds"][str(s)] = {"source": g["source"], "final_val_loss": finals[s], "target": s_target}
        for role, *_ in _STYLES:
            for rid in g[role]:
                st, loss = _curve(data, rid)
                peak = float(loss[1:].max()) if len(loss) > 1 else float(loss[0])
                r = {"role": role, "seed": s, "run_id": rid, "variant": str(runs.loc[rid, "variant"]),
                     "steps_to_target": steps_to_target(st, loss, s_target),
                     "steps_to_stay": steps_to_stay(st, loss, s_target), "peak_val_loss": peak,
                     "first_val_loss": float(loss[0]), "first_step": int(st[0]),
                     "final_val_loss": float(loss[-1]), "steps": int(st[-1])}
                result["runs"].append(r)
                per_role[role].append(r)
                hit, stay = (("not reached" if r[k] is None else r[k]) for k in ("steps_to_target", "steps_to_stay"))
                rows.append(f"| {role} | {s} | {rid} | {loss[0]:.4f} (step {st[0]}) | {peak:.4f} | {loss[-1]:.4f} | "
                            f"{finals[s]:.4f} | {hit} | {stay} |")
    summary = []
    for role, color, label in _STYLES:
        rs = per_role[role]
        if not rs:
            continue
        steps, mean, lo, hi = _seeds.mean_curve(data.curves, [r["run_id"] for r in rs])
        ax.plot(steps, mean, color=color, lw=1.8, marker="o", ms=2.5,
                label=label + (f" (mean of {len(rs)} seeds)" if len(rs) > 1 else ""))
        if len(rs) > 1:
            ax.fill_between(steps, lo, hi, color=color, alpha=0.18, lw=0)
        stays = [r["steps_to_stay"] for r in rs]
        for v in stays:
            if v is not None:  # from here on within the band (a blended run starts inside it)
                ax.axvline(v, color=color, lw=0.8, ls="--", alpha=0.7)
        fin = np.array([r["final_val_loss"] for r in rs])
        gap = fin - np.array([finals[r["seed"]] for r in rs])
        item = {"role": role, "seeds": len(rs), "steps_to_stay": stays,
                "final_val_loss_mean": float(fin.mean()),
                "final_val_loss_se": float(fin.std(ddof=1) / np.sqrt(len(fin))) if len(fin) > 1 else None,
                "final_minus_source_mean": float(gap.mean()),
                "final_minus_source_sd": float(gap.std(ddof=1)) if len(gap) > 1 else None}
        result["summary"].append(item)
        sd = "" if item["final_minus_source_sd"] is None else f" ± {item['final_minus_source_sd']:.4f}"
        each = ", ".join("-" if v is None else f"{v:,}" for v in stays)
        se = item["final_val_loss_se"] if item["final_val_loss_se"] is not None else float("nan")
        summary.append(f"| {role} | {len(rs)} | {each} | {_mean_sd(stays)} | "
                       f"{_seeds.fmt(item['final_val_loss_mean'], se, len(rs))} | "
                       f"{item['final_minus_source_mean']:+.4f}{sd} |")
    lo_y = min(final, *(r["final_val_loss"] for r in result["runs"])) if result["runs"] else final
    ax.set_ylim(lo_y - 0.1, max(target + 0.6, lo_y + 1.0))
    ax.set_xlabel("retraining steps (steps since initialisation)")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title("Metamorphosis: a transformer retrained into power retention"
                 + (f"\n{n_seeds} seeds; bands: lowest to highest seed; dashed: each run's step within 5% "
                    "from then on" if n_seeds > 1 else ""), fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    paths = save_figure(fig, out, "papers_metamorphosis")
    (Path(out) / "metamorphosis.json").write_text(json.dumps(result, indent=2))
    lines = [f"Source transformers: final validation loss {final:.4f} (mean of {n_seeds} seed(s): "
             + ", ".join(f"{finals[s]:.4f}" for s in groups)
             + f"); each run is compared with its own seed's source (within {TOLERANCE:.0%}).", "",
             "| role | seeds | steps to stay within 5% (each seed) | mean ± sd | final validation loss (mean ± SE) | "
             "final minus its source (mean ± sd) |", "|---|---|---|---|---|---|", *summary, "",
             "| run | seed | id | first validation loss | highest after it | final validation loss | "
             "its source's final | steps to within 5% | within 5% from then on |", "|" + "---|" * 9, *rows]
    return StudyFigure(paths=paths, lines=lines)
