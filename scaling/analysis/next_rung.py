"""Closing the loop: from the fitted laws to the next rung of the ladder (``scaling predict``).

For a FLOP budget C and each mixer family with an approach-3 fit (its ladder variant), :func:`plan_rung` gives

- the compute-optimal N and D at C under the law, with C = cost(N) x D and cost the accounting's training FLOPs
  per token as fitted on the family's runs (scaling.analysis.cost), not 6ND;
- the state size of that model (the variant's state grows with its size: log S fitted on log N over its runs);
  where the family also has a state-size law with a data term, the compute-optimal (N, S) pair under that law;
- the predicted loss at (N_opt, D_opt) with its prediction interval;
- 90% intervals on N, D and S from parameter vectors drawn from the fit's delta-method normal approximation.

:func:`write_rung_spec` writes a sweep spec for that rung: per family, the run config of the variant nearest to
N_opt with ``model.d_model`` chosen so that the accounting's non-embedding parameter count is closest to N_opt,
trained at budget C. `scaling sweep` that file, then `scaling analyze --holdout C` checks the prediction.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scaling.analysis.cost import CostModel, fit_cost
from scaling.analysis.parametric import _parametric_params
from scaling.analysis.predict import sample_thetas
from scaling.analysis.state_law import StateLawFit, _state_params, compute_optimal_state

__all__ = ["plan_rung", "write_rung_spec"]

INTERVAL = (5.0, 95.0)
N_SAMPLES = 400


def _pct(x: np.ndarray) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    return (float("nan"), float("nan")) if not len(x) else tuple(float(v) for v in np.percentile(x, INTERVAL))


def _with_theta(fit, theta, to_params):
    """A copy of ``fit`` whose parameters are those of ``theta`` (a draw from its delta-method normal)."""
    out = copy.copy(fit)
    out.params = to_params(np.asarray(theta, np.float64))
    return out


def plan_rung(records, runs: pd.DataFrame, budget: float, n_col: str = "non_embedding_params") -> pd.DataFrame:
    """One row per family with an approach-3 fit: N_opt, D_opt, S (and their intervals), the predicted loss and
    its interval, the state-law optimum where there is one, and the run that the next rung's config starts from."""
    state = {r.keys.get("family"): r for r in records if r.kind == "state_law" and r.ok and r.fit.has_D}
    rows = []
    for r in records:
        if r.kind != "parametric" or not r.ok:
            continue
        fit, model = r.fit, r.keys.get("model")
        g = runs[(runs["variant"] == model) | ((runs["variant"] == "") & (runs["family"] == model))]
        if not len(g):
            continue
        family = str(g["family"].iloc[0])
        N_opt, D_opt = float(fit.N_opt(budget)), float(fit.D_opt(budget))
        theta = np.asarray(fit.info["theta"], np.float64)
        logX = np.log(np.vstack([fit.data["N"], fit.data["D"]]))
        draws = sample_thetas(theta, logX, fit.residuals["log_loss"], N_SAMPLES, seed=0)
        Ns = np.array([_with_theta(fit, t, _parametric_params).N_opt(budget) for t in draws], np.float64)
        Ds = budget / fit.cost(Ns)
        gs = g[g["state_size"] > 0]
        s_of_n = fit_cost(gs[n_col], gs["state_size"]) if gs[n_col].nunique() > 1 else None
        S_opt = float(s_of_n(N_opt)) if s_of_n else float("nan")
        lo, hi = fit.predict_interval(N_opt, D_opt)
        row = {"family": family, "group": r.group, "budget": budget, "N_opt": N_opt, "N_lo": _pct(Ns)[0],
               "N_hi": _pct(Ns)[1], "D_opt": D_opt, "D_lo": _pct(Ds)[0], "D_hi": _pct(Ds)[1], "S": S_opt,
               "S_lo": float(s_of_n(_pct(Ns)[0])) if s_of_n else float("nan"),
               "S_hi": float(s_of_n(_pct(Ns)[1])) if s_of_n else float("nan"),
               "loss": float(fit.predict(N_opt, D_opt)), "loss_lo": lo, "loss_hi": hi,
               "cost": fit.cost.describe(), "extrapolation": budget / float(g["flops"].max())}
        nearest = g.iloc[int(np.argmin(np.abs(np.log(g[n_col].to_numpy(float) / N_opt))))]
        row["from_run"] = nearest["run_id"]
        srec = state.get(family)
        if srec is not None and srec.fit.info.get("cost"):
            row.update(_state_optimum(srec.fit, budget))
        rows.append(row)
    return pd.DataFrame(rows)


