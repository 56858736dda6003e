"""Sweep analysis: ``<sweep_dir>/sweep.db`` -> pandas DataFrames -> the fits the data supports -> figures, report.md.

    from scaling.analysis import report
    data = report.load_sweep("sweeps/quickstart")   # data.runs: one row per done run; data.curves: logged steps
    records = report.fit_sweep(data)                # one FitRecord per (law, group): the fit, or why it was skipped
    result = report.write_report("sweeps/quickstart")   # what `scaling analyze sweeps/quickstart` does

Loading lives in :mod:`scaling.analysis.load` and the choice of fits (which laws, on which runs, and why a fit is
skipped) in :mod:`scaling.analysis.plan`; this module writes the report and re-exports both. The database is opened
read-only (the launcher is its only writer), so analysing a sweep while it runs is safe: only runs with status
``done`` are analysed, and the report counts the others.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scaling.analysis import figures as _study_figures
from scaling.analysis import holdout as _holdout
from scaling.analysis import plots as _plots
from scaling.analysis import plots_predict as _plots_predict
from scaling.analysis import plots_state as _plots_state
from scaling.analysis.load import (
    CURVE_COLUMNS,
    FAMILIES,
    RUN_COLUMNS,
    SweepData,
    family_of,
    load_curves,
    load_runs,
    load_sweep,
)
from scaling.analysis.plan import (
    CLOSED_FORM_REPLICATES,
    CURVE_LOSS_CHOICES,
    FAST_PARAMETRIC_GRID,
    FAST_STATE_GRID,
    FAST_STATE_GRID_WITH_D,
    FIT_KINDS,
    PARAMS_CHOICES,
    FitRecord,
    _check_options,
    choose_curve_loss,
    fit_sweep,
    plan_fits,
)

__all__ = [
    "CURVE_COLUMNS",
    "CURVE_LOSS_CHOICES",
    "FAMILIES",
    "FAST_PARAMETRIC_GRID",
    "FAST_STATE_GRID",
    "FAST_STATE_GRID_WITH_D",
    "FIT_KINDS",
    "PARAMS_CHOICES",
    "RUN_COLUMNS",
    "FitRecord",
    "Report",
    "SweepData",
    "family_of",
    "fit_sweep",
    "load_curves",
    "load_runs",
    "load_sweep",
    "choose_curve_loss",
    "plan_fits",
    "write_report",
]

MAX_SKIP_LINES = 6  # per law in report.md; fits.json has them all


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
    holdout: pd.DataFrame | None = None  # per held-out run and law: predicted, interval, measured, error
    holdout_summary: pd.DataFrame | None = None  # per family and law: median / max error, coverage
    holdout_optimum: pd.DataFrame | None = None  # approach 2's N_opt at the held-out budget vs its runs' parabola
    seeds: pd.DataFrame | None = None  # points run over several seeds: mean, std, se

    def headline(self) -> list[tuple[str, str, str]]:
        """The laws' headline numbers (exponents with 95% intervals, held-out errors and coverage)."""
        return _holdout.headline(self.records, self.holdout_summary, self.holdout_optimum)


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


