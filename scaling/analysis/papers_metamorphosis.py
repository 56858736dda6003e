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
from scaling.analysis.figures import FigureSkipped, StudyFigure
from scaling.analysis.plots import _figure, save_figure

TOLERANCE = 0.05
# Published by Manifest AI for Brumby-14B-Base: retrained from Qwen3-14B-Base, it reaches Qwen3's training loss
# on the same data after 3000 steps (60 hours on 32 H100s).
PAPER_BRUMBY_STEPS = 3000


def _roles(data) -> dict:
    """{"source": id, "converted": [ids], "blended": [ids], "scratch": [ids]} of the done runs, from depends_on,
    train.blend_steps and the patterns."""
    with sqlite3.connect(f"file:{Path(data.path) / 'sweep.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, depends_on, config FROM runs").fetchall()
    done = set(data.runs["run_id"]) if len(data.runs) else set()
    deps = {rid: dep for rid, dep, _ in rows if rid in done}
    cfgs = {rid: _config.from_dict(json.loads(cfg)) for rid, _, cfg in rows if rid in done}
    patterns = {rid: _config.layer_pattern(c.model) for rid, c in cfgs.items()}
    converted = [rid for rid, dep in deps.items() if dep]
    if not converted:
        raise FigureSkipped("metamorphosis: no finished run initialised from another run (train.init_from) yet")
    sources = {deps[c] for c in converted}
    if len(sources) != 1:
        raise FigureSkipped(f"metamorphosis: the converted runs start from {len(sources)} different runs; "
                            "the figure compares against one source")
    source = sources.pop()
    if source not in done:
        raise FigureSkipped(f"metamorphosis: the source run {source} is not done")
    target_patterns = {patterns[c] for c in converted}
    scratch = [rid for rid in deps if not deps[rid] and rid != source and patterns[rid] in target_patterns]
    blended = [rid for rid in converted if cfgs[rid].train.get("blend_steps")]
    return {"source": source, "converted": [c for c in converted if c not in blended], "blended": blended,
            "scratch": scratch}


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


def metamorphosis(data, out: Path) -> StudyFigure:
    roles = _roles(data)
    runs = data.runs.set_index("run_id")
    src_steps, src_loss = _curve(data, roles["source"])
    if not len(src_loss):
        raise FigureSkipped("metamorphosis: the source run has no validation loss")
    final = float(runs.loc[roles["source"], "final_val_loss"])
    target = (1 + TOLERANCE) * final

    fig, axes = _figure(1, 1, panel=(7.5, 4.8))
    ax = axes[0, 0]
    ax.plot(src_steps, src_loss, color="#7f7f7f", lw=1.2, ls=":", label="source transformer (its own training)")
    ax.axhline(final, color="#1f77b4", lw=1.2, label=f"source transformer, final ({final:.3f})")
    ax.axhspan(final, target, color="#1f77b4", alpha=0.12, label=f"within {TOLERANCE:.0%} of it")
    rows, result = [], {"source": {"run_id": roles["source"], "final_val_loss": final, "steps": int(src_steps[-1])},
                        "target": target, "runs": []}
    styles = [("converted", "#d62728", "converted (same weights), retrained"),
              ("blended", "#9467bd", "converted, attention blended into retention"),
              ("scratch", "#2ca02c", "same power-retention model from scratch")]
    for role, color, label in styles:
        for rid in roles[role]:
            steps, loss = _curve(data, rid)
            hit = steps_to_target(steps, loss, target)
            stay = steps_to_stay(steps, loss, target)
            peak = float(loss[1:].max()) if len(loss) > 1 else float(loss[0])
            ax.plot(steps, loss, color=color, lw=1.8, marker="o", ms=2.5, label=label)
            if stay is not None:  # from here on within the band (a blended run starts inside it)
                ax.axvline(stay, color=color, lw=0.8, ls="--")
                ax.annotate(f"{stay}", (stay, target), xytext=(4, 8), textcoords="offset points", color=color,
                            fontsize=8)
            result["runs"].append({"role": role, "run_id": rid, "variant": str(runs.loc[rid, "variant"]),
                                   "steps_to_target": hit, "steps_to_stay": stay, "peak_val_loss": peak,
                                   "first_val_loss": float(loss[0]),
                                   "first_step": int(steps[0]), "final_val_loss": float(loss[-1]),
                                   "steps": int(steps[-1])})
            rows.append(f"| {role} | {rid} | {loss[0]:.4f} (step {steps[0]}) | {peak:.4f} | {loss[-1]:.4f} (step "
                        f"{steps[-1]}) | {'not reached' if hit is None else hit} | "
                        f"{'not reached' if stay is None else stay} |")
    lo = min(final, *(r["final_val_loss"] for r in result["runs"])) if result["runs"] else final
    ax.set_ylim(lo - 0.1, max(target + 0.6, lo + 1.0))
    ax.set_xlabel("retraining steps (steps since initialisation)")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title("Metamorphosis: a transformer retrained into power retention")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    paths = save_figure(fig, out, "papers_metamorphosis")
    (Path(out) / "metamorphosis.json").write_text(json.dumps(result, indent=2))
    lines = [f"Source transformer: final validation loss {final:.4f} after {int(src_steps[-1])} steps; target "
             f"(within {TOLERANCE:.0%}): {target:.4f}.", "",
             "| run | id | first validation loss | highest after it | final validation loss | steps to within 5% | "
             "within 5% from then on |", "|---|---|---|---|---|---|---|", *rows]
    return StudyFigure(paths=paths, lines=lines)
