"""`scaling analyze` and `scaling predict`: the analysis commands of the command line (scaling.cli)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _print_headline(title: str, rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("group", "law", "estimate [95% interval] / check"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console().print(table)


def _holdout_arg(value: str | None):
    if value is None:
        return False
    if value == "largest":
        return True
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--holdout {value!r}: must be a FLOP budget (e.g. 8e11) or 'largest'") \
            from None


def analyze(args) -> int:
    from scaling.analysis import report

    if args.bootstrap < 0:
        print(f"error: --bootstrap {args.bootstrap}: must be >= 0 (number of resamples)", file=sys.stderr)
        return 2
    try:
        result = report.write_report(args.sweep_dir, args.out, bootstrap=args.bootstrap, seed=args.seed,
                                     params=args.params, curve_loss=args.curve_loss, fast=args.fast,
                                     progress=not args.no_progress and sys.stderr.isatty(), holdout=args.holdout)
    except ValueError as e:
        if str(e).startswith("--holdout"):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    fitted = sum(r.ok for r in result.records)
    counts = ", ".join(f"{v} {k}" for k, v in result.data.counts.items() if v) or "no runs"
    print(f"analysed {len(result.data.runs)} done runs ({counts}): {fitted} fits, "
          f"{len(result.records) - fitted} skipped (reasons in the report), "
          f"{len({p.stem for p in result.figures})} figures (PNG + SVG)")
    rows = result.headline()
    if rows:
        _print_headline("fitted laws" + (" (held-out budget excluded)" if args.holdout is not False else ""), rows)
    if result.seeds is not None and len(result.seeds):
        for r in result.seeds.itertuples():
            print(f"seeds: {r.variant} {r.size} at {r.budget:.2g} FLOPs: {r.seeds} seeds, loss {r.mean:.4f} "
                  f"± {r.se:.4f} (std {r.std:.4f})")
    print(f"report: {result.report}")
    return 0


def predict(args) -> int:
    import json

    from scaling.analysis import next_rung, plan
    from scaling.analysis.load import load_configs, load_sweep

    if not args.budget > 0:
        print(f"error: --budget {args.budget}: must be a positive number of training FLOPs", file=sys.stderr)
        return 2
    data = load_sweep(args.sweep_dir)
    records = plan.fit_sweep(data, bootstrap=0, fast=args.fast, kinds=["parametric", "state_law"])
    rung = next_rung.plan_rung(records, data.runs, args.budget)
    if not len(rung):
        print("no family has an approach-3 fit (L(N, D)) on this sweep; nothing to predict (see scaling analyze)",
              file=sys.stderr)
        return 1
    for r in rung.itertuples():
        line = (f"{r.family} ({r.group}) at C = {r.budget:.3g}: N_opt {r.N_opt:.3g} [{r.N_lo:.3g}, {r.N_hi:.3g}], "
                f"D_opt {r.D_opt:.3g} [{r.D_lo:.3g}, {r.D_hi:.3g}] tokens, state {r.S:.3g} [{r.S_lo:.3g}, "
                f"{r.S_hi:.3g}], predicted loss {r.loss:.4f} [{r.loss_lo:.4f}, {r.loss_hi:.4f}] "
                f"(cost {r.cost} FLOPs/token; {r.extrapolation:.1f}x the largest run)")
        if hasattr(r, "state_law_S_opt") and r.state_law_S_opt == r.state_law_S_opt:
            line += (f"; state law: N_opt {r.state_law_N_opt:.3g}, S_opt {r.state_law_S_opt:.3g} "
                     f"[{r.state_law_S_lo:.3g}, {r.state_law_S_hi:.3g}]"
                     + (" (at the edge of the searched range)" if r.state_law_at_edge else ""))
        print(line)
    configs = load_configs(args.sweep_dir)
    name = (data.sweeps[0] if data.sweeps else Path(args.sweep_dir).name) + f"-rung-{args.budget:.0e}"
    tag = f"{args.budget:.0e}".replace("+", "")
    out = Path(args.out) if args.out else Path(args.sweep_dir) / f"next_rung_{tag}.py"
    next_rung.write_rung_spec(rung, configs, out, name)
    rung.to_csv(out.with_suffix(".csv"), index=False)
    print(f"wrote {out} (run it: scaling sweep {out} --sweep-dir {args.sweep_dir}) and {out.with_suffix('.csv')}")
    print(json.dumps({"predicted_loss": dict(zip(rung["family"], rung["loss"].round(4), strict=True))}))
    return 0


def add_parsers(sub) -> None:
    an = sub.add_parser("analyze", help="fit scaling laws to a sweep's finished runs; write figures and report.md",
                        description="Load SWEEP_DIR/sweep.db (read-only; safe while the sweep runs), fit the laws "
                        "the finished runs support (Chinchilla approaches 1-3 per model group, the state-size law "
                        "per mixer family, the context law), and write PNG + SVG figures, report.md (fitted laws "
                        "with 95% bootstrap intervals, held-out predictions, the seed-to-seed spread, skipped fits "
                        "with the reason, the run table), fits.json and runs.csv.")
    an.add_argument("sweep_dir", help="a sweep directory (holds sweep.db)")
    an.add_argument("--out", help="output folder (default: SWEEP_DIR/analysis)")
    an.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates for the 95%% intervals of "
                    "approach 3 and the state law; approaches 1, 2 and the context law draw 20x as many (default "
                    "200; 0: estimates only)")
    an.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    an.add_argument("--params", choices=("non_embedding", "total"), default="non_embedding",
                    help="parameter count used as N (default non_embedding)")
    an.add_argument("--curve-loss", choices=("auto", "train", "val"), default="auto",
                    help="loss curves drawn in the loss-vs-FLOPs figure (auto: validation when every run logged "
                    ">= 3 evaluations, else training, smoothed)")
    an.add_argument("--holdout", nargs="?", const="largest", default=None, type=str, metavar="BUDGET",
                    help="leave the runs at this FLOP budget (default: the largest) out of every fit and predict "
                    "them: a table of predicted, interval, measured and error, and a figure")
    an.add_argument("--fast", action="store_true", help="coarse start grids for the parametric and state-law "
                    "fits (seconds instead of tens of seconds a fit)")
    an.add_argument("--no-progress", action="store_true", help="no progress bar")
    an.set_defaults(func=lambda a: analyze(_with_holdout(a)))

    pr = sub.add_parser("predict", help="the compute-optimal N, D and state size at a FLOP budget, with intervals "
                        "and the predicted loss; writes a sweep spec for that rung",
                        description="Fit approach 3 (per family's ladder variant) and the state-size law on "
                        "SWEEP_DIR's runs; print per family the compute-optimal N, D and state size at --budget C "
                        "(C = accounting cost per token x D, not 6ND) with 90%% intervals and the predicted loss "
                        "with its 90%% prediction interval; write a sweep spec training that rung.")
    pr.add_argument("sweep_dir", help="a sweep directory (holds sweep.db)")
    pr.add_argument("--budget", type=float, required=True, help="training FLOPs of the next rung, e.g. 3e12")
    pr.add_argument("--out", help="the spec file to write (default SWEEP_DIR/next_rung_<budget>.py)")
    pr.add_argument("--fast", action="store_true", help="coarse start grids (seconds)")
    pr.set_defaults(func=predict)


def _with_holdout(args):
    try:
        args.holdout = _holdout_arg(args.holdout)
    except argparse.ArgumentTypeError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return args
