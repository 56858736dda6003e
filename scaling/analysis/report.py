"""Sweep analysis: ``<sweep_dir>/sweep.db`` -> pandas DataFrames -> the fits the data supports -> figures, report.md.

    from scaling.analysis import report
    data = report.load_sweep("sweeps/quickstart")   # data.runs: one row per done run; data.curves: logged steps
    records = report.fit_sweep(data)                # one FitRecord per (law, group): the fit, or why it was skipped
    result = report.write_report("sweeps/quickstart")   # what `scaling analyze sweeps/quickstart` does

The database is opened read-only (the launcher is its only writer), so analysing a sweep while it runs is safe:
only runs with status ``done`` are analysed, and the report counts the others.

Which fits run, and on which runs (a fit that the data cannot support is skipped, with the reason in report.md):

- Chinchilla approaches 1-3 per *model group*: runs that differ only in model size and FLOP budget (same
  variant and sweep-axis point, e.g. one mixer configuration at one context). N is the non-embedding parameter
  count (``params="total"`` for all parameters), D the training tokens, C the training FLOPs, loss the final
  validation loss in nats per token.
  Approach 1 (lower envelope of the loss curves) needs >= 3 model sizes with logged curves; approach 2 (isoFLOP
  parabolas) >= 2 budgets with >= 3 sizes each; approach 3 (L = E + A/N^alpha + B/D^beta) >= 3 sizes, >= 3 token
  counts and >= 10 runs (two per parameter).
- The state-size law L = E + A/N^alpha + B/S^gamma [+ C/D^beta] per mixer family and training context: >= 3 state
  sizes, >= 2 model sizes, state size not a function of model size (else the state term is not identifiable),
  and two runs per parameter; the data term is included when the training tokens vary by more than 10%.
- The context law (optimal training context at fixed FLOPs) per model group at fixed size (runs that differ
  only in context, with the batch size moving with it, and budget): budgets with >= 3 contexts.

Bootstrap 95% intervals (``bootstrap`` resamples) come with every fit. ``fast=True`` starts the parametric and
state-law fits from coarse grids (243 or 192 starts instead of 4500 or 2187): seconds instead of tens of seconds a
fit, for demos and tests; on clean data both find the same optimum (the report says which grid was used).

:func:`synthetic_sweep` writes a sweep.db whose losses follow known laws (no training), for tests and demos.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scaling.analysis import figures as _study_figures
from scaling.analysis import fits as _fits
from scaling.analysis import plots as _plots

__all__ = [
    "FAMILIES",
    "FIT_KINDS",
    "FitRecord",
    "Report",
    "SweepData",
    "family_of",
    "fit_sweep",
    "load_curves",
    "load_runs",
    "load_sweep",
    "choose_curve_loss",
    "synthetic_sweep",
    "write_report",
]

# Pattern letter -> mixer family: the config section names of scaling.models.registry.MIXERS (a test holds the two
# tables to the same keys; the registry itself is not imported because it pulls in JAX).
FAMILIES = {"A": "attention", "R": "retention", "M": "mamba"}

FIT_KINDS = {
    "envelope": "Chinchilla approach 1: lower envelope of the loss curves",
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
MAX_SKIP_LINES = 6  # per law in report.md; fits.json has them all
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

RUN_COLUMNS = (
    "run_id", "sweep", "variant", "size", "family", "pattern", "n_layers", "d_model", "params",
    "non_embedding_params", "state_size", "context", "batch_size", "tokens", "flops", "budget", "flops_per_token",
    "steps", "total_steps", "final_val_loss", "final_val_bpb", "final_train_loss", "status",
)
CURVE_COLUMNS = ("run_id", "step", "tokens", "flops", "train_loss", "val_loss", "val_bpb", "lr")


# --------------------------------------------------------------------------------------------------------------
# Loading


def family_of(pattern: str | None, n_layers: int | None = None) -> str:
    """Mixer family of a layer pattern: attention, retention, mamba (one letter kind), hybrid (several).

    The pattern is repeated and cut to ``n_layers`` first (as the model does), so "MMMA" with 2 layers is mamba.
    """
    if not pattern:
        return "unknown"
    letters = pattern
    if n_layers:
        letters = (pattern * -(-int(n_layers) // len(pattern)))[: int(n_layers)]
    kinds = sorted(set(letters))
    if len(kinds) > 1:
        return "hybrid"
    return FAMILIES.get(kinds[0], f"unknown ({kinds[0]})")


def _db_path(sweep_dir: str | Path) -> Path:
    path = Path(sweep_dir) / "sweep.db"
    if not path.is_file():
        raise FileNotFoundError(f"{str(sweep_dir)!r} is not a sweep directory: it has no sweep.db "
                                "(start one with `scaling sweep SPEC --sweep-dir DIR`)")
    return path


@contextlib.contextmanager
def _connect(sweep_dir: str | Path):
    """A read-only connection: analysis never writes the database (the launcher is its only writer)."""
    path = _db_path(sweep_dir).resolve()
    db = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=30.0)
    try:
        yield db
    finally:
        db.close()


def _config_fields(config_json: str | None) -> dict[str, Any]:
    try:
        model = json.loads(config_json or "{}").get("model", {})
    except json.JSONDecodeError:
        model = {}
    return {"pattern": model.get("pattern"), "n_layers": model.get("n_layers"), "d_model": model.get("d_model")}


def load_runs(sweep_dir: str | Path, *, statuses: Sequence[str] = ("done",)) -> pd.DataFrame:
    """The runs of ``<sweep_dir>/sweep.db`` with a status in ``statuses``, one row each, in spec order.

    Columns (RUN_COLUMNS, then one per sweep axis, e.g. ``train.context``): ``run_id``; ``sweep``, ``variant``,
    ``size`` (spec labels); ``family`` (attention / retention / mamba / hybrid, from the layer pattern),
    ``pattern``, ``n_layers``, ``d_model``; ``params`` and ``non_embedding_params`` (counts); ``state_size``
    (elements per sequence at the run's context); ``context`` (tokens), ``batch_size`` (sequences);
    ``tokens`` (trained), ``flops`` (training FLOPs spent, 3 x forward), ``budget`` (the FLOP budget it was
    matched to, NaN without FLOP matching), ``flops_per_token`` (forward); ``steps``, ``total_steps``;
    ``final_val_loss``, ``final_train_loss`` (nats per token) and ``final_val_bpb`` (bits per byte); ``status``.
    A run's other final eval metrics (``runs.extra``, e.g. a synthetic task's ``task_accuracy``) become columns
    ``final_<metric>`` after the axes.
    """
    from scaling.sweep.store import STATUSES

    bad = [s for s in statuses if s not in STATUSES]
    if bad:
        raise ValueError(f"statuses: {bad} not among {', '.join(STATUSES)}")
    with _connect(sweep_dir) as db:
        q = f"SELECT * FROM runs WHERE status IN ({', '.join('?' * len(statuses))}) ORDER BY seq"
        raw = pd.read_sql_query(q, db, params=list(statuses))
    records = []
    for r in raw.to_dict("records"):
        rec = {"run_id": r["id"], **{k: r.get(k) for k in RUN_COLUMNS if k in r}}
        rec.update(_config_fields(r.get("config")))
        rec["family"] = family_of(rec["pattern"], rec["n_layers"])
        try:
            point = json.loads(r.get("point") or "{}")
        except json.JSONDecodeError:
            point = {}
        # JSON turned tuple axis values (train.eval_contexts = (64, 128)) into lists; tuples can be grouped by
        rec.update({k: tuple(v) if isinstance(v, list) else v for k, v in point.items()})
        try:  # other final eval metrics (runs.extra), as columns named final_<metric>
            extra = json.loads(r["extra"]) if isinstance(r.get("extra"), str) else {}
        except json.JSONDecodeError:
            extra = {}
        rec.update({f"final_{k}": v for k, v in extra.items()})
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=None if records else list(RUN_COLUMNS))
    axes = [c for c in df.columns if c not in RUN_COLUMNS and not c.startswith("final_")]
    extras = sorted(c for c in df.columns if c not in RUN_COLUMNS and c.startswith("final_"))
    df = df.reindex(columns=list(RUN_COLUMNS) + axes + extras)
    for col in extras:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("params", "non_embedding_params", "state_size", "context", "batch_size", "tokens", "flops",
                "budget", "flops_per_token", "steps", "total_steps", "final_val_loss", "final_val_bpb",
                "final_train_loss", "n_layers", "d_model"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("variant", "size"):
        df[col] = df[col].fillna("").astype(str)
    df.attrs["axes"] = axes
    return df


def load_curves(sweep_dir: str | Path, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The metrics table: one row per (run, logged step) with CURVE_COLUMNS: ``run_id``, ``step``, ``tokens`` and
    ``flops`` (training FLOPs) seen by that step, ``train_loss`` / ``val_loss`` (nats per token, NaN where not
    logged at that step), ``val_bpb``, ``lr``. Only the runs in ``run_ids`` when given."""
    with _connect(sweep_dir) as db:
        df = pd.read_sql_query("SELECT * FROM metrics ORDER BY run_id, step", db)
    df = df[list(CURVE_COLUMNS)]
    if run_ids is not None:
        df = df[df["run_id"].isin(set(run_ids))]
    for col in CURVE_COLUMNS[1:]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df.reset_index(drop=True)


