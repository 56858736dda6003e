"""Judging fitted laws by what they predict: held-out runs, seed-to-seed spread, and the laws' headline numbers.

- :func:`split_holdout`: the runs at one FLOP budget (default: the largest) are set aside; the fits see the rest.
- :func:`predict_holdout`: each held-out run predicted by the approach-3 law of its model group and by the
  state-size law of its family, with the 90% prediction interval (scaling.analysis.predict), beside what it
  measured: relative error and whether the interval covered it.
- :func:`seed_spread`: the points run over several seeds (mean, standard deviation, standard error of the mean),
  and :func:`variant_differences`: differences between variants at one point, against that spread.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from scaling.analysis import seeds as _seeds
from scaling.analysis.load import SweepData
from scaling.analysis.parabola import VERTEX_REACH, _parabola

__all__ = ["PREDICT_LEVEL", "predict_holdout", "predict_optimum", "seed_spread", "split_holdout", "variant_differences"]

PREDICT_LEVEL = 0.9


def split_holdout(data: SweepData, budget: float | None = None) -> tuple[SweepData, pd.DataFrame, float]:
    """(data without the held-out runs, the held-out runs, the held-out budget). ``budget``: default the largest
    FLOP budget of the sweep. Raises ValueError when the sweep has fewer than two budgets or lacks ``budget``."""
    runs = data.runs
    budgets = sorted(float(b) for b in runs["budget"].dropna().unique())
    if len(budgets) < 2:
        raise ValueError(f"--holdout: needs runs at >= 2 FLOP budgets to fit on some and predict another; this "
                         f"sweep has {len(budgets)}")
    if budget is None:
        budget = budgets[-1]
    match = [b for b in budgets if math.isclose(b, budget, rel_tol=1e-6)]
    if not match:
        raise ValueError(f"--holdout {budget:.3g}: no runs at that budget; budgets: "
                         f"{', '.join(f'{b:.3g}' for b in budgets)}")
    held = np.isclose(runs["budget"].to_numpy(float), match[0], rtol=1e-6)
    kept = runs[~held]
    fit_data = dataclasses.replace(data, runs=kept, curves=data.curves[data.curves["run_id"].isin(set(kept["run_id"]))])
    return fit_data, runs[held], match[0]


def _model_key(row) -> str:
    return row["variant"] if row["variant"] else row["family"]


def predict_holdout(records, held: pd.DataFrame, n_col: str, level: float = PREDICT_LEVEL) -> pd.DataFrame:
    """One row per (held-out run, law that covers it): family, variant, run_id, law, N, D, S, predicted, lo, hi,
    measured, measured_se, rel_error (predicted / measured - 1), covered (lo <= measured <= hi)."""
    parametric = {r.keys.get("model"): r for r in records if r.kind == "parametric" and r.ok}
    state = {(r.keys.get("family"), r.keys.get("context")): r for r in records if r.kind == "state_law" and r.ok}
    multi_ctx = any(k[1] is not None for k in state)
    rows = []
    for _, run in held.iterrows():
        measured = float(run["final_val_loss"])
        if not (measured > 0):
            continue
        N, D, S = float(run[n_col]), float(run["tokens"]), float(run["state_size"])
        cands = []
        rec = parametric.get(_model_key(run))
        if rec is not None:
            cands.append(("approach 3: L(N, D)", rec.fit.predict(N, D), rec.fit.predict_interval(N, D, level=level)))
        rec = state.get((run["family"], int(run["context"]) if multi_ctx else None))
        if rec is not None and S > 0:
            args = (N, S, D) if rec.fit.has_D else (N, S)
            if rec.fit.has_D:
                cands.append(("state law: L(N, S, D)", rec.fit.predict(*args),
                              rec.fit.predict_interval(*args, level=level)))
        for law, pred, (lo, hi) in cands:
            rows.append({"family": run["family"], "variant": run["variant"], "run_id": run["run_id"], "law": law,
                         "N": N, "D": D, "S": S, "budget": float(run["budget"]), "predicted": float(pred),
                         "lo": float(lo), "hi": float(hi), "measured": measured,
                         "measured_se": float(run.get("final_val_loss_se", float("nan"))),
                         "rel_error": float(pred) / measured - 1.0, "covered": bool(lo <= measured <= hi)})
    cols = ["family", "variant", "run_id", "law", "N", "D", "S", "budget", "predicted", "lo", "hi", "measured",
            "measured_se", "rel_error", "covered"]
    return pd.DataFrame(rows, columns=cols)


def predict_optimum(records, held: pd.DataFrame, n_col: str) -> pd.DataFrame:
    """Approach 2's compute-optimal size at a held-out budget against the held-out runs' own isoFLOP parabola.

    One row per (approach-2 fit, held-out budget with >= 3 sizes of its model group): ``predicted`` N_opt = k_N C^a
    at that budget, ``lo`` / ``hi`` the 95% percentile interval of the fit's replicates evaluated there (NaN
    without bootstrap), ``measured`` the vertex of the parabola in log N through the held-out runs (seeds
    averaged; NaN when it has no minimum or lies more than 10x outside their sizes, as approach 2 itself rules),
    ``sizes`` the held-out sizes, ``ratio`` measured / predicted and ``covered`` (lo <= measured <= hi)."""
    cols = ["family", "variant", "budget", "predicted", "lo", "hi", "measured", "sizes", "ratio", "covered"]
    rows = []
    for rec in (r for r in records if r.kind == "isoflop" and r.ok):
        mine = held[[_model_key(run) == rec.keys.get("model") for _, run in held.iterrows()]]
        mine = mine[mine["final_val_loss"] > 0]
        for budget, g in mine.groupby("budget", sort=True):
            cells = g.groupby(n_col)["final_val_loss"].mean()
            if len(cells) < 3:
                continue
            x = np.log(cells.index.to_numpy(float))
            _, vx, _ = _parabola(x, cells.to_numpy(float))
            measured = math.exp(vx) if x.min() - VERTEX_REACH <= vx <= x.max() + VERTEX_REACH else float("nan")
            predicted = rec.fit.N_opt(float(budget))
            lo, hi = rec.fit.N_opt_interval(float(budget))
            rows.append({"family": g["family"].iloc[0], "variant": g["variant"].iloc[0], "budget": float(budget),
                         "predicted": predicted, "lo": lo, "hi": hi, "measured": measured,
                         "sizes": [float(v) for v in cells.index], "ratio": measured / predicted,
                         "covered": bool(lo <= measured <= hi)})
    return pd.DataFrame(rows, columns=cols)


def summarize_holdout(pred: pd.DataFrame) -> pd.DataFrame:
    """Per (family, law): held-out runs, median and max |relative error|, coverage of the interval."""
    if not len(pred):
        return pd.DataFrame(columns=["family", "law", "runs", "median_abs_rel_error", "max_abs_rel_error",
                                     "coverage"])
    g = pred.assign(abs_err=pred["rel_error"].abs()).groupby(["family", "law"], sort=True)
    return g.agg(runs=("run_id", "count"), median_abs_rel_error=("abs_err", "median"),
                 max_abs_rel_error=("abs_err", "max"), coverage=("covered", "mean")).reset_index()


def _point_keys(runs: pd.DataFrame, axes: list[str]) -> list[str]:
    return ["variant", "family", "size", "budget", "context", *[a for a in axes if a in runs.columns]]


def seed_spread(runs: pd.DataFrame, axes: list[str] = ()) -> pd.DataFrame:
    """Points with >= 2 seeds: n, mean, std (ddof 1) and se (std / sqrt n) of the final validation loss, and the
    mean of the runs' own evaluation standard errors (``eval_se``: how much of the spread the evaluation sample
    alone explains)."""
    keys = _point_keys(runs, list(axes))
    ok = runs[runs["final_val_loss"].notna()]
    rows = []
    for vals, g in ok.groupby(keys, sort=True, dropna=False):
        if g["seed"].nunique() < 2:
            continue
        loss = g["final_val_loss"].to_numpy(float)
        sd = float(np.std(loss, ddof=1))
        eval_se = float(g["final_val_loss_se"].mean()) if "final_val_loss_se" in g else float("nan")
        rows.append({**dict(zip(keys, vals, strict=True)), "seeds": len(g), "mean": float(loss.mean()), "std": sd,
                     "se": sd / math.sqrt(len(g)), "eval_se": eval_se})
    return pd.DataFrame(rows, columns=[*keys, "seeds", "mean", "std", "se", "eval_se"])


def variant_differences(spread: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Pairwise differences of the seed means of variants at the same (size, budget, context): ``diff`` (b - a),
    ``se`` (sqrt(se_a^2 + se_b^2)), ``dof`` (Welch-Satterthwaite), ``threshold`` (Student t's two-sided ``level``
    quantile at ``dof``, times ``se``: :func:`scaling.analysis.seeds.welch`) and ``verdict``: "real" when |diff| >
    threshold (Welch's t test), else "within seed spread"."""
    cols = ["size", "budget", "context", "a", "b", "diff", "se", "dof", "threshold", "verdict"]
    rows = []
    if not len(spread):
        return pd.DataFrame(columns=cols)
    for (size, budget, ctx), g in spread.groupby(["size", "budget", "context"], sort=True, dropna=False):
        g = g.sort_values("mean")
        items = list(g.itertuples())
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                a, b = items[i], items[j]
                d, se = b.mean - a.mean, math.hypot(a.se, b.se)
                dof, q = _seeds.welch(a.se, a.seeds, b.se, b.seeds, level)
                rows.append({"size": size, "budget": budget, "context": ctx, "a": a.variant, "b": b.variant,
                             "diff": d, "se": se, "dof": dof, "threshold": q * se,
                             "verdict": _seeds.verdict(d, se, dof, level)})
    return pd.DataFrame(rows, columns=cols)


