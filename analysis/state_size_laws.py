# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # State-size laws
#
# How loss depends on the recurrent state size S (elements per sequence, `scaling.accounting.state_size`) at
# fixed parameters and data, per mixer family: L(N, S, D) = E + A/N^alpha + B/S^gamma + C/D^beta, then the
# compute-optimal (N, S) at a FLOP budget under a cost model measured from the sweep itself.
#
# Settings (environment variables): `STATESCALE_SWEEP` a sweep directory (default `sweeps/state_size` under the
# repository, when it exists), or `synthetic`; `STATESCALE_SMALL=1` coarse start grids and few bootstrap resamples
# (for CI). With `synthetic`, or with no sweep given and none at the default place, the notebook runs on a
# **synthetic** sweep whose losses follow a known law, and says so: synthetic test data, written by the test suite's
# fixture `tests/analysis/synthetic.py` (no model is trained).

# %%
# %matplotlib inline
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from scaling.analysis import compute_optimal_state, plots_state, report

SMALL = os.environ.get("STATESCALE_SMALL") == "1"
BOOTSTRAP = 20 if SMALL else 200


def repo_root() -> Path:
    """The repository root: the first folder above the working directory that holds pyproject.toml."""
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file()), here)


sweep_dir = os.environ.get("STATESCALE_SWEEP") or repo_root() / "sweeps" / "state_size"
# "synthetic", or no STATESCALE_SWEEP and no default sweep: the demo; a sweep that was asked for must exist
SYNTHETIC = str(sweep_dir) == "synthetic" or (
    "STATESCALE_SWEEP" not in os.environ and not (Path(sweep_dir) / "sweep.db").is_file())
if SYNTHETIC:
    sweep_dir = Path(tempfile.mkdtemp(prefix="statescale-demo-")) / "synthetic"
    # the synthetic sweep is test data: the test suite's fixture, importable from the repository root
    if str(repo_root()) not in sys.path:
        sys.path.insert(0, str(repo_root()))
    from tests.analysis.synthetic import SYNTHETIC_LAW, synthetic_sweep

    synthetic_sweep(sweep_dir)
    truth = pd.DataFrame(SYNTHETIC_LAW["state"], index=["B", "gamma"]).T
    display(Markdown("**Demo on synthetic data** (test data from `tests/analysis/synthetic.py`; no `STATESCALE_SWEEP` "
                     "given). The true state terms B/S^gamma "
                     f"per family, with alpha = {SYNTHETIC_LAW['alpha']}, "
                     f"beta = {SYNTHETIC_LAW['beta']}:"))
    display(truth)
data = report.load_sweep(sweep_dir)
runs = data.runs[data.runs["final_val_loss"].notna()]
print(f"{sweep_dir}: {len(runs)} done runs with a final loss")
display(runs.groupby("family").agg(runs=("run_id", "size"), state_sizes=("state_size", "nunique"),
                                   S_min=("state_size", "min"), S_max=("state_size", "max"),
                                   best_loss=("final_val_loss", "min")))

# %% [markdown]
# ## Fits, one per mixer family (and context)

# %%
records = report.fit_sweep(data, bootstrap=BOOTSTRAP, fast=SMALL, kinds=["state_law"])
fitted = [r for r in records if r.ok]


def estimate(fit, name):
    if name not in fit.params:
        return "-"
    v, ci = fit.params[name], fit.ci.get(name)
    return f"{v:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else f"{v:.4g}"


display(pd.DataFrame([{"group": r.group, **{k: estimate(r.fit, k) for k in ("E", "A", "alpha", "B", "gamma", "C",
                                                                          "beta")}, "runs": r.n_points}
                      for r in fitted]))
for r in records:
    if not r.ok:
        print(f"skipped {r.group}: {r.reason}")

# %%
display(plots_state.plot_loss_vs_state(runs, [(r.keys["family"], r.fit, r.keys) for r in fitted]))

# %%
if fitted:
    display(plots_state.plot_state_law([(r.group, r.fit) for r in fitted]))
else:
    print("no state law fitted")

# %% [markdown]
# ## Compute-optimal state size
# The cost model is measured, not assumed: training FLOPs per token of every run (3 x the accounting's forward
# count) regressed on N and S per family, `cost = c0 + cN N + cS S` (least squares). A law with a data term then
# gives, at each budget C, the (N, S) with the lowest predicted loss at D = C / cost(N, S), searched over the
# family's range of N and S (no extrapolation; `at_edge` marks optima on the boundary of that range).

# %%
rows = []
for r in fitted:
    fam = runs[(runs["family"] == r.keys["family"])
               & ((runs["context"] == r.keys["context"]) if r.keys["context"] is not None else True)]
    X = np.column_stack([np.ones(len(fam)), fam["non_embedding_params"], fam["state_size"]])
    (c0, cN, cS), *_ = np.linalg.lstsq(X, 3 * fam["flops_per_token"].to_numpy(float), rcond=None)
    budgets = np.sort(fam["budget"].dropna().unique()) if fam["budget"].notna().any() else [fam["flops"].median()]
    opt = compute_optimal_state(r.fit, budgets, lambda N, S, c0=c0, cN=cN, cS=cS: c0 + cN * N + cS * S,
                                tokens=None if r.fit.has_D else r.fit.info.get("tokens"))
    for j, C in enumerate(opt["C"]):
        rows.append({"group": r.group, "cost per token": f"{c0:.3g} + {cN:.3g} N + {cS:.3g} S",
                     "C (FLOPs)": f"{C:.2g}", "N_opt": f"{opt['N_opt'][j]:.3g}", "S_opt": f"{opt['S_opt'][j]:.3g}",
                     "D_opt": f"{opt['D_opt'][j]:.3g}", "loss": round(float(opt["loss"][j]), 4),
                     "at_edge": bool(opt["at_edge"][j])})
if rows:
    display(pd.DataFrame(rows))
else:
    print("no state law fitted: nothing to optimise")