@dataclass
class SweepData:
    """A sweep's finished runs and their curves (see :func:`load_runs`, :func:`load_curves`).

    counts: runs per status (all statuses); sweeps: the sweep names in the database; axes: the sweep-axis columns
    of ``runs`` (point keys such as ``train.context``).
    """

    path: Path
    runs: pd.DataFrame
    curves: pd.DataFrame
    counts: dict[str, int]
    sweeps: list[str]
    axes: list[str]
    not_done: pd.DataFrame  # id, status, error of the runs not analysed
    specs: dict[str, dict] = field(default_factory=dict)  # sweep name -> its spec (the Sweep fields as JSON)


def load_sweep(sweep_dir: str | Path) -> SweepData:
    """Load everything the analysis reads from ``<sweep_dir>/sweep.db``: done runs, their curves, status counts."""
    from scaling.sweep.store import STATUSES

    runs = load_runs(sweep_dir)
    curves = load_curves(sweep_dir, runs["run_id"])
    with _connect(sweep_dir) as db:
        status = pd.read_sql_query("SELECT id AS run_id, status, error FROM runs ORDER BY seq", db)
        rows = db.execute("SELECT name, spec FROM sweeps ORDER BY created").fetchall()
    sweeps = [r[0] for r in rows]
    specs = {r[0]: json.loads(r[1] or "{}") for r in rows}
    counts = {s: int((status["status"] == s).sum()) for s in STATUSES}
    return SweepData(path=Path(sweep_dir), runs=runs, curves=curves, counts=counts, sweeps=sweeps,
                     axes=list(runs.attrs.get("axes", [])), not_done=status[status["status"] != "done"], specs=specs)


