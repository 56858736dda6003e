"""Which fits a sweep supports, on which runs: :func:`plan_fits` (deferred jobs) and :func:`fit_sweep` (one
:class:`FitRecord` per (law, group), the fit or why it was skipped).

Which fits run, and on which runs (a fit that the data cannot support is skipped, with the reason in report.md):

- Chinchilla approaches 1-3 per *model group*: runs that differ only in model size and FLOP budget (same
  variant and sweep-axis point, e.g. one mixer configuration at one context). N is the non-embedding parameter
  count (``params="total"`` for all parameters), D the training tokens, C the training FLOPs, loss the final
  validation loss in nats per token.
  Approach 1 (lower envelope of loss vs FLOPs over the runs' final evaluations, seeds averaged) needs >= 3
  model sizes with final losses at >= 2 budgets; approach 2 (isoFLOP
  parabolas) >= 2 budgets with >= 3 sizes each; approach 3 (L = E + A/N^alpha + B/D^beta) >= 3 sizes, >= 3 token
  counts and >= 10 runs (two per parameter).
- The state-size law L = E + A/N^alpha + B/S^gamma [+ C/D^beta] per mixer family and training context: >= 3 state
  sizes, >= 2 model sizes, state size not a function of model size (else the state term is not identifiable),
  and two runs per parameter; the data term is included when the training tokens vary by more than 10%.
- The context law (optimal training context at fixed FLOPs) per model group at fixed size (runs that differ
  only in context, with the batch size moving with it, and budget): budgets with >= 3 contexts.

Bootstrap 95% intervals come with every fit: ``bootstrap`` replicates for the iterative fits (approach 3, the
state law), :data:`CLOSED_FORM_REPLICATES` times as many for the closed-form ones (approaches 1 and 2, the context
law: a least-squares solve a replicate), whose percentile endpoints are otherwise Monte-Carlo noise. Measured on
the quickstart's approach 2, five bootstrap seeds: Mamba-2's lower endpoint read 0.43-0.86 at 200 replicates,
0.40-0.65 at 1,000 and 0.41-0.50 at 4,000 (2.7 s for the three families). ``fast=True`` starts the parametric and
state-law fits from coarse grids (243 or 192 starts instead of 4500 or 2187): seconds instead of tens of seconds a
fit, for demos and tests; on clean data both find the same optimum (the report says which grid was used).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scaling.analysis import fits as _fits
from scaling.analysis import plots as _plots
from scaling.analysis.cost import fit_cost
from scaling.analysis.load import SweepData

__all__ = ["FIT_KINDS", "FitRecord", "choose_curve_loss", "fit_sweep", "plan_fits"]

FIT_KINDS = {
    "envelope": "Chinchilla approach 1: lower envelope of the final losses vs FLOPs",
    "isoflop": "Chinchilla approach 2: isoFLOP parabolas",
    "parametric": "Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta",
    "state_law": "State-size law: L(N, S [, D]) = E + A/N^alpha + B/S^gamma [+ C/D^beta]",
    "context_law": "Context law: optimal training context at fixed FLOPs",
}

MIN_SIZES = 3
MIN_BUDGETS = 2
MIN_CONTEXTS = 3
MIN_STATE_SIZES = 3
POINTS_PER_PARAM = 2
# log S regressed on log N: below this residual RMS the state size is a function of the model size.
MIN_STATE_SPREAD = 0.05
# training tokens varying by more than this factor within a state-law group bring in the data term
D_TERM_SPREAD = 1.1

FAST_PARAMETRIC_GRID = {"e": (-1.0, 0.0, 1.0), "a": (0.0, 10.0, 20.0), "alpha": (0.0, 0.5, 1.0),
                        "b": (0.0, 10.0, 20.0), "beta": (0.0, 0.5, 1.0)}
FAST_STATE_GRID = {"e": (-1.0, 0.0, 1.0), "a": (0.0, 10.0, 20.0), "alpha": (0.0, 0.5, 1.0),
                   "b": (0.0, 10.0, 20.0), "gamma": (0.0, 0.5, 1.0)}
FAST_STATE_GRID_WITH_D = {"e": (-1.0, 0.5), "a": (0.0, 10.0), "alpha": (0.25, 0.75), "b": (0.0, 10.0),
                          "gamma": (0.25, 0.75), "c": (0.0, 10.0, 20.0), "beta": (0.25, 0.75)}

PARAMS_CHOICES = {"non_embedding": "non_embedding_params", "total": "params"}
CURVE_LOSS_CHOICES = ("auto", "train", "val")


@dataclass
class FitRecord:
    """One law fitted (or not) on one group of runs.

    kind: a FIT_KINDS key; group: a readable label; keys: the group's defining values ({"variant": ..., axis: ...}
    or {"family": ..., "context": ...}); fit: the scaling.analysis.fits result, None when skipped; reason: why it
    was skipped; notes: warnings raised by the fit (e.g. optima outside the sizes trained); n_points: points used.
    """

    kind: str
    group: str
    keys: dict[str, Any]
    fit: Any = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    n_points: int = 0
    family: str = ""
    span: tuple[float, float] | None = None  # (min, max) training FLOPs of the group's runs
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.fit is not None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "group": self.group, "keys": {k: _plain(v) for k, v in self.keys.items()},
                "family": self.family, "span": list(self.span) if self.span else None,
                "fit": self.fit.to_dict() if self.fit is not None else None, "reason": self.reason,
                "notes": self.notes, "n_points": self.n_points}


def _plain(v: Any) -> Any:
    """numpy scalars to Python ones, NaN to None (for JSON)."""
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


CLOSED_FORM_REPLICATES = 20  # replicates of the closed-form fits per ``bootstrap`` (see the module docstring)


def _check_options(bootstrap, seed, params, curve_loss) -> None:
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ValueError(f"bootstrap = {bootstrap!r}: must be an integer >= 0 (number of resamples)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed = {seed!r}: must be an integer")
    if params not in PARAMS_CHOICES:
        raise ValueError(f"params = {params!r}: must be one of {', '.join(PARAMS_CHOICES)}")
    if curve_loss not in CURVE_LOSS_CHOICES:
        raise ValueError(f"curve_loss = {curve_loss!r}: must be one of {', '.join(CURVE_LOSS_CHOICES)}")


def choose_curve_loss(data: SweepData, curve_loss: str = "auto") -> str:
    """The curve column used for loss-vs-FLOPs curves and approach 1: ``val_loss`` when every run with curves
    has >= 3 validation points (``auto``), else ``train_loss``."""
    if curve_loss != "auto":
        return f"{curve_loss}_loss"
    c = data.curves
    if not len(c):
        return "train_loss"
    per_run = c.groupby("run_id")["val_loss"].apply(lambda s: int(s.notna().sum()))
    return "val_loss" if (per_run >= 3).all() else "train_loss"


def _varying(runs: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    return [c for c in cols if c in runs and runs[c].astype(str).nunique() > 1]


def _fmt_value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"{v:,}" if isinstance(v, int) else str(v)


def _labels(keys_list: list[dict[str, Any]], first: str) -> list[str]:
    """Readable, unique labels: the ``first`` key's value, then the short names of the other keys that vary,
    dropping keys (last first) that are not needed to tell the groups apart."""
    others = [k for k in (keys_list[0] if keys_list else {}) if k != first]
    varying = [k for k in others if len({str(kl[k]) for kl in keys_list}) > 1]

    def make(kl, ks):
        parts = [f"{k.rsplit('.', 1)[-1]}={_fmt_value(kl[k])}" for k in ks]
        return f"{kl[first]}" + (f" · {', '.join(parts)}" if parts else "")

    keep = list(varying)
    for k in reversed(varying):
        trial = [x for x in keep if x != k]
        if len({make(kl, trial) for kl in keys_list}) == len({make(kl, keep) for kl in keys_list}):
            keep = trial
    return [make(kl, keep) for kl in keys_list]


@dataclass
class _Job:
    kind: str
    group: str
    keys: dict[str, Any]
    run: Callable[[], tuple[Any, int]]  # -> (fit, n_points); raises _Skip or ValueError to skip
    family: str = ""
    span: tuple[float, float] | None = None


class _Skip(Exception):
    """The data does not support this fit; the message says why."""


def _model_groups(runs: pd.DataFrame, axes: Sequence[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Runs that differ only in model size and budget: grouped by variant and sweep-axis point."""
    runs = runs.assign(_model=np.where(runs["variant"] != "", runs["variant"], runs["family"]))
    keys = ["_model", *axes]
    out = []
    for vals, g in runs.groupby(keys, sort=False, dropna=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        out.append(({("model" if k == "_model" else k): v for k, v in zip(keys, vals, strict=True)}, _canonical(g)))
    return out


def _canonical(g: pd.DataFrame) -> pd.DataFrame:
    """A group's runs in run-id order: a fit's bootstrap draws follow the row order, so without this the same runs
    gave other intervals after a spec grew and its new runs were appended to the database (the quickstart's
    approach-2 interval for attention read [1.26, 1.69] resumed and [1.25, 1.63] fresh, over equal losses)."""
    return g.sort_values("run_id", kind="stable")


def _context_groups(runs: pd.DataFrame, axes: Sequence[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Runs that differ only in context (and the batch size moving with it) and budget: variant, size, other axes."""
    other = [a for a in axes if a.rsplit(".", 1)[-1] not in ("context", "batch_size")]
    runs = runs.assign(_model=np.where(runs["variant"] != "", runs["variant"], runs["family"]))
    keys = ["_model", "size", *other]
    out = []
    for vals, g in runs.groupby(keys, sort=False, dropna=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        d = {("model" if k == "_model" else k): v for k, v in zip(keys, vals, strict=True)}
        if not d["size"]:
            del d["size"]
        out.append((d, _canonical(g)))
    return out


def _loss_noise(g: pd.DataFrame, frame: pd.DataFrame) -> tuple[float, int | None]:
    """(noise of one run's final loss, its degrees of freedom), for the bootstraps of approaches 1 and 2 and the
    context law: the pooled seed-to-seed standard deviation of the group's cells (``frame``'s N: the size, or the
    context; and budget) that have several seeds, with its degrees of freedom (runs in those cells minus cells:
    2 for three seeds at one point), which the fits propagate (``loss_sd_dof``); else the median evaluation
    standard error, taken as known (None: hundreds of sequences), or (0.0, None) when neither is there."""
    if "seed" in g and g["seed"].nunique() > 1:
        within = frame.assign(seed=g["seed"].to_numpy()).groupby(["N", "budget"])["loss"]
        dev = within.transform(lambda x: x - x.mean()).to_numpy()
        dof = int((within.transform("size") > 1).sum() - within.ngroups + (within.size() == 1).sum())
        if dof > 0:
            return float(np.sqrt(np.sum(dev ** 2) / dof)), dof
    se = g["final_val_loss_se"].to_numpy(float) if "final_val_loss_se" in g else np.array([])
    se = se[np.isfinite(se)]
    return (float(np.median(se)) if len(se) else 0.0), None


def _noise_kw(sd: float, dof: int | None) -> dict:
    """The fits' ``loss_sd`` / ``loss_sd_dof`` keywords for :func:`_loss_noise`'s result (none at zero noise)."""
    return {"loss_sd": sd, "loss_sd_dof": dof} if sd > 0 else {}


def _budget_of(g: pd.DataFrame) -> np.ndarray:
    """Per run FLOP budget: the spec's budget when every run has one, else the FLOPs spent."""
    return (g["budget"] if g["budget"].notna().all() else g["flops"]).to_numpy(dtype=np.float64)


def plan_fits(data: SweepData, *, bootstrap: int = 200, seed: int = 0, params: str = "non_embedding",
              curve_loss: str = "auto", fast: bool = False, kinds: Sequence[str] | None = None,
              loss: str = "final_val_loss") -> list[_Job]:
    """The fits to attempt on ``data``, as deferred jobs (see :func:`fit_sweep`)."""
    _check_options(bootstrap, seed, params, curve_loss)
    if kinds is not None:
        bad = [k for k in kinds if k not in FIT_KINDS]
        if bad:
            raise ValueError(f"kinds: {bad} unknown; choose from {', '.join(FIT_KINDS)}")
    n_col = PARAMS_CHOICES[params]
    runs = data.runs[data.runs[loss].notna() & (data.runs[loss] > 0)]
    curve_col = choose_curve_loss(data, curve_loss)
    jobs: list[_Job] = []

    groups = _model_groups(runs, data.axes)
    labels = _labels([k for k, _ in groups], "model")
    for (keys, g), label in zip(groups, labels, strict=True):
        jobs += _chinchilla_jobs(keys, label, g, data.curves, n_col, curve_col, bootstrap, seed, fast)
        for job in jobs[-3:]:
            job.family, job.span = _family_label(g), (float(g["flops"].min()), float(g["flops"].max()))

    state_groups = []
    multi_ctx = runs["context"].nunique() > 1
    for (fam, ctx), g in runs.groupby(["family", "context"], sort=True):
        state_groups.append(({"family": fam, "context": int(ctx) if multi_ctx else None}, _canonical(g)))
    for keys, g in state_groups:
        label = keys["family"] + (f" · context={keys['context']:,}" if keys["context"] is not None else "")
        jobs.append(_Job("state_law", label, keys, _state_job(g, n_col, loss, bootstrap, seed, fast),
                         family=keys["family"]))

    if runs["context"].nunique() <= 1:
        ctx = runs["context"].dropna().unique()
        why = (f"the sweep has a single training context ({int(ctx[0]):,} tokens)" if len(ctx)
               else "no runs with a final loss")
        jobs.append(_Job("context_law", "all runs", {}, _skip_job(why)))
    else:
        cgroups = _context_groups(runs, data.axes)
        clabels = _labels([k for k, _ in cgroups], "model")
        for (keys, g), label in zip(cgroups, clabels, strict=True):
            jobs.append(_Job("context_law", label, keys, _context_job(g, loss, bootstrap, seed),
                             family=_family_label(g)))
    return [j for j in jobs if kinds is None or j.kind in kinds]


def _family_label(g: pd.DataFrame) -> str:
    fams = sorted(g["family"].unique())
    return fams[0] if len(fams) == 1 else "mixed"


def _skip_job(reason: str):
    def run():
        raise _Skip(reason)
    return run


def _chinchilla_jobs(keys, label, g, curves, n_col, curve_col, bootstrap, seed, fast) -> list[_Job]:
    N = g[n_col].to_numpy(float)
    n_sizes = len(np.unique(N))
    loss = g["final_val_loss"].to_numpy(float)
    D = g["tokens"].to_numpy(float)
    budget = _budget_of(g)

    def envelope():
        # What completed schedules measure: each run's final evaluation (never a mid-schedule or training
        # loss). Seeds of one (size, budget) are averaged first: the envelope's minimum would pick the luckiest.
        if n_sizes < MIN_SIZES:
            raise _Skip(f"needs >= {MIN_SIZES} model sizes, has {n_sizes}")
        frame = pd.DataFrame({"N": N, "D": D, "C": g["flops"].to_numpy(float), "budget": budget, "loss": loss})
        sd, dof = _loss_noise(g, frame)
        cells = frame.groupby(["N", "budget"], as_index=False).agg(
            N=("N", "first"), budget=("budget", "first"), D=("D", "mean"), C=("C", "mean"), loss=("loss", "mean"),
            n=("loss", "size"))
        per_size = cells["N"].value_counts()
        if int((per_size >= 2).sum()) < MIN_SIZES:
            raise _Skip(f"needs >= {MIN_SIZES} model sizes with final losses at >= 2 budgets, has "
                        f"{int((per_size >= 2).sum())}")
        # One FLOP value per budget, each the lowest final loss among the runs of that budget ("bin"): with
        # final points only there is no curve to interpolate between budgets.
        budgets = np.unique(cells["budget"].to_numpy())
        if len(budgets) < 2:
            raise _Skip(f"needs final losses at >= 2 FLOP budgets, has {len(budgets)}")
        fit = _fits.fit_envelope(cells["N"].to_numpy(), cells["D"].to_numpy(), cells["C"].to_numpy(),
                                 cells["loss"].to_numpy(), method="bin", n_bins=len(budgets),
                                 C_range=(float(budgets.min()), float(budgets.max())),
                                 bootstrap=bootstrap * CLOSED_FORM_REPLICATES,
                                 seed=seed, loss_sd=sd / np.sqrt(cells["n"].to_numpy(float)),
                                 loss_sd_dof=dof if sd > 0 else None)
        fit.info["loss"] = "final validation loss of each run (seeds averaged)"
        return fit, len(cells)

    def isoflop():
        per_budget = {b: len(np.unique(N[budget == b])) for b in np.unique(budget)}
        ok = [b for b, k in per_budget.items() if k >= MIN_SIZES]
        if len(ok) < MIN_BUDGETS:
            have = ", ".join(f"{_plots.sci(b)}: {k}" for b, k in sorted(per_budget.items()))
            raise _Skip(f"needs >= {MIN_BUDGETS} FLOP budgets with >= {MIN_SIZES} model sizes each; "
                        f"sizes per budget: {have}")
        sel = np.isin(budget, ok)
        noise = _noise_kw(*_loss_noise(g, pd.DataFrame({"N": N, "budget": budget, "loss": loss})))
        fit = _fits.fit_isoflop(N[sel], D[sel], budget[sel], loss[sel], budgets=sorted(ok), d_opt="data",
                                bootstrap=bootstrap * CLOSED_FORM_REPLICATES, seed=seed, **noise)
        return fit, int(sel.sum())

    def parametric():
        n_D = len(np.unique(D))
        need = POINTS_PER_PARAM * 5
        if n_sizes < MIN_SIZES or n_D < 3 or len(g) < need:
            raise _Skip(f"needs >= {MIN_SIZES} model sizes, >= 3 token counts and >= {need} runs "
                        f"(two per parameter); has {n_sizes} sizes, {n_D} token counts, {len(g)} runs")
        grid = FAST_PARAMETRIC_GRID if fast else None
        fit = _fits.fit_parametric(N, D, loss, bootstrap=bootstrap, seed=seed, init_grid=grid)
        fit.info["grid"] = "fast" if fast else "Epoch AI (4500 starts)"
        fit.info["cost"] = fit_cost(N, 3.0 * g["flops_per_token"].to_numpy(float)).to_dict()
        return fit, len(g)

    return [_Job("envelope", label, keys, envelope), _Job("isoflop", label, keys, isoflop),
            _Job("parametric", label, keys, parametric)]


def _state_job(g, n_col, loss_col, bootstrap, seed, fast):
    def run():
        N = g[n_col].to_numpy(float)
        S = g["state_size"].to_numpy(float)
        D = g["tokens"].to_numpy(float)
        loss = g[loss_col].to_numpy(float)
        ok = (S > 0) & np.isfinite(S)
        N, S, D, loss = N[ok], S[ok], D[ok], loss[ok]
        n_S, n_N = len(np.unique(S)), len(np.unique(N))
        if n_S < MIN_STATE_SIZES or n_N < 2:
            raise _Skip(f"needs >= {MIN_STATE_SIZES} state sizes and >= 2 model sizes; has {n_S} state sizes, "
                        f"{n_N} model sizes")
        slope, icpt = np.polyfit(np.log(N), np.log(S), 1)
        spread = float(np.sqrt(np.mean((np.log(S) - icpt - slope * np.log(N)) ** 2)))
        if spread < MIN_STATE_SPREAD:
            raise _Skip(f"state size is a function of model size here (log S vs log N residual RMS {spread:.3f} "
                        f"< {MIN_STATE_SPREAD}): the state term cannot be told from the parameter term")
        with_D = D.max() / D.min() > D_TERM_SPREAD
        n_params = 7 if with_D else 5
        need = POINTS_PER_PARAM * n_params
        if len(S) < need:
            raise _Skip(f"needs >= {need} runs ({n_params} parameters{', with the data term' if with_D else ''}), "
                        f"has {len(S)}")
        grid = (FAST_STATE_GRID_WITH_D if with_D else FAST_STATE_GRID) if fast else None
        fit = _fits.fit_state_law(N, S, loss, D=D if with_D else None, bootstrap=bootstrap, seed=seed,
                                  init_grid=grid)
        fit.info["grid"] = "fast" if fast else "default"
        fit.info["cost"] = fit_cost(N, 3.0 * g["flops_per_token"].to_numpy(float)[ok], S).to_dict()
        if not with_D:
            fit.info["tokens"] = float(np.median(D))
        return fit, len(S)
    return run


def _context_job(g, loss_col, bootstrap, seed):
    def run():
        T = g["context"].to_numpy(float)
        loss = g[loss_col].to_numpy(float)
        budget = _budget_of(g)
        per_budget = {b: len(np.unique(T[budget == b])) for b in np.unique(budget)}
        ok = [b for b, k in per_budget.items() if k >= MIN_CONTEXTS]
        if not ok:
            have = ", ".join(f"{_plots.sci(b)}: {k}" for b, k in sorted(per_budget.items()))
            raise _Skip(f"needs a FLOP budget with >= {MIN_CONTEXTS} contexts; contexts per budget: {have}")
        sel = np.isin(budget, ok)
        noise = _noise_kw(*_loss_noise(g, pd.DataFrame({"N": T, "budget": budget, "loss": loss})))  # (context, budget)
        fit = _fits.fit_context_law(T[sel], loss[sel], budgets=budget[sel],
                                    bootstrap=bootstrap * CLOSED_FORM_REPLICATES, seed=seed, **noise)
        return fit, int(sel.sum())
    return run


def fit_sweep(data: SweepData, *, bootstrap: int = 200, seed: int = 0, params: str = "non_embedding",
              curve_loss: str = "auto", fast: bool = False, kinds: Sequence[str] | None = None,
              on_job: Callable[[int, int, _Job], None] | None = None) -> list[FitRecord]:
    """Run every fit the data supports (see the module docstring); one :class:`FitRecord` per (law, group).

    ``kinds``: only these laws (FIT_KINDS keys, e.g. ``["state_law"]``); all by default. The other options are
    those of :func:`write_report`.

    A fit that the data cannot support, or that fails on it (e.g. no U shape in an isoFLOP profile), becomes a
    record with ``fit=None`` and the reason. ``on_job(i, n, job)`` is called before each job (progress).
    """
    jobs = plan_fits(data, bootstrap=bootstrap, seed=seed, params=params, curve_loss=curve_loss, fast=fast,
                     kinds=kinds)
    records = []
    for i, job in enumerate(jobs):
        if on_job is not None:
            on_job(i, len(jobs), job)
        rec = FitRecord(job.kind, job.group, job.keys, family=job.family, span=job.span)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rec.fit, rec.n_points = job.run()
            except _Skip as e:
                rec.reason = str(e)
            except (ValueError, np.linalg.LinAlgError) as e:  # the fits' own checks: no minimum, too few points
                rec.reason = f"fit failed ({type(e).__name__}: {e})"
        rec.seconds = time.perf_counter() - t0
        rec.notes = list(dict.fromkeys([*(str(w.message) for w in caught
                                          if not issubclass(w.category, DeprecationWarning)), *rec.notes]))
        records.append(rec)
    return records
