"""The ``scaling`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = "Configs are Python files with get_config() (see configs/). Overrides: --set model.retention.p=4"


def _train(args) -> int:
    from scaling import accounting, config, sharding
    from scaling.cli_errors import check_corpus
    from scaling.rundir import run_id
    from scaling.train import train

    try:  # a multi-host job joins before anything touches the devices
        sharding.initialize_hosts(sharding.hosts_from(args.coordinator, args.num_processes, args.process_id))
    except sharding.MeshError as e:
        raise config.ConfigError(str(e)) from None
    if Path(args.config).is_dir():  # a run workdir (e.g. written by `scaling convert`): continue it
        cfg = config.load_run_config(args.config, args.set)
        workdir = args.workdir or args.config
    else:
        cfg = config.load(args.config, args.set)
        workdir = args.workdir or str(Path("runs") / f"{cfg.model.name}-{run_id(cfg)}")
    check_corpus(cfg)
    n = accounting.params(cfg)
    print(f"run {run_id(cfg)}  model {cfg.model.name} (pattern {cfg.model.pattern} x {cfg.model.n_layers})  "
          f"params {n['total']:,} ({n['non_embedding']:,} non-embedding)  workdir {workdir}")
    result = train(cfg, workdir, progress=not args.no_progress)
    s = result.summary
    _print_table("run summary", [
        ("status", result.status), ("steps", f"{result.step:,} / {s['total_steps']:,}"),
        ("params", f"{s['params']:,}"), ("non-embedding params", f"{s['non_embedding_params']:,}"),
        ("state size (elements / sequence)", f"{s['state_size']:,} at context {s['context']:,}"),
        ("tokens", f"{s['tokens']:,}"), ("training FLOPs", f"{s['flops']:.3e}"),
        ("final train loss (nats/token)", _fmt(s.get("final_loss"))),
        ("validation loss (nats/token)", _fmt(s.get("val_loss"))),
        ("validation bits per byte", _fmt(s.get("val_bpb"))),
        ("workdir", workdir),
    ])
    return 0 if result.status == "done" else 3


def _generate(args) -> int:
    import resource

    from scaling.cli_errors import check_generate
    from scaling.inference import StateError, generate, state_path
    from scaling.train import load_run

    bad = check_generate(args)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    prompt = args.prompt
    if args.prompt_file:
        try:
            prompt = Path(args.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else (e.strerror or str(e))
            print(f"error: --prompt-file {args.prompt_file!r}: {reason} (give a UTF-8 text file)", file=sys.stderr)
            return 2
    elif prompt is None:
        prompt = "" if args.load_state else "def "
    try:  # the run's tokenizer is found (or refused) before its checkpoint is loaded
        text_tokenizer = _run_tokenizer(args.workdir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg, model, step = load_run(args.workdir)
    print(f"[checkpoint step {step}]", file=sys.stderr)
    if not args.prompt_file:
        sys.stdout.write(prompt)
    stats = {}
    try:
        generate(model, prompt, args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                 seed=args.seed, model_cfg=cfg.model, save_state_to=args.save_state, load_state_from=args.load_state,
                 stats=stats, text_tokenizer=text_tokenizer,
                 on_text=None if args.quiet else lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    except StateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    if args.save_state:
        print(f"[state after the prompt ({stats['prompt_tokens']:,} tokens) saved to {state_path(args.save_state)}]",
              file=sys.stderr)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"[{stats['generated']:,} tokens generated; position {stats['pos']:,}; decode state "
          f"{stats['state_bytes']:,} bytes; peak RSS {peak:,.0f} MiB]", file=sys.stderr)
    return 0


def _run_tokenizer(workdir):
    """scaling.inference.run_tokenizer of the run in ``workdir`` (None: bytes; also when there is no config.json,
    which load_run then names)."""
    from scaling import config, rundir
    from scaling.inference import run_tokenizer

    if not rundir.has_config(workdir):
        return None
    return run_tokenizer(config.from_dict(rundir.read_config(workdir)["config"]).data)  # ValueError: not one


def _convert(args) -> int:
    from scaling.convert_run import convert_run

    cfg, step = convert_run(args.workdir, args.out, to=args.to, overrides=args.set)
    m = cfg.model
    if args.to == "R":
        r = m.retention
        what = (f"power retention p={r.p}, {r.n_heads} heads ({r.n_kv_heads} kv), gate started at {r.gate_init}; "
                "q/k/v/o and every other weight copied")
    elif args.to == "G":
        what = (f"GLA, {m.gla.n_heads} heads; q/k/v/o and every other weight copied, the gates and head norm "
                "initialised (GLA has no RoPE)")
    else:
        what = (f"Based, {m.based.n_heads} heads, window {m.based.window}, feature_dim {m.based.feature_dim}; "
                "q/k/v/o copied into the window branch, the Taylor branch's q and k initialised")
    print(f"converted {args.workdir} (checkpoint step {step}) -> {args.out}: pattern {m.pattern} x {m.n_layers}, "
          f"{what}")
    if m.attention.window and args.to != "B":
        print(f"note: the source attention had a window of {m.attention.window} tokens; the new mixer has none "
              "(its gate decays instead)")
    print(f"retrain it: scaling train {args.out}   (add --set train.steps=N ... and --workdir for a new run)")
    return 0


def _flops(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from scaling import accounting, config

    cfg = config.load(args.config, args.set)
    n = accounting.params(cfg)
    conv = args.attention_flops
    table = Table(title=f"{cfg.model.name}: {n['total']:,} params ({n['non_embedding']:,} non-embedding), "
                  f"pattern {cfg.model.pattern} x {cfg.model.n_layers}, attention FLOPs: {conv}")
    cols = ["context", "fwd/tok", "train/tok", "weights", "state", "head", "w/s ratio", "state elems", "state bytes"]
    if args.xla:
        cols += ["XLA fwd/tok", "formula/XLA"]
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True)
    for t in args.context:
        f = accounting.flops_breakdown(cfg, t, conv)
        ratio = f["weights"] / f["state"] if f["state"] else float("inf")
        row = [f"{t:,}", f"{f['total']:.3g}", f"{3 * f['total']:.3g}", f"{f['weights']:.3g}",
               f"{f['state']:.3g}", f"{f['head']:.3g}", f"{ratio:.3g}",
               f"{accounting.state_size(cfg, t):.3g}", f"{accounting.state_bytes(cfg, t):.3g}"]
        if args.xla:
            from scaling.accounting_xla import xla_ratio

            formula, r = xla_ratio(cfg, t)
            row += [f"{formula / r:.3g}", f"{r:.3f}"]
        table.add_row(*row)
    console = Console(width=max(Console().width, 160 if args.xla else 130))
    console.print(table)
    console.print("FLOPs per token (2 per multiply-add), forward; train = 3x forward. weights: matmuls with "
                  "parameters in the blocks; state: the mixers' context-dependent work; head: the LM head; "
                  "w/s: weight/state FLOP ratio. State per sequence, summed over layers.")
    console.print(f"attention FLOPs: {accounting.CONVENTION_NOTE[conv]}.")
    if args.xla:
        console.print("formula/XLA: the formula (\"full\" convention, what the compiled forward computes) over XLA's "
                      "cost analysis of the forward compiled at batch 2 with parallel attention and unrolled chunk "
                      "loops (scaling/accounting_xla.py).")
    return 0


def _sweep(args) -> int:
    from scaling.config import ConfigError, parse_override
    from scaling.sweep import launchers

    overrides = dict(parse_override(item) for item in args.set)
    if args.dry_run:
        from scaling.sweep import dry_run

        return dry_run.main(args, overrides)
    if args.json or args.device_memory or args.devices or args.mesh:
        raise ConfigError("--json, --device-memory, --devices and --mesh plan a sweep: add --dry-run")
    params = dict(_kv(item, "--slurm-param") for item in args.slurm_param)
    result = launchers.run_sweep(
        args.spec, args.sweep_dir, launcher=args.launcher, workers=args.workers, retries=args.retries,
        progress=not args.no_progress and sys.stdout.isatty(), ray_address=args.ray_address,
        slurm_cluster=args.slurm_cluster, slurm_params=params, scale=args.scale, overrides=overrides,
        pack=args.pack)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items() if v)
    print(f"sweep {result.sweep_dir}: {result.runs} runs ({counts}); trained {result.trained}, "
          f"recorded {result.skipped} already finished; {result.wall_s:.0f} s")
    if result.trained_flops:
        from scaling.sweep.utilisation import summary_line

        print(summary_line(result.trained_flops, result.train_s, result.mfu, result.peak_gflops, result.cores_used))
    if result.failed_ids:
        print(f"failed: {', '.join(result.failed_ids)} (see runs/<id>/worker.log; rerun to retry)", file=sys.stderr)
    if result.counts["running"]:
        print(f"{result.counts['running']} run(s) still running under another launcher; "
              f"`scaling status {result.sweep_dir}` follows them")
    return 1 if result.counts["failed"] or result.counts["pending"] else 0


def _kv(text: str, flag: str):
    from scaling.config import ConfigError, parse_override

    if "=" not in text:
        raise ConfigError(f"{flag} {text!r}: must look like key=value, e.g. {flag} slurm_partition=gpu")
    return parse_override(text)


def _status(args) -> int:
    from rich.console import Console

    from scaling.sweep import table

    if args.export:
        table.check_export_format(args.export[0])  # before the table, so a missing pyarrow fails first
    table.print_status(args.sweep_dir, Console(width=max(Console().width, 220)))
    if args.export:
        fmt, path = args.export
        n = table.export(args.sweep_dir, fmt, path)
        print(f"wrote {n} runs to {path} ({fmt})")
    return 0


def _fmt(x):
    return "-" if x is None else f"{x:.4f}"


def _print_table(title: str, rows) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, str(v))
    Console().print(table)


def build_parser() -> argparse.ArgumentParser:
    from scaling.cli_errors import Parser, int_at_least

    p = Parser(prog="scaling", description="statescale: scaling-law experiments over "
                                "parameters, state size and context length.", epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a config file; resumes in an existing workdir",
                       description="Train one run. Restarting with the same workdir resumes from its newest "
                       "checkpoint. Exit code 3 when the run diverges (NaN/inf loss).", epilog=EPILOG)
    t.add_argument("config", help="config file, e.g. configs/models/power_retention_tiny.py, or a run workdir "
                   "(its config.json; the workdir defaults to it), e.g. one written by `scaling convert`")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set train.steps=200")
    t.add_argument("--workdir", help="run directory (default: runs/<model name>-<run id>)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    hosts = t.add_argument_group("multi-host (jax.distributed; under Slurm with several tasks all three are "
                                 "optional)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (default: "
                       "$JAX_COORDINATOR_ADDRESS)")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="processes in the job (default: "
                       "$JAX_NUM_PROCESSES)")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process, 0 .. N-1 (default: "
                       "$JAX_PROCESS_ID); all share --workdir, process 0 writes its files")
    t.set_defaults(func=_train)

    g = sub.add_parser("generate", help="sample text from a trained run's newest checkpoint",
                       description="Prefill the prompt, then decode token by token with the recurrent state "
                       "(attention with its KV cache), streaming the text.")
    g.add_argument("workdir", help="a run directory written by `scaling train`")
    g.add_argument("--prompt", default=None, help="prompt text (default: 'def ', or '' with --load-state)")
    g.add_argument("--prompt-file", help="read the prompt from this UTF-8 file (e.g. a long document to prefill)")
    g.add_argument("--save-state", metavar="PATH", help="save the decode state after the prompt (.npz), "
                   "to continue later with --load-state")
    g.add_argument("--load-state", metavar="PATH", help="continue from a state saved by --save-state; the "
                   "prompt (may be empty) is appended to what it has seen")
    g.add_argument("--quiet", action="store_true", help="do not print the generated text")
    g.add_argument("--max-tokens", type=int, default=200,
                   help="tokens to generate: bytes with the byte tokenizer (default 200; 0: only prefill)")
    g.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_generate)

    cv = sub.add_parser("convert", help="metamorphosis: turn a trained transformer's attention layers into power "
                        "retention, GLA or Based with the same weights, as a new run workdir to retrain",
                        description="Take WORKDIR's newest checkpoint, swap each attention layer (A) for power "
                        "retention (R, gate started near 1), GLA (G) or Based (B, q/k/v/o become its window "
                        "branch) with the same q/k/v/o weights, and write NEWDIR: config.json (train.init_from = "
                        "WORKDIR) and a step-0 checkpoint. `scaling train NEWDIR` then retrains all weights.",
                        epilog=EPILOG)
    cv.add_argument("workdir", help="a run directory written by `scaling train` (with a checkpoint)")
    cv.add_argument("--to", required=True, help="the mixer letter to convert attention into: R (power retention), "
                    "G (GLA) or B (Based)")
    cv.add_argument("--out", required=True, help="the new run directory (must not exist, or be empty)")
    cv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the converted config, e.g. model.retention.p=4, train.steps=500")
    cv.set_defaults(func=_convert)

    from scaling import cli_data

    cli_data.add_parsers(sub)

    f = sub.add_parser("flops", help="params, FLOPs per token, state size and the weight/state FLOP split",
                       description="Forward FLOPs per token (2 per multiply-add) at each context, split into "
                       "weight and state FLOPs (Manifest's weight/state ratio), with the state size.")
    f.add_argument("config", help="config file, e.g. configs/models/transformer_small.py")
    f.add_argument("--context", type=int_at_least(1, "tokens"), nargs="+", default=[1024, 4096, 16384, 65536],
                   help="contexts in tokens (default 1k 4k 16k 64k)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    f.add_argument("--attention-flops", choices=("full", "causal"), default="full",
                   help="count causal attention's whole T x T block (full, Chinchilla's convention, the default) or "
                        "its unmasked half (causal, as Gelada et al. 2025 Table 2)")
    f.add_argument("--xla", action="store_true",
                   help="also compile the forward and print the formula's ratio to XLA's cost analysis")
    f.set_defaults(func=_flops)

    from scaling import cli_bench

    cli_bench.add_parser(sub, EPILOG)

    sw = sub.add_parser("sweep", help="run a FLOP-matched sweep spec (experiments/*.py); rerun to resume",
                        description="Expand a sweep spec into runs (validated before anything runs), record them "
                        "in SWEEP_DIR/sweep.db and train the pending ones. Rerunning the same command after "
                        "Ctrl-C or kill -9 skips finished runs and resumes the others from their checkpoints.")
    sw.add_argument("spec", help="sweep file with get_sweep(), e.g. experiments/quickstart.py")
    sw.add_argument("--sweep-dir", help="where sweep.db and runs/ live (default: sweeps/<sweep name>)")
    sw.add_argument("--workers", type=int, default=None,
                    help="runs at once (local: default one per CPU core, at most 8, 1 with a GPU; "
                    "ray: the cluster's CPUs; slurm: all)")
    sw.add_argument("--retries", type=int, default=1, help="retry a failed run up to M times (default 1)")
    sw.add_argument("--pack", type=int, default=1, metavar="K",
                    help="local launcher: train up to K runs of one shape (differing only in seed, schedule or "
                    "length) together in one program a step, each bit-for-bit the run alone (default 1; "
                    "docs/performance.md has when it pays)")
    sw.add_argument("--launcher", choices=("local", "ray", "slurm"), default="local",
                    help="local processes (default), Ray tasks, or Slurm jobs via submitit")
    sw.add_argument("--dry-run", action="store_true",
                    help="print the expanded run table (id, variant, context, params, state, tokens, steps, "
                    "FLOPs, budget, estimated wall time) and run nothing; data.path need not exist yet")
    sw.add_argument("--scale", default=None, metavar="SCALE",
                    help="for specs with scales (experiments/papers/*.py): cpu (minutes on a laptop CPU, the "
                    "embedded corpus) or full (the paper's setup, your tokenized data via --set data.path=...)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field in every run (repeatable), e.g. --set data.path=/data/tokens.bin")
    sw.add_argument("--peak-flops", type=float, default=None,
                    help="device peak FLOP/s for the dry run's wall-time estimate (default: 989e12, an H100's "
                    "dense bf16, with --scale full; else 1e11, a 2-core CPU in fp32)")
    sw.add_argument("--mfu", type=float, default=None,
                    help="fraction of the peak a training step reaches, for the estimate (default 0.4 with "
                    "--scale full, else 0.2)")
    sw.add_argument("--devices", type=int, default=None,
                    help="dry run: the most devices to plan memory for (default 8); see --device-memory")
    sw.add_argument("--device-memory", default=None, metavar="SIZE",
                    help="dry run: memory per device, e.g. 80GiB, 80GB or 16e9; adds memory per device and the "
                    "smallest device count and microbatch count each run fits on (docs/memory.md)")
    sw.add_argument("--mesh", default=None, metavar="JSON",
                    help="dry run: the mesh shape to plan on, e.g. '{\"fsdp\": -1}' (default: search every "
                    "data x fsdp x tensor factorisation)")
    sw.add_argument("--json", action="store_true",
                    help="dry run: print the expanded run table as JSON (resolved config fields, FLOPs, memory)")
    sw.add_argument("--no-progress", action="store_true", help="log lines instead of the live display")
    sw.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or auto)")
    sw.add_argument("--slurm-cluster", default=None,
                    help="submitit cluster: slurm (default when sbatch exists), local or debug")
    sw.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                    help="submitit executor parameter (repeatable), e.g. slurm_partition=gpu, timeout_min=120")
    sw.set_defaults(func=_sweep)

    st = sub.add_parser("status", help="show a sweep's runs by status; export them as csv or parquet",
                        description="A table of the runs in SWEEP_DIR/sweep.db by status, with progress (steps "
                        "done / total) and results.")
    st.add_argument("sweep_dir", help="a sweep directory (holds sweep.db)")
    st.add_argument("--export", nargs=2, metavar=("FORMAT", "PATH"),
                    help="write the flat run table: csv PATH or parquet PATH (parquet needs pyarrow)")
    st.set_defaults(func=_status)

    from scaling import cli_analysis

    cli_analysis.add_parsers(sub)
    return p


def main(argv=None) -> int:
    from scaling.xla_env import apply_cpu_defaults

    apply_cpu_defaults()  # before JAX starts a backend (scaling/xla_env.py)
    from scaling.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