# --------------------------------------------------------------------------------------------------------------
# Fitting


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
    retry: Callable[[], tuple[Any, int]] | None = None  # the same fit without bootstrap


class _Skip(Exception):
    """The data does not support this fit; the message says why."""


def _model_groups(runs: pd.DataFrame, axes: Sequence[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Runs that differ only in model size and budget: grouped by variant and sweep-axis point."""
    runs = runs.assign(_model=np.where(runs["variant"] != "", runs["variant"], runs["family"]))
    keys = ["_model", *axes]
    out = []
    for vals, g in runs.groupby(keys, sort=False, dropna=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        out.append(({("model" if k == "_model" else k): v for k, v in zip(keys, vals, strict=True)}, g))
    return out


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
        out.append((d, g))
    return out


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
        state_groups.append(({"family": fam, "context": int(ctx) if multi_ctx else None}, g))
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
                             family=_family_label(g), retry=_context_job(g, loss, 0, seed)))
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
        if n_sizes < MIN_SIZES:
            raise _Skip(f"needs >= {MIN_SIZES} model sizes, has {n_sizes}")
        c = curves[curves["run_id"].isin(set(g["run_id"]))]
        c = c[c[curve_col].notna() & (c["tokens"] > 0) & (c["flops"] > 0) & (c[curve_col] > 0)]
        size_of = dict(zip(g["run_id"], N, strict=True))
        cN = c["run_id"].map(size_of).to_numpy(float)
        per_size = pd.Series(cN).value_counts()
        sizes_with_curves = int((per_size >= 2).sum())
        if sizes_with_curves < MIN_SIZES:
            raise _Skip(f"needs logged {curve_col.replace('_', ' ')} curves (>= 2 points) for >= {MIN_SIZES} "
                        f"model sizes, has {sizes_with_curves}")
        fit = _fits.fit_envelope(cN, c["tokens"].to_numpy(float), c["flops"].to_numpy(float),
                                 c[curve_col].to_numpy(float), bootstrap=bootstrap, seed=seed)
        fit.info["curve_loss"] = curve_col
        return fit, len(c)

    def isoflop():
        per_budget = {b: len(np.unique(N[budget == b])) for b in np.unique(budget)}
        ok = [b for b, k in per_budget.items() if k >= MIN_SIZES]
        if len(ok) < MIN_BUDGETS:
            have = ", ".join(f"{_plots.sci(b)}: {k}" for b, k in sorted(per_budget.items()))
            raise _Skip(f"needs >= {MIN_BUDGETS} FLOP budgets with >= {MIN_SIZES} model sizes each; "
                        f"sizes per budget: {have}")
        sel = np.isin(budget, ok)
        fit = _fits.fit_isoflop(N[sel], D[sel], budget[sel], loss[sel], budgets=sorted(ok), d_opt="data",
                                bootstrap=bootstrap, seed=seed)
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
        fit = _fits.fit_context_law(T[sel], loss[sel], budgets=budget[sel], bootstrap=bootstrap, seed=seed)
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
            except OverflowError as e:
                # a bootstrap replicate with an extreme optimum can overflow in the power law: keep the point
                # estimate and say that its intervals are missing
                if job.retry is None:
                    rec.reason = f"fit failed ({type(e).__name__}: {e})"
                else:
                    try:
                        rec.fit, rec.n_points = job.retry()
                        rec.notes.append(f"bootstrap failed ({type(e).__name__}: {e}); estimate without intervals")
                    except (_Skip, ValueError, np.linalg.LinAlgError, OverflowError) as e2:
                        rec.reason = f"fit failed ({type(e2).__name__}: {e2})"
            except (ValueError, np.linalg.LinAlgError) as e:  # the fits' own checks: no minimum, too few points
                rec.reason = f"fit failed ({type(e).__name__}: {e})"
        rec.seconds = time.perf_counter() - t0
        rec.notes = list(dict.fromkeys([*(str(w.message) for w in caught
                                          if not issubclass(w.category, DeprecationWarning)), *rec.notes]))
        records.append(rec)
    return records


# --------------------------------------------------------------------------------------------------------------
# Report


@dataclass
class Report:
    """What :func:`write_report` wrote: the output folder, report.md, the figure files, and the fits."""

    out: Path
    report: Path
    figures: list[Path]
    records: list[FitRecord]
    data: SweepData
    skipped_figures: dict[str, str]


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    x = float(x)
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _cell(fit, name: str) -> str:
    v = fit.params.get(name)
    if v is None:
        return "-"
    ci = fit.ci.get(name)
    return f"{_fmt(v)} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else _fmt(v)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _fit_tables(records: list[FitRecord], bootstrap: int) -> list[str]:
    lines: list[str] = []
    ci_note = (f"Cells are `estimate [2.5%, 97.5%]`: percentile intervals over {bootstrap} bootstrap resamples."
               if bootstrap else "No bootstrap (bootstrap = 0): estimates only.")
    by_kind = {k: [r for r in records if r.kind == k and r.ok] for k in FIT_KINDS}
    lines += ["## Fitted laws", "", ci_note, ""]
    if not any(by_kind.values()):
        lines += ["No law could be fitted on this data (see *Skipped fits*).", ""]

    if by_kind["envelope"]:
        lines += [f"### {FIT_KINDS['envelope']}", "",
                  "N_opt = k_N C^a and D_opt = k_D C^b, fitted to the lowest loss across model sizes at log-spaced "
                  "FLOP values (sizes at the edge of those reaching a FLOP value dropped).", ""]
        lines += _table(["group", "a (N_opt)", "b (D_opt)", "k_N", "k_D", "frontier points", "curve"],
                        [(r.group, _cell(r.fit, "a"), _cell(r.fit, "b"), _fmt(r.fit.params["k_N"]),
                          _fmt(r.fit.params["k_D"]), len(r.fit.data["frontier_C"]), r.fit.info.get("curve_loss"))
                         for r in by_kind["envelope"]])
        lines.append("")
    if by_kind["isoflop"]:
        lines += [f"### {FIT_KINDS['isoflop']}", "",
                  "Per budget, loss = c0 + c1 log N + c2 log² N; N_opt = k_N C^a and D_opt = k_D C^b over the "
                  "budgets' minima (D_opt from the budget's own tokens-vs-size relation).", ""]
        lines += _table(["group", "budgets (FLOPs)", "N_opt per budget", "a (N_opt)", "b (D_opt)", "k_N", "k_D"],
                        [(r.group, ", ".join(_plots.sci(b) for b in r.fit.data["budget_C"]),
                          ", ".join(_plots.sci(n, 3) for n in r.fit.data["budget_N_opt"]),
                          _cell(r.fit, "a"), _cell(r.fit, "b"), _fmt(r.fit.params["k_N"]),
                          _fmt(r.fit.params["k_D"])) for r in by_kind["isoflop"]])
        lines.append("")
    if by_kind["parametric"]:
        lines += [f"### {FIT_KINDS['parametric']}", "",
                  "Huber loss (delta 1e-3) on log-loss residuals, L-BFGS-B from a grid of starts (Epoch AI's "
                  "replication). a = beta/(alpha+beta) and b = alpha/(alpha+beta) are the allocation exponents "
                  "this law implies under C = 6ND.", ""]
        lines += _table(["group", "E", "A", "alpha", "B", "beta", "a", "b", "runs", "RMS log resid.", "starts"],
                        [(r.group, *(_cell(r.fit, k) for k in ("E", "A", "alpha", "B", "beta", "a", "b")),
                          r.n_points, _fmt(float(np.sqrt(np.mean(r.fit.residuals["log_loss"] ** 2))), 3),
                          r.fit.info.get("grid")) for r in by_kind["parametric"]])
        lines.append("")
    if by_kind["state_law"]:
        lines += [f"### {FIT_KINDS['state_law']}", "",
                  "Per mixer family (and context); S in elements per sequence. Without the data term the law "
                  "holds at the (fixed) training length shown.", ""]
        lines += _table(["family", "law", "E", "A", "alpha", "B", "gamma", "C", "beta", "runs", "RMS log resid."],
                        [(r.group, "with D" if r.fit.has_D else f"D ≈ {_plots.sci(r.fit.info.get('tokens', 0))}",
                          *(_cell(r.fit, k) for k in ("E", "A", "alpha", "B", "gamma", "C", "beta")), r.n_points,
                          _fmt(float(np.sqrt(np.mean(r.fit.residuals["log_loss"] ** 2))), 3))
                         for r in by_kind["state_law"]])
        lines.append("")
    if by_kind["context_law"]:
        lines += [f"### {FIT_KINDS['context_law']}", "",
                  "Per budget, loss = c0 + c1 log T + c2 log² T; with >= 2 budgets T_opt = k C^a.", ""]
        rows = []
        for r in by_kind["context_law"]:
            d = r.fit.data
            per = ", ".join(f"{_plots.sci(c)}: {t:,.0f}{'*' if x else ''}" for c, t, x in
                            zip(d["budget_C"], d["budget_context_opt"], d["budget_extrapolated"], strict=True))
            rows.append((r.group, per, _cell(r.fit, "a") if "a" in r.fit.params else "-",
                         _cell(r.fit, "k") if "k" in r.fit.params else _cell(r.fit, "context_opt")))
        lines += _table(["group", "T_opt per budget (FLOPs: tokens)", "a", "k (or T_opt)"], rows)
        lines += ["", "\\* outside the contexts trained: an extrapolation of the parabola.", ""]
    notes = [(r, n) for r in records if r.ok for n in r.notes]
    if notes:
        lines += ["Warnings raised by the fits:", ""]
        lines += [f"- {FIT_KINDS[r.kind].split(':')[0]}, {r.group}: {n}" for r, n in notes]
        lines.append("")
    return lines


def _run_tables(data: SweepData, n_col: str) -> list[str]:
    runs = data.runs
    lines = ["## Runs", ""]
    counts = ", ".join(f"{v} {k}" for k, v in data.counts.items() if v) or "none"
    lines += [f"Status: {counts}. Only `done` runs are analysed.", ""]
    if len(runs):
        lines += ["### Per mixer family", ""]
        rows = []
        for fam, g in runs.groupby("family", sort=True):
            best = g.loc[g["final_val_loss"].idxmin()] if g["final_val_loss"].notna().any() else None
            rows.append((fam, len(g), g["variant"].nunique(),
                         f"{_plots.sci(g[n_col].min())} - {_plots.sci(g[n_col].max())}",
                         f"{_plots.sci(g['state_size'].min())} - {_plots.sci(g['state_size'].max())}",
                         ", ".join(f"{int(c):,}" for c in sorted(g["context"].dropna().unique())),
                         f"{_plots.sci(g['flops'].min())} - {_plots.sci(g['flops'].max())}",
                         _fmt(best["final_val_loss"]) if best is not None else "-",
                         best["run_id"] if best is not None else "-"))
        lines += _table(["family", "runs", "variants", "N", "state size", "contexts", "FLOPs", "best val loss",
                         "best run"], rows)
        lines += ["", "### Finished runs", ""]
        cols = ["run_id", "variant", "size", "family", n_col, "state_size", "context", "tokens", "flops", "budget",
                "final_val_loss", "final_train_loss"]
        rows = []
        for r in runs.sort_values(["family", "variant", "budget", n_col], na_position="first").itertuples():
            d = r._asdict()
            rows.append((d["run_id"], d["variant"] or "-", d["size"] or "-", d["family"], _plots.sci(d[n_col], 3),
                         _plots.sci(d["state_size"], 3), f"{int(d['context']):,}" if d["context"] == d["context"]
                         else "-", _plots.sci(d["tokens"], 3), _plots.sci(d["flops"], 3), _plots.sci(d["budget"], 3),
                         _fmt(d["final_val_loss"]), _fmt(d["final_train_loss"])))
        header = ["run", "variant", "size", "family", "N" if n_col == "non_embedding_params" else "N (total)",
                  "state size", "context", "tokens", "FLOPs", "budget", "final val loss", "final train loss"]
        assert len(header) == len(cols)
        lines += _table(header, rows)
        lines.append("")
    nd = data.not_done
    if len(nd):
        lines += ["### Runs not analysed", ""]
        rows = [(r.run_id, r.status, (str(r.error).strip().splitlines() or [""])[-1][:120] if r.error else "")
                for r in nd.itertuples()]
        lines += _table(["run", "status", "last error line"], rows)
        lines.append("")
    return lines


def _progress(enabled: bool, console=None):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console or Console(stderr=True),
                    transient=True, disable=not enabled)


def write_report(sweep_dir: str | Path, out: str | Path | None = None, *, bootstrap: int = 200, seed: int = 0,
                 params: str = "non_embedding", curve_loss: str = "auto", fast: bool = False,
                 progress: bool = True, console=None) -> Report:
    """Analyse ``<sweep_dir>/sweep.db``: fits, figures (PNG + SVG) and ``report.md`` in ``out``
    (default ``<sweep_dir>/analysis``), plus ``fits.json`` (every record, reloadable with
    ``scaling.analysis.fit_from_dict``) and ``runs.csv`` (the run table).

    Options: ``bootstrap`` resamples for the 95% intervals; ``seed``; ``params``: "non_embedding" (default) or
    "total" parameters as N; ``curve_loss``: "auto", "train" or "val", the loss curves for approach 1 and the
    loss-vs-FLOPs figure; ``fast``: coarse start grids (see the module docstring); ``progress``: a rich progress
    bar on stderr.
    """
    _check_options(bootstrap, seed, params, curve_loss)
    out = Path(out) if out is not None else Path(sweep_dir) / "analysis"
    n_col = PARAMS_CHOICES[params]
    n_label = "non-embedding parameters" if params == "non_embedding" else "parameters"
    with _progress(progress, console) as bar:
        task = bar.add_task("loading sweep.db", total=None)
        data = load_sweep(sweep_dir)
        curve_col = choose_curve_loss(data, curve_loss)

        def on_job(i, n, job):
            bar.update(task, total=n + 6, completed=i, description=f"fitting {job.kind}: {job.group}")

        records = fit_sweep(data, bootstrap=bootstrap, seed=seed, params=params, curve_loss=curve_loss, fast=fast,
                            on_job=on_job)
        bar.update(task, description="drawing figures", completed=len(records), total=len(records) + 6)
        out.mkdir(parents=True, exist_ok=True)
        figures, skipped = _write_figures(data, records, out, n_col, n_label, curve_col,
                                          lambda: bar.advance(task))
        names = _study_figures.requested(data)
        if names:
            bar.update(task, description=f"drawing study figures: {', '.join(names)}")
        study_paths, study_lines, study_skipped = _study_figures.draw(data, out, names)
        bar.update(task, description="writing report.md")
        (out / "fits.json").write_text(json.dumps([r.to_dict() for r in records], indent=1, allow_nan=False))
        data.runs.to_csv(out / "runs.csv", index=False)
        lines = _report_lines(data, records, figures, skipped, out, bootstrap, params, curve_col, fast, n_col)
        if names:
            study = ["## Study figures", "", *study_lines]
            study += [f"- not drawn: {_study_figures.FIGURES[k][1]}: {why}" for k, why in study_skipped.items()]
            i = lines.index("## Figures")
            lines[i:i] = study + [""]
        figures = figures + study_paths
        skipped.update(study_skipped)
        path = out / "report.md"
        path.write_text("\n".join(lines) + "\n")
    return Report(out=out, report=path, figures=figures, records=records, data=data, skipped_figures=skipped)


FIGURES = {
    "loss_vs_flops": "Loss vs training FLOPs, coloured by state size, with the compute-optimal frontier",
    "isoflop": "IsoFLOP profiles (approach 2)",
    "compute_optimal_allocation": "Compute-optimal N_opt(C) and D_opt(C)",
    "loss_vs_state": "Loss vs state size per mixer family",
    "state_law_fit": "State-size law: the state term",
    "loss_vs_context": "Loss vs training context at fixed FLOPs",
}


def _write_figures(data, records, out, n_col, n_label, curve_col, tick) -> tuple[list[Path], dict[str, str]]:
    runs = data.runs[data.runs["final_val_loss"].notna()]
    ok = {k: [r for r in records if r.kind == k and r.ok] for k in FIT_KINDS}
    figures: list[Path] = []
    skipped: dict[str, str] = {}

    def save(fig, name):
        figures.extend(_plots.save_figure(fig, out, name))

    if len(runs):
        save(_plots.plot_loss_vs_flops(runs, data.curves, curve_loss=curve_col), "loss_vs_flops")
    else:
        skipped["loss_vs_flops"] = "no finished run has a final validation loss"
    tick()
    if ok["isoflop"]:
        figs = _plots.plot_isoflops([(r.group, r.fit) for r in ok["isoflop"]], n_label=n_label)
        for i, fig in enumerate(figs):
            save(fig, "isoflop" if len(figs) == 1 else f"isoflop_{i + 1}")
    else:
        skipped["isoflop"] = "no isoFLOP fit (needs >= 2 budgets with >= 3 model sizes each in a model group)"
    tick()
    alloc = [(kind, r.group, r.fit, r.span) for kind in ("envelope", "isoflop", "parametric") for r in ok[kind]]
    if alloc:
        save(_plots.plot_allocation(alloc, n_label=n_label), "compute_optimal_allocation")
    else:
        skipped["compute_optimal_allocation"] = "no approach 1-3 fit succeeded"
    tick()
    state_runs = runs[runs["state_size"] > 0]
    if _plots.state_contexts(state_runs):
        fits = [(r.keys["family"], r.fit, r.keys) for r in ok["state_law"]]
        save(_plots.plot_loss_vs_state(state_runs, fits, n_col=n_col), "loss_vs_state")
    else:
        skipped["loss_vs_state"] = "no mixer family has two state sizes at one training context"
    tick()
    if ok["state_law"]:
        save(_plots.plot_state_law([(r.group, r.fit) for r in ok["state_law"]]), "state_law_fit")
    else:
        skipped["state_law_fit"] = "no state-size law fitted"
    tick()
    if runs["context"].nunique() > 1:
        save(_plots.plot_loss_vs_context(runs, [(r.family, r.fit) for r in ok["context_law"]]), "loss_vs_context")
    else:
        skipped["loss_vs_context"] = "a single training context"
    tick()
    return figures, skipped


def _report_lines(data, records, figures, skipped, out, bootstrap, params, curve_col, fast, n_col) -> list[str]:
    from scaling import __version__

    name = ", ".join(data.sweeps) or data.path.name
    lines = [f"# Sweep analysis: {name}", "",
             f"Sweep directory `{data.path}`; written by `scaling analyze` (statescale {__version__}).", "",
             f"- runs analysed: {len(data.runs)} done of {sum(data.counts.values())} "
             f"({', '.join(f'{v} {k}' for k, v in data.counts.items() if v) or 'none'})",
             "- loss: final validation loss (nats/token); N: "
             f"{'non-embedding' if params == 'non_embedding' else 'total'} parameters; D: training tokens; "
             "C: training FLOPs (3 x forward); S: state size (elements per sequence)",
             f"- loss curves (approach 1, loss vs FLOPs): {curve_col.replace('_', ' ')}",
             f"- start grids of the parametric and state-law fits: {'fast (coarse)' if fast else 'full'}; "
             f"bootstrap resamples: {bootstrap}", ""]
    missing = data.runs["final_val_loss"].isna().sum()
    if missing:
        lines += [f"{missing} done run(s) have no final validation loss and are left out of the fits.", ""]
    if not len(data.runs):
        lines += ["**Nothing to analyse yet: no run of this sweep is done.**", ""]
    lines += ["## Figures", ""]
    stems = list(dict.fromkeys(p.stem for p in figures))
    for stem in stems:
        base = stem.rsplit("_", 1)[0] if stem.startswith("isoflop_") else stem
        lines += [f"### {FIGURES.get(base, stem)}", "", f"![{stem}]({stem}.png)", "",
                  f"Files: [{stem}.png]({stem}.png), [{stem}.svg]({stem}.svg)", ""]
    for stem, why in skipped.items():
        lines.append(f"- not drawn: {FIGURES[stem]}: {why}")
    if skipped:
        lines.append("")
    lines += _fit_tables(records, bootstrap)
    skips = [r for r in records if not r.ok]
    if skips:
        lines += ["## Skipped fits", "", "The data does not support these fits (nothing is reported for them):", ""]
        for kind in FIT_KINDS:
            these = [r for r in skips if r.kind == kind]
            lines += [f"- {FIT_KINDS[kind].split(':')[0]}, {r.group}: {r.reason}" for r in these[:MAX_SKIP_LINES]]
            if len(these) > MAX_SKIP_LINES:
                lines.append(f"- {FIT_KINDS[kind].split(':')[0]}: {len(these) - MAX_SKIP_LINES} more groups skipped "
                             "(each reason is in fits.json)")
        lines.append("")
    lines += _run_tables(data, n_col)
    lines += ["## Files", "", "- `fits.json`: every fit record (`scaling.analysis.fit_from_dict(record['fit'])` "
              "rebuilds a fit)", "- `runs.csv`: the finished-run table", ""]
    return lines


# --------------------------------------------------------------------------------------------------------------
# Synthetic sweeps (tests, demos): losses from known laws, no training


SYNTHETIC_LAW: dict[str, Any] = {
    # L = E + A/N^alpha + B/D^beta + B_f/S^gamma_f + K/T^delta  (nats/token); N non-embedding params, D tokens,
    # S state elements per sequence, T context. Chinchilla's own E, A, B, alpha, beta (Hoffmann et al. 2022).
    "E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28,
    "state": {"attention": (5.0, 0.2), "retention": (20.0, 0.25), "mamba": (30.0, 0.3)},
    "K": 20.0, "delta": 0.5,
}

# Model sizes (d_model, n_layers): about 12 d^3 / 64 non-embedding parameters, 0.6M to 200M.
SYNTHETIC_SIZES = ((160, 2), (192, 3), (256, 4), (320, 5), (384, 6), (512, 8), (640, 10), (768, 12), (1024, 16))
# Variants: family, pattern, and the per-layer state as a function of (d_model, context).
SYNTHETIC_VARIANTS: dict[str, tuple[str, str, Callable[[int, int], float]]] = {
    "attention": ("attention", "A", lambda d, T: 2 * T * d),
    "retention-p2-hd16": ("retention", "R", lambda d, T: (d // 16) * 136 * 17),
    "retention-p2-hd32": ("retention", "R", lambda d, T: (d // 32) * 528 * 33),
    "retention-p4-hd16": ("retention", "R", lambda d, T: (d // 16) * 3876 * 17),
    "mamba-d16": ("mamba", "M", lambda d, T: 2 * d * 16 + 3 * (2 * d + 32)),
    "mamba-d64": ("mamba", "M", lambda d, T: 2 * d * 64 + 3 * (2 * d + 128)),
    "mamba-d256": ("mamba", "M", lambda d, T: 2 * d * 256 + 3 * (2 * d + 512)),
}


def synthetic_law_loss(N, D, S, T, family: str, law: dict[str, Any] = SYNTHETIC_LAW) -> np.ndarray:
    """Loss (nats/token) of the synthetic law at N params, D tokens, S state elements, T context."""
    B_f, gamma = law["state"][family]
    return (law["E"] + law["A"] / np.asarray(N, float) ** law["alpha"] + law["B"] / np.asarray(D, float) ** law["beta"]
            + B_f / np.asarray(S, float) ** gamma + law["K"] / np.asarray(T, float) ** law["delta"])


def synthetic_sweep(sweep_dir: str | Path, *, variants: Sequence[str] | None = None,
                    sizes: Sequence[tuple[int, int]] = SYNTHETIC_SIZES, budgets: Sequence[float] = (1e15, 1e16, 1e17),
                    contexts: Sequence[int] = (512,), ratio_range: tuple[float, float] = (1.0, 400.0),
                    state_flops: float = 4.0, tokens_per_step: int = 65536, curve_points: int = 12,
                    noise: float = 0.003, seed: int = 0, law: dict[str, Any] = SYNTHETIC_LAW,
                    name: str = "synthetic") -> Path:
    """Write ``<sweep_dir>/sweep.db`` for a sweep whose losses follow ``law`` exactly (times log-normal noise of
    relative size ``noise``), through the store's own API. No model is trained. Returns the sweep directory.

    Each (variant, size, context, budget) is a done run when its tokens-per-parameter ratio lies in
    ``ratio_range`` (the isoFLOP mode of a sweep spec). Costs: 2N forward FLOPs per token plus, for attention,
    the score terms 4 n_layers T d_model, for the recurrent mixers ``state_flops`` per state element (reading
    and updating the state; 0 makes C = 6ND exactly); training 3x. Tokens: whole steps of ``tokens_per_step`` (batch =
    tokens_per_step / context). Curves: ``curve_points`` log-spaced steps whose train and validation losses follow
    the law at the tokens seen so far (a run stopped there would have that loss), each with its own noise.
    """
    from scaling.sweep.store import Store, owner_token

    variants = list(SYNTHETIC_VARIANTS) if variants is None else list(variants)
    unknown = [v for v in variants if v not in SYNTHETIC_VARIANTS]
    if unknown:
        raise ValueError(f"variants: {unknown} unknown; choose from {', '.join(SYNTHETIC_VARIANTS)}")
    rng = np.random.default_rng(seed)
    multi_ctx = len(contexts) > 1
    plans = []
    for variant in variants:
        family, pattern, state_fn = SYNTHETIC_VARIANTS[variant]
        for d, layers in sizes:
            n = 12 * layers * d * d
            for T in contexts:
                S = int(layers * state_fn(d, T))
                fwd = 2.0 * n + (4.0 * layers * T * d if family == "attention" else state_flops * S)
                for C in budgets:
                    batch = max(1, tokens_per_step // T)
                    steps = max(1, round(C / (3 * fwd) / (batch * T)))
                    tokens = steps * batch * T
                    if not ratio_range[0] <= tokens / n <= ratio_range[1]:
                        continue
                    cfg = {"model": {"name": variant, "pattern": pattern, "n_layers": layers, "d_model": d,
                                     "vocab_size": 256},
                           "train": {"context": T, "batch_size": batch, "steps": steps}, "synthetic": True}
                    rid = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
                    point = {"train.context": T, "train.batch_size": batch} if multi_ctx else {}
                    plans.append({
                        "id": rid, "config": cfg, "variant": variant, "size": f"d{d}", "point": json.dumps(point),
                        "budget": float(C), "planned_flops": 3 * fwd * tokens, "flops_per_token": fwd,
                        "total_steps": steps, "params": n + 256 * d, "non_embedding_params": n,
                        "state_size": S, "context": T, "batch_size": batch,
                        "_family": family})
    owner = owner_token()
    with Store(sweep_dir) as store:
        store.add_sweep(name, {"name": name, "synthetic": True, "law": law}, None)
        store.add_runs(name, plans)
        by_id = {p["id"]: p for p in plans}
        while (row := store.claim(owner)) is not None:
            p = by_id[row["id"]]
            steps = p["total_steps"]
            at = np.unique(np.geomspace(max(1, steps / 64), steps, curve_points).round().astype(int))
            tok = at * p["batch_size"] * p["context"]
            clean = synthetic_law_loss(p["non_embedding_params"], tok, p["state_size"], p["context"], p["_family"],
                                       law)
            train = clean * np.exp(rng.normal(0, noise, len(at)))
            val = clean * np.exp(rng.normal(0, noise, len(at)))
            metrics = [{"step": int(s), "tokens": int(t), "flops": 3.0 * p["flops_per_token"] * float(t),
                        "train_loss": float(a), "val_loss": float(b), "lr": 1e-3}
                       for s, t, a, b in zip(at, tok, train, val, strict=True)]
            summary = {"steps": steps, "tokens": int(tok[-1]), "flops": metrics[-1]["flops"],
                       "final_val_loss": float(val[-1]), "final_train_loss": float(train[-1]),
                       "final_val_bpb": float(val[-1]) / math.log(2)}
            store.finish(row["id"], "done", summary=summary, metrics=metrics, owner=owner)
    return Path(sweep_dir)