def _finite_ci(fit, key: str) -> bool:
    ci = fit.ci.get(key)
    return ci is not None and all(np.isfinite(v) for v in ci)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _fit_tables(records: list[FitRecord], bootstrap: int) -> list[str]:
    lines: list[str] = []
    ci_note = (f"Cells are `estimate [2.5%, 97.5%]`: percentile intervals over {bootstrap} bootstrap replicates "
               f"(approach 3, the state law) or {bootstrap * CLOSED_FORM_REPLICATES:,} (approaches 1 and 2, the "
               "context law: a least-squares solve a replicate)."
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
        no_ci = [r.group for r in by_kind["envelope"] if bootstrap and not _finite_ci(r.fit, "a")]
        if no_ci:
            lines += [f"No interval ({', '.join(no_ci)}): too few bootstrap replicates (runs resampled, each loss "
                      "perturbed by the runs' noise: the pooled seed spread, else the evaluation SE) kept two "
                      "frontier points, or all that did agree. Approach 1 needs more sizes per budget than this "
                      "sweep has; approaches 2 and 3 use the same runs.", ""]
    if by_kind["isoflop"]:
        lines += [f"### {FIT_KINDS['isoflop']}", "",
                  "Per budget, loss = c0 + c1 log N + c2 log² N; N_opt = k_N C^a and D_opt = k_D C^b over the "
                  "budgets' minima (D_opt from the budget's own tokens-vs-size relation). Intervals: each replicate "
                  "keeps every run's size and draws its loss anew around its budget's parabola with the runs' noise "
                  "(the pooled seed spread, its own uncertainty drawn from its degrees of freedom, else the "
                  "evaluation SE).", ""]
        lines += _table(["group", "budgets (FLOPs)", "N_opt per budget", "a (N_opt)", "b (D_opt)", "k_N", "k_D"],
                        [(r.group, ", ".join(_plots.sci(b) for b in r.fit.data["budget_C"]),
                          ", ".join(_plots.sci(n, 3) for n in r.fit.data["budget_N_opt"]),
                          _cell(r.fit, "a"), _cell(r.fit, "b"), _fmt(r.fit.params["k_N"]),
                          _fmt(r.fit.params["k_D"])) for r in by_kind["isoflop"]])
        lines.append("")
    if by_kind["parametric"]:
        lines += [f"### {FIT_KINDS['parametric']}", "",
                  "Huber loss (delta 1e-3) on log-loss residuals, L-BFGS (batched over starts) from a grid of "
                  "starts (Epoch AI's replication). a = beta/(alpha+beta) and b = alpha/(alpha+beta) are the "
                  "allocation exponents under Chinchilla's C = 6ND; the allocation figure and `scaling predict` "
                  "use the accounting's cost instead (FLOP convention above).", ""]
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


def _prediction_lines(pred, summary, held_budget, spread, optimum=None) -> list[str]:
    lines: list[str] = []
    if pred is not None:
        lines += ["## Held-out predictions", "",
                  f"The runs at {_plots.sci(held_budget)} FLOPs were left out of every fit above and predicted by "
                  f"the laws fitted on the smaller budgets, with {100 * _holdout.PREDICT_LEVEL:.0f}% prediction "
                  "intervals (parameter uncertainty by the delta method plus the runs' scatter around the law, "
                  "Student-t; scaling.analysis.predict). Measured: final loss ± its standard error over the "
                  "evaluation set's sequences (the error of the estimate of the loss on the whole validation "
                  "distribution; every run is evaluated on the same sequences, so the differences between runs "
                  "are measured more precisely than that).", ""]
        if len(pred):
            lines += _table(["family", "law", "held-out runs", "median abs. error", "max abs. error", "coverage"],
                            [(r.family, r.law, r.runs, f"{100 * r.median_abs_rel_error:.2f}%",
                              f"{100 * r.max_abs_rel_error:.2f}%", f"{100 * r.coverage:.0f}%")
                             for r in summary.itertuples()])
            lines += [""]
            lines += _table(["run", "variant", "law", "N", "D", "S", "predicted", "interval", "measured", "error"],
                            [(r.run_id, r.variant, r.law, _plots.sci(r.N, 3), _plots.sci(r.D, 3), _plots.sci(r.S, 3),
                              f"{r.predicted:.4f}", f"[{r.lo:.4f}, {r.hi:.4f}]",
                              f"{r.measured:.4f} ± {r.measured_se:.4f}", f"{100 * r.rel_error:+.2f}%"
                              + ("" if r.covered else " (outside)")) for r in pred.itertuples()])
        else:
            lines += ["No held-out run has a fitted law of its group to predict it (see *Skipped fits*)."]
        if optimum is not None and len(optimum):
            lines += ["", "Approach 2's N_opt = k_N C^a at the held-out budget (95% interval of its replicates) "
                      "against the vertex of the parabola through the held-out runs:", ""]
            lines += _table(["group", "budget", "held-out sizes", "predicted N_opt", "interval", "held-out vertex"],
                            [(r.variant or r.family, _plots.sci(r.budget), ", ".join(_plots.sci(n, 3) for n in r.sizes),
                              _plots.sci(r.predicted, 3), f"[{_plots.sci(r.lo, 3)}, {_plots.sci(r.hi, 3)}]",
                              _plots.sci(r.measured, 3) + ("" if r.covered else " (outside)"))
                             for r in optimum.itertuples()])
        lines.append("")
    if spread is not None and len(spread):
        lines += ["## Seed-to-seed spread", "",
                  "Points run over several seeds (train.seed: initialisation and data order). A difference "
                  "between variants is called real when Welch's t test puts it outside the 95% range of the seed "
                  "spread (threshold: the t quantile at the Welch degrees of freedom times the combined SE; with "
                  "three seeds a variant about 3-4 SE, not 2); else it is within the seed spread, not a finding. "
                  "eval SE: the evaluation sample's own standard error.", ""]
        ctx = "context" in spread and spread["context"].nunique() > 1  # else one context: no column
        lines += _table(["variant", "size", *(["context"] if ctx else []), "budget", "seeds", "mean loss", "std",
                         "SE of mean", "eval SE"],
                        [(r.variant, r.size or "-", *([int(r.context)] if ctx else []), _plots.sci(r.budget), r.seeds,
                          f"{r.mean:.4f}", f"{r.std:.4f}", f"{r.se:.4f}", f"{r.eval_se:.4f}")
                         for r in spread.itertuples()])
        diffs = _holdout.variant_differences(spread)
        if len(diffs):
            lines += ["", "Differences between variants at the same point (b − a, seed means):", ""]
            lines += _table(["size", "budget", "a", "b", "b − a", "SE", "dof", "threshold", "verdict"],
                            [(r.size or "-", _plots.sci(r.budget), r.a, r.b, f"{r.diff:+.4f}", f"{r.se:.4f}",
                              f"{r.dof:.1f}", f"{r.threshold:.4f}", r.verdict) for r in diffs.itertuples()])
        lines.append("")
    return lines


def _progress(enabled: bool, console=None):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console or Console(stderr=True), transient=True, disable=not enabled)


