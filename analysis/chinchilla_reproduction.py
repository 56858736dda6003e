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
# # Reproducing Epoch AI's Chinchilla fit
#
# The points of Figure 4 of Hoffmann et al. 2022 (Chinchilla), as extracted from the figure's SVG by Epoch AI
# ("Chinchilla Scaling: A replication attempt", Besiroglu et al. 2024), fitted with `scaling.analysis.fit_parametric`
# (approach 3: L(N, D) = E + A/N^alpha + B/D^beta, Huber loss delta 1e-3 on log-loss residuals, L-BFGS-B from
# Epoch's 4500-point grid, the 5 highest losses excluded, D = C / (6N)). The table compares the estimates with
# Epoch's and with the paper's.
#
# The data file is `shared/reference/chinchilla_epoch_svg_extracted.csv` beside the repository (the folder
# `$STATESCALE_SHARED` when set). `STATESCALE_SMALL=1`: a coarse start grid (243 starts, which finds the same
# optimum on this data) and 20 bootstrap resamples instead of 200.

# %%
# %matplotlib inline
import os
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from IPython.display import display
from matplotlib.figure import Figure

from scaling.analysis import fit_parametric, report

SMALL = os.environ.get("STATESCALE_SMALL") == "1"
CSV = "chinchilla_epoch_svg_extracted.csv"


def find_csv() -> Path:
    """$STATESCALE_SHARED/reference/CSV, else shared/reference/CSV in the working directory or any folder above."""
    here = Path.cwd().resolve()
    env = os.environ.get("STATESCALE_SHARED")
    cands = [Path(env) / "reference" / CSV, Path(env) / CSV] if env else []
    cands += [p / "shared" / "reference" / CSV for p in (here, *here.parents)]
    found = next((p for p in cands if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{CSV} not found in {[str(c) for c in cands]}; set STATESCALE_SHARED to the "
                                "folder that holds reference/" + CSV)
    return found


raw = pd.read_csv(find_csv())
df = pd.DataFrame({"N": raw["Model Size"], "C": raw["Training FLOP"], "loss": raw["loss"]})
df["D"] = df["C"] / (6 * df["N"])
kept = df.nsmallest(len(df) - 5, "loss")  # Epoch excluded the 5 points with the highest loss
print(f"{len(df)} points, {len(kept)} used; N {df.N.min():.3g} - {df.N.max():.3g}, C {df.C.min():.3g} - "
      f"{df.C.max():.3g} FLOPs")

# %%
fit = fit_parametric(kept["N"], kept["D"], kept["loss"], bootstrap=20 if SMALL else 200,
                     init_grid=report.FAST_PARAMETRIC_GRID if SMALL else None)
print(f"{fit.info['n_starts']} starts, objective {fit.info['objective']:.6g}")

EPOCH = {"E": 1.817, "A": 477.8, "B": 2143.9, "alpha": 0.3473, "beta": 0.3672}  # their fit of this file
EPOCH_PAPER = {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}  # as rounded in their paper
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al. 2022


def ci(name):
    lo, hi = fit.ci.get(name, (np.nan, np.nan))
    return f"[{lo:.4g}, {hi:.4g}]"


table = pd.DataFrame({
    "this fit": {k: f"{fit.params[k]:.4g}" for k in EPOCH},
    "95% CI (bootstrap)": {k: ci(k) for k in EPOCH},
    "Epoch AI (this file)": EPOCH,
    "this fit / Epoch - 1": {k: f"{fit.params[k] / EPOCH[k] - 1:+.2%}" for k in EPOCH},
    "Epoch AI (paper)": EPOCH_PAPER,
    "Chinchilla paper": CHINCHILLA,
})
display(table)

# %% [markdown]
# ## The fit against the points
# Left: the points (colour = training FLOPs; the excluded ones circled, some above the frame) and the fitted loss
# along isoFLOP slices, L(N, C / 6N), coloured the same way. Right: the
# compute-optimal model size each parameter set implies, N_opt(C) = G (C/6)^(beta/(alpha+beta)).

# %%
fig = Figure(figsize=(12, 4.8), layout="constrained")
ax, ax2 = fig.subplots(1, 2)
norm = matplotlib.colors.LogNorm(df["C"].min(), df["C"].max())
cmap = matplotlib.colormaps["viridis"]
ax.scatter(df["N"], df["loss"], c=df["C"], cmap=cmap, norm=norm, s=14, edgecolors="none")
ax.scatter(df.drop(kept.index)["N"], df.drop(kept.index)["loss"], facecolors="none", edgecolors="red", s=40,
           label="excluded (5 highest losses)")
for C in np.geomspace(df["C"].min() * 2, df["C"].max() / 2, 6):  # slices inside the data's compute range
    N = np.geomspace(df["N"].min(), df["N"].max(), 200)
    ax.plot(N, fit.predict(N, C / (6 * N)), color=cmap(norm(C)), lw=1.3)
ax.set_xscale("log")
ax.set_ylim(df["loss"].min() - 0.1, kept["loss"].max() + 0.2)
ax.set_xlabel("model size N (parameters)")
ax.set_ylabel("final training loss (nats/token)")
ax.set_title("Chinchilla Figure 4 points and the fitted L(N, C/6N)")
ax.legend(fontsize=8)
fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="training compute C (FLOPs)")


def n_opt(p, C):
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    return G * (C / 6) ** (p["beta"] / (p["alpha"] + p["beta"]))


Cs = np.geomspace(1e18, 1e25, 50)
for label, p, style in [("this fit", fit.params, "-"), ("Epoch AI", EPOCH, "--"),
                        ("Chinchilla paper", CHINCHILLA, ":")]:
    ax2.plot(Cs, n_opt(p, Cs), ls=style, lw=2, label=label)
ax2.set_xscale("log")
ax2.set_yscale("log")
ax2.set_xlabel("training compute C (FLOPs)")
ax2.set_ylabel("compute-optimal model size N_opt (parameters)")
ax2.set_title("Implied compute-optimal allocation")
ax2.grid(True, which="both", alpha=0.25)
ax2.legend()
display(fig)