def _state_optimum(fit: StateLawFit, budget: float) -> dict[str, Any]:
    cost = CostModel.from_dict(fit.info["cost"])
    span = lambda v: np.geomspace(v.min() / 4, v.max() * 4, 96)  # noqa: E731  (a modest extrapolation)
    Ns, Ss = span(fit.data["N"]), span(fit.data["S"])
    best = compute_optimal_state(fit, budget, lambda N, S: cost(N, S), N=Ns, S=Ss)
    theta = np.asarray(fit.info["theta"], np.float64)
    draws = sample_thetas(theta, np.log(fit._fit_covariates()), fit.residuals["log_loss"], 100, seed=0)
    S_draw = []
    for t in draws:
        try:
            draw = _with_theta(fit, t, _state_params)
            S_draw.append(float(compute_optimal_state(draw, budget, lambda N, S: cost(N, S), N=Ns, S=Ss)["S_opt"][0]))
        except (ValueError, FloatingPointError):
            continue
    lo, hi = _pct(np.asarray(S_draw))
    return {"state_law_N_opt": float(best["N_opt"][0]), "state_law_S_opt": float(best["S_opt"][0]),
            "state_law_S_lo": lo, "state_law_S_hi": hi, "state_law_at_edge": bool(best["at_edge"][0])}


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def _d_model_for(cfg_dict: dict, N_opt: float) -> tuple[int, int]:
    """(d_model, its non-embedding parameters) closest in log to N_opt among valid multiples of 8."""
    from scaling import accounting
    from scaling import config as _config

    best = None
    for d in range(8, 8193, 8):
        cfg = _config.from_dict(copy.deepcopy(cfg_dict))
        cfg.model.d_model = d
        try:
            _config.validate(cfg)
        except _config.ConfigError:
            continue
        n = accounting.params(cfg)["non_embedding"]
        gap = abs(math.log(n / N_opt))
        if best is None or gap < best[0]:
            best = (gap, d, n)
        if n > 4 * N_opt:
            break
    if best is None:
        raise ValueError("no valid d_model found for the next rung")
    return best[1], best[2]


def write_rung_spec(plan: pd.DataFrame, runs_config: dict[str, str], path: Path, sweep_name: str) -> Path:
    """Write a sweep spec (get_sweep()) training each family's nearest config at its N_opt, at the plan's budget.

    ``runs_config``: run id -> the run's resolved config JSON (the store's ``runs.config``)."""
    variants = {}
    notes = []
    for row in plan.itertuples():
        cfg = json.loads(runs_config[row.from_run])
        cfg = cfg.get("config", cfg)
        d, n = _d_model_for(cfg, row.N_opt)
        over = {k: v for k, v in _flat(cfg).items() if k not in ("train.steps", "train.tokens", "model.d_model")}
        over["model.d_model"] = d
        label = f"{row.family}-d{d}"
        over["model.name"] = label
        variants[label] = over
        notes.append(f"{row.family}: N_opt {row.N_opt:.3g} [{row.N_lo:.3g}, {row.N_hi:.3g}] -> d_model {d} "
                     f"(N = {n:,}); predicted loss {row.loss:.4f} [{row.loss_lo:.4f}, {row.loss_hi:.4f}]")
    budget = float(plan["budget"].iloc[0])
    text = (
        f'"""The next rung of {sweep_name}: the compute-optimal model of each family at {budget:.3g} FLOPs,\n'
        "as predicted by `scaling predict` from the laws fitted on the sweep's runs.\n\n"
        + "\n".join(notes) + "\n\nRun it into the same sweep directory, then `scaling analyze --holdout "
        f'{budget:.3g}` compares the prediction with the runs.\n"""\n\n'
        "from scaling.sweep import Sweep\n\n"
        f"VARIANTS = {json.dumps(variants, indent=4, default=list)}\n\n\n"
        "def get_sweep():\n"
        f"    return Sweep(name={sweep_name!r}, base=\"configs/models/transformer_tiny.py\",\n"
        f"                 description=\"next rung at {budget:.3g} FLOPs (scaling predict)\",\n"
        "                 variants={k: {kk: tuple(vv) if isinstance(vv, list) else vv for kk, vv in v.items()}\n"
        "                           for k, v in VARIANTS.items()},\n"
        f"                 budgets=[{budget!r}])\n"
    )
    text = text.replace(": true", ": True").replace(": false", ": False").replace(": null", ": None")
    path = Path(path)
    path.write_text(text)
    return path