def write_report(sweep_dir: str | Path, out: str | Path | None = None, *, bootstrap: int = 200, seed: int = 0,
                 params: str = "non_embedding", curve_loss: str = "auto", fast: bool = False,
                 progress: bool = True, console=None, holdout: bool | float = False) -> Report:
    """Analyse ``<sweep_dir>/sweep.db``: fits, figures (PNG + SVG) and ``report.md`` in ``out``
    (default ``<sweep_dir>/analysis``), plus ``fits.json`` (every record, reloadable with
    ``scaling.analysis.fit_from_dict``) and ``runs.csv`` (the run table).

    Options: ``bootstrap`` resamples for the 95% intervals; ``seed``; ``params``: "non_embedding" (default) or
    "total" parameters as N; ``curve_loss``: "auto", "train" or "val", the loss curves for approach 1 and the
    loss-vs-FLOPs figure; ``fast``: coarse start grids (see :mod:`scaling.analysis.plan`); ``progress``: a rich progress
    bar on stderr; ``holdout``: True (the largest budget) or a FLOP budget whose runs are left out of every fit and
    predicted by the laws fitted on the rest (tables, ``holdout.csv``, two figures: scaling.analysis.holdout)."""
    _check_options(bootstrap, seed, params, curve_loss)
    out = Path(out) if out is not None else Path(sweep_dir) / "analysis"
    n_col = PARAMS_CHOICES[params]
    n_label = "non-embedding parameters" if params == "non_embedding" else "parameters"
    with _progress(progress, console) as bar:
        task = bar.add_task("loading sweep.db", total=None)
        all_data = data = load_sweep(sweep_dir)
        held = None
        if holdout is not False:
            data, held, held_budget = _holdout.split_holdout(data, None if holdout is True else float(holdout))
        curve_col = choose_curve_loss(data, curve_loss)

        def on_job(i, n, job):
            bar.update(task, total=n + 6, completed=i, description=f"fitting {job.kind}: {job.group}")

        records = fit_sweep(data, bootstrap=bootstrap, seed=seed, params=params, curve_loss=curve_loss, fast=fast,
                            on_job=on_job)
        bar.update(task, description="drawing figures", completed=len(records), total=len(records) + 6)
        out.mkdir(parents=True, exist_ok=True)
        figures, skipped = _write_figures(data, records, out, n_col, n_label, curve_col,
                                          lambda: bar.advance(task))
        pred = summary = optimum = None
        if held is not None:
            pred = _holdout.predict_holdout(records, held, n_col)
            summary = _holdout.summarize_holdout(pred)
            optimum = _holdout.predict_optimum(records, held, n_col)
            if len(optimum):
                fig = _plots_predict.plot_optimum(records, optimum)
                figures.extend(_plots.save_figure(fig, out, "holdout_optimum"))
            pred.to_csv(out / "holdout.csv", index=False)
            if len(pred):
                figures.extend(_plots.save_figure(_plots_predict.plot_holdout(pred), out, "holdout_predictions"))
            else:
                skipped["holdout_predictions"] = "no held-out run has a fitted law to predict it"
        spread = _holdout.seed_spread(all_data.runs, all_data.axes)
        names = _study_figures.requested(data)
        if names:
            bar.update(task, description=f"drawing study figures: {', '.join(names)}")
        study_paths, study_lines, study_skipped = _study_figures.draw(data, out, names)
        bar.update(task, description="writing report.md")
        (out / "fits.json").write_text(json.dumps([r.to_dict() for r in records], indent=1, allow_nan=False))
        data.runs.to_csv(out / "runs.csv", index=False)
        lines = _report_lines(data, records, figures, skipped, out, bootstrap, params, curve_col, fast, n_col)
        i = lines.index("## Runs")
        lines[i:i] = _prediction_lines(pred, summary, held_budget if held is not None else None, spread, optimum)
        if names:
            study = ["## Study figures", "", *study_lines]
            study += [f"- not drawn: {_study_figures.FIGURES[k][1]}: {why}" for k, why in study_skipped.items()]
            i = lines.index("## Figures")
            lines[i:i] = study + [""]
        figures = figures + study_paths
        skipped.update(study_skipped)
        path = out / "report.md"
        path.write_text("\n".join(lines) + "\n")
    return Report(out=out, report=path, figures=figures, records=records, data=data, skipped_figures=skipped,
                  holdout=pred, holdout_summary=summary, holdout_optimum=optimum, seeds=spread)


