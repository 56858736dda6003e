"""`scaling bench`: the performance harness's command line (scaling/bench.py does the timing)."""

from __future__ import annotations

import sys
from pathlib import Path

# scaling.bench.SUB_BENCHES, without the import
SUB_BENCHES = ("peak", "ops", "train", "decode", "all", "kernels", "sweep")


def _bench(args) -> int:
    from scaling import bench

    def arg(name, default):
        v = getattr(args, name)
        return default if v is None else v

    def err(msg):
        print(f"error: scaling bench {args.what}: {msg}", file=sys.stderr)
        return 2

    try:  # every setting is checked before anything is timed
        for flag, v in (("--sizes", args.sizes), ("--context", args.context), ("--repeats", args.repeats),
                        ("--batch", args.batch), ("--heads", args.heads), ("--head-dim", args.head_dim),
                        ("--d-state", args.d_state), ("--chunk", args.chunk), ("--train-batch", args.train_batch),
                        ("--train-context", args.train_context), ("--tokens", args.tokens)):
            if v is not None:
                bench._check_positive(flag, v)
        if args.what in ("train", "all"):
            bench._check_presets(arg("presets", list(bench.TRAIN_PRESETS)))
        if args.what in ("decode", "all"):
            bench._check_presets(arg("presets", list(bench.DECODE_PRESETS)))
        if not args.max_gib > 0:
            raise ValueError(f"--max-gib = {args.max_gib}: must be > 0")
    except ValueError as e:
        return err(str(e))

    if args.what == "kernels":
        info = bench.machine_info()
        ctx = arg("context", [1024, 4096])
        repeats = arg("repeats", 5)
        print(f"{info['platform']} ({info['device']}), jax {info['jax']}, {info['date']}; batch {args.batch}, "
              f"heads {args.heads}, head_dim {args.head_dim}, d_state {args.d_state}, chunk {args.chunk}, "
              f"p {args.p}, fp32; medians of {repeats} after a warm-up")
        result = bench.bench_kernels(contexts=ctx, batch=args.batch, heads=args.heads,
                                     head_dim=args.head_dim, d_state=args.d_state, chunk=args.chunk, p=args.p,
                                     repeats=repeats, progress=lambda r: print(
                                         f"  {r['op']} {r['backend']} T={r['T']}: fwd {r['fwd_ms']:.1f} ms, "
                                         f"fwd+bwd {r['fwd_bwd_ms']:.1f} ms", flush=True))
        print(bench.kernels_table(result))
        if result["machine"]["platform"] == "cpu":
            print("On this CPU only the XLA path is timed: Pallas timings need a GPU or TPU.")
        if args.json:
            bench.write_json(result, args.json)
            print(f"wrote {args.json}")
        return 0

    progress = not args.no_progress and sys.stderr.isatty()
    if args.what == "sweep":
        from scaling.bench_sweep import bench_sweep, sweep_table

        if args.workers is not None and args.workers < 1:
            return err(f"--workers = {args.workers}: must be >= 1")
        info = bench.machine_info()
        print(f"{info['cpu']} ({info['cpu_count']} cores), jax {info['jax']}, {info['date']}; the fixed 6-run sweep "
              "(scaling/bench_sweep.py) trained from scratch", flush=True)
        result = bench_sweep(workers=args.workers, progress=progress)
        print(sweep_table(result))
        json_path = Path(args.json) if args.json else Path(args.out) / "bench_sweep.json"
        bench.write_json(result, json_path)
        print(f"wrote {json_path}")
        return 0 if not result["failed"] else 1
    peak_kw = {"sizes": arg("sizes", list(bench.PEAK_SIZES)), "repeats": arg("repeats", 5)}
    ops_kw = {"contexts": arg("context", list(bench.OPS_CONTEXTS)), "batch": args.batch, "heads": args.heads,
              "head_dim": args.head_dim, "d_state": args.d_state, "chunk": args.chunk, "p": args.p,
              "repeats": arg("repeats", 3), "max_gib": args.max_gib, "backward": args.backward}
    train_kw = {"presets": arg("presets", list(bench.TRAIN_PRESETS)), "batch": arg("train_batch", 8),
                "context": arg("train_context", 256), "repeats": arg("repeats", 3), "overrides": args.set}
    decode_kw = {"presets": arg("presets", list(bench.DECODE_PRESETS)),
                 "contexts": arg("context", list(bench.DECODE_CONTEXTS)), "batch": args.batch,
                 "tokens": args.tokens, "overrides": args.set}
    out = Path(args.out)
    info = bench.machine_info()
    print(f"{info['cpu']} ({info['cpu_count']} cores, {info['platform']}), jax {info['jax']}, {info['date']}; "
          "fp32; every time a median after a warm-up", flush=True)
    if args.what == "all":
        result = bench.bench_all(peak_kw=peak_kw, ops_kw=ops_kw, train_kw=train_kw, decode_kw=decode_kw,
                                 progress=progress, log=lambda s: print(s + "\n", flush=True))
        print("judge it against the targets: python benchmarks/targets.py "
              f"{args.json or Path(args.out) / 'bench_all.json'}")
    else:
        peak = None
        if args.what == "peak":
            result = bench.bench_peak(progress=progress, **peak_kw)
        else:
            if args.what in ("ops", "train"):  # the denominator of the utilisation, measured in this process
                peak = bench.bench_peak(repeats=3, sizes=peak_kw["sizes"])
            fn = {"ops": bench.bench_ops, "train": bench.bench_train, "decode": bench.bench_decode}[args.what]
            kw = {"ops": ops_kw, "train": train_kw, "decode": decode_kw}[args.what]
            result = fn(progress=progress, **kw, **({"peak": peak} if peak else {}))
        table = {"peak": bench.peak_table, "ops": bench.ops_table, "train": bench.train_table,
                 "decode": bench.decode_table}[args.what]
        print(table(result))
        if peak is not None:
            print(f"\nmeasured GEMM peak in this process: {peak['peak_gflops_per_s']:.1f} GFLOP/s")
    json_path = Path(args.json) if args.json else out / f"bench_{args.what}.json"
    bench.write_json(result, json_path)
    plots = bench.save_plots(result, out)
    print(f"wrote {json_path} and {len(plots)} plot files in {out}/ (bench_*.png, .svg)")
    return 0


