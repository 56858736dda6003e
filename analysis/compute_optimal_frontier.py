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
# # The compute-optimal frontier
#
# Chinchilla's three ways to the compute-optimal model size N_opt(C) and data D_opt(C), on one sweep:
#
# 1. the lower envelope of the loss curves against FLOPs,
# 2. isoFLOP parabolas (loss against log N at fixed FLOPs; their minima),
# 3. the parametric fit L(N, D) = E + A/N^alpha + B/D^beta (and the allocation it implies under C = 6ND).
#
# Every number comes from `scaling.analysis` (the same code as `scaling analyze`); this notebook only arranges it.
#
# Settings (environment variables): `STATESCALE_SWEEP` a sweep directory (holds `sweep.db`; default
# `sweeps/state_size` under the repository, when it exists), or `synthetic`; `STATESCALE_SMALL=1` coarse start
# grids and few bootstrap resamples (seconds, for CI). With `synthetic`, or with no sweep given and none at the
# default place, the notebook runs on a **synthetic** sweep whose losses follow a known law, and says so: synthetic
# test data, written by the test suite's fixture `tests/analysis/synthetic.py` (no model is trained).

# %%
# %matplotlib inline
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from scaling.analysis import plots, report

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

    # state_flops=0: C = 6ND exactly, so the law's own allocation exponents are the truth to compare with
    synthetic_sweep(sweep_dir, variants=["attention", "retention-p2-hd32", "mamba-d64"], state_flops=0.0)
    law = SYNTHETIC_LAW
    a_true = law["beta"] / (law["alpha"] + law["beta"])
    display(Markdown("**Demo on synthetic data** (test data from `tests/analysis/synthetic.py`; no `STATESCALE_SWEEP` "
                     "given): losses follow "
                     f"L = E + A/N^{law['alpha']} + B/D^{law['beta']} + state and context terms, so the true "
                     f"exponent of N_opt(C) is beta/(alpha+beta) = {a_true:.4f} for the recurrent groups "
                     "(attention also pays for its context, C != 6ND)."))
data = report.load_sweep(sweep_dir)
print(f"{sweep_dir}: {len(data.runs)} done runs; status {data.counts}")
display(data.runs[["run_id", "variant", "family", "non_embedding_params", "state_size", "context", "tokens",
                   "flops", "budget", "final_val_loss"]].head())

# %% [markdown]
# ## Loss against compute
# Every run's loss curve, coloured by its state size, and the frontier: the lowest loss reached at each compute.

# %%
curve_loss = report.choose_curve_loss(data)
display(plots.plot_loss_vs_flops(data.runs, data.curves, curve_loss=curve_loss))

# %% [markdown]
# ## Approaches 1-3
# Per model group (runs that differ only in size and budget). `fit_sweep` skips what the data cannot support and
# says why.

# %%
records = report.fit_sweep(data, bootstrap=BOOTSTRAP, fast=SMALL, kinds=["envelope", "isoflop", "parametric"])


def estimate(fit, name):
    v, ci = fit.params.get(name, np.nan), fit.ci.get(name)
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


table = pd.DataFrame([{"approach": report.FIT_KINDS[r.kind].split(":")[0], "group": r.group,
                       "a (N_opt ∝ C^a)": estimate(r.fit, "a"), "b (D_opt ∝ C^b)": estimate(r.fit, "b")}
                      for r in records if r.ok])
skipped = pd.DataFrame([{"fit": r.kind, "group": r.group, "why": r.reason} for r in records if not r.ok])
display(table)
if len(skipped):
    display(skipped)

# %% [markdown]
# ## IsoFLOP profiles and the allocation

# %%
iso = [(r.group, r.fit) for r in records if r.kind == "isoflop" and r.ok]
for fig in plots.plot_isoflops(iso):
    display(fig)

# %%
alloc = [(r.kind, r.group, r.fit, r.span) for r in records if r.ok]
if alloc:
    display(plots.plot_allocation(alloc))
else:
    print("no allocation fit on this data")

# %% [markdown]
# ## How the three approaches agree
# The spread of the exponent `a` across approaches, per group: a wide spread means the sweep's sizes or budgets do not
# pin the optimum down (e.g. too few sizes around it).

# %%
spread = pd.DataFrame([{"group": r.group, "kind": r.kind, "a": r.fit.params["a"]} for r in records if r.ok])
if len(spread):
    display(spread.pivot(index="group", columns="kind", values="a").round(4))