FIGURES = {
    "loss_vs_flops": "Loss vs training FLOPs, coloured by state size, with the compute-optimal frontier",
    "isoflop": "IsoFLOP profiles (approach 2)",
    "compute_optimal_allocation": "Compute-optimal N_opt(C) and D_opt(C)",
    "loss_vs_state": "Loss vs state size per mixer family",
    "state_law_fit": "State-size law: the state term",
    "loss_vs_context": "Loss vs training context at fixed FLOPs",
    "holdout_predictions": "Held-out runs: predicted vs measured loss",
    "holdout_optimum": "Held-out budget: approach 2's N_opt against the held-out runs' minimum",
}


def _write_figures(data, records, out, n_col, n_label, curve_col, tick) -> tuple[list[Path], dict[str, str]]:
    runs = data.runs[data.runs["final_val_loss"].notna()]
    ok = {k: [r for r in records if r.kind == k and r.ok] for k in FIT_KINDS}
    figures: list[Path] = []
    skipped: dict[str, str] = {}

    def save(fig, name):
        figures.extend(_plots.save_figure(fig, out, name))

    if len(runs):
        frontiers = [(r.group, r.fit) for r in ok["envelope"]]
        save(_plots.plot_loss_vs_flops(runs, data.curves, curve_loss=curve_col, frontiers=frontiers),
             "loss_vs_flops")
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
    if _plots_state.state_contexts(state_runs):
        fits = [(r.keys["family"], r.fit, r.keys) for r in ok["state_law"]]
        save(_plots_state.plot_loss_vs_state(state_runs, fits, n_col=n_col), "loss_vs_state")
    else:
        skipped["loss_vs_state"] = "no mixer family has two state sizes at one training context"
    tick()
    if ok["state_law"]:
        save(_plots_state.plot_state_law([(r.group, r.fit) for r in ok["state_law"]]), "state_law_fit")
    else:
        skipped["state_law_fit"] = "no state-size law fitted"
    tick()
    if runs["context"].nunique() > 1:
        save(_plots_state.plot_loss_vs_context(runs, [(r.family, r.fit) for r in ok["context_law"]]), "loss_vs_context")
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
             "- FLOP convention: C = tokens x training FLOPs per token from scaling.accounting (3 x forward: every "
             "matmul plus the mixer's context term), as the sweep matched its budgets; the approach-3 and state-law "
             "allocations use a power-law fit of that cost per group (fits.json: info.cost), not 6ND",
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