def headline(records, holdout_summary: pd.DataFrame | None = None,
             optimum: pd.DataFrame | None = None) -> list[tuple[str, str, Any]]:
    """(family or group, quantity, 'value [lo, hi]') lines of the laws worth printing at the end of a job."""
    out = []

    def cell(fit, k):
        v, ci = fit.params.get(k), fit.ci.get(k)
        if v is None or not math.isfinite(v):
            return "-"
        return f"{v:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else f"{v:.3g}"

    for r in records:
        if not r.ok:
            continue
        if r.kind == "isoflop":
            out.append((r.group, "approach 2: N_opt ~ C^a", cell(r.fit, "a")))
        elif r.kind == "envelope":
            out.append((r.group, "approach 1: N_opt ~ C^a", cell(r.fit, "a")))
        elif r.kind == "parametric":
            out.append((r.group, "approach 3: alpha, beta", f"{cell(r.fit, 'alpha')}, {cell(r.fit, 'beta')}"))
        elif r.kind == "state_law":
            out.append((r.group, "state law: L ~ B / S^gamma, gamma", cell(r.fit, "gamma")))
    if holdout_summary is not None:
        for row in holdout_summary.itertuples():
            out.append((row.family, f"held out ({row.law})",
                        f"median |error| {100 * row.median_abs_rel_error:.1f}%, "
                        f"max {100 * row.max_abs_rel_error:.1f}%, {100 * row.coverage:.0f}% of {row.runs} "
                        f"inside the {100 * PREDICT_LEVEL:.0f}% interval"))
    if optimum is not None:
        for row in optimum.itertuples():
            where = ("no minimum" if not math.isfinite(row.measured) else
                     f"{row.measured:.3g} ({'inside' if row.covered else 'outside'})")
            out.append((row.variant or row.family, f"held out (approach 2: N_opt at {row.budget:.2g})",
                        f"predicted {row.predicted:.3g} [{row.lo:.3g}, {row.hi:.3g}], held-out parabola {where}"))
    return out