def add_parser(sub, epilog: str) -> None:
    b = sub.add_parser("bench", help="performance harness: side-by-side timings measured in one process",
                       description="peak: fp32 GEMM FLOP/s (the denominator of every utilisation) and memory "
                       "bandwidth. ops: chunked vs parallel forms of power retention and SSD, and attention, at "
                       "T = 1k..16k, with achieved FLOP/s and the log-log slope of time vs T. train: tokens/s and "
                       "MFU of the train step per preset. decode: per-token latency and peak memory at 1k, 4k, "
                       "16k of context. all: the four in one process, the targets checked (a few minutes on 2 "
                       "cores). kernels: XLA vs Pallas chunked ops. sweep: the sweep MFU of a fixed 6-run sweep "
                       "trained from scratch. Each writes JSON (machine, JAX version, date) and a plot (PNG + SVG). "
                       "Docs: docs/performance.md.", epilog=epilog)
    b.add_argument("what", choices=list(SUB_BENCHES), help="what to time")
    b.add_argument("--out", default="bench_results", help="directory for the JSON and the plots "
                   "bench_<what>.png/.svg (default bench_results)")
    b.add_argument("--json", help="write the JSON here instead of OUT/bench_<what>.json")
    b.add_argument("--repeats", type=int, help="timed runs after the warm-up, median reported (default: peak 5, "
                   "ops 3, train 3, kernels 5)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--sizes", type=int, nargs="+", help="peak: GEMM sizes n (default 1024 2048 3072)")
    b.add_argument("--context", type=int, nargs="+", help="ops: sequence lengths (default 1k 2k 4k 8k 16k); "
                   "decode: contexts (default 1k 4k 16k); kernels: (default 1k 4k)")
    b.add_argument("--batch", type=int, default=1, help="ops, decode, kernels: batch (default 1)")
    b.add_argument("--heads", type=int, default=4, help="ops, kernels: heads (default 4)")
    b.add_argument("--head-dim", type=int, default=64, help="ops, kernels: head_dim (default 64)")
    b.add_argument("--d-state", type=int, default=64, help="ops, kernels: SSD d_state (default 64)")
    b.add_argument("--chunk", type=int, default=64, help="ops, kernels: chunk size (default 64)")
    b.add_argument("--p", type=int, default=2, choices=[1, 2, 3, 4], help="ops, kernels: retention power")
    b.add_argument("--max-gib", type=float, default=0.5, help="ops: skip parallel forms whose [T, T] scores "
                   "exceed this many GiB (default 0.5)")
    b.add_argument("--backward", action="store_true", help="ops: also time forward+backward")
    b.add_argument("--presets", nargs="+", help="train: presets (default the *_small ones); decode: presets "
                   "(default power_retention_small mamba2_small transformer_small); a name in configs/models/ "
                   "or a config file's path")
    b.add_argument("--train-batch", type=int, help="train: batch size (default 8)")
    b.add_argument("--train-context", type=int, help="train: context (default 256)")
    b.add_argument("--tokens", type=int, default=16, help="decode: timed tokens per context (default 16)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="train, decode: override a config field of every preset")
    b.add_argument("--workers", type=int, help="sweep: local workers (default: the sweep's default, one per core)")
    b.set_defaults(func=_bench)
