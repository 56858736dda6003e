"""Performance harness behind ``scaling bench``: side-by-side timings measured in one process.

Sub-benches (each returns a dict with ``machine``, its settings and rows; ``scaling bench`` writes it as JSON
and draws a plot):

- ``peak``: the machine's matmul FLOP/s, a large fp32 GEMM through XLA (the best of a few sizes), and the
  memory bandwidth of a large elementwise pass. The GEMM rate is the denominator of every utilisation figure.
- ``ops``: each mixer op (power retention, Mamba-2 SSD) in its chunked and parallel forms, and causal softmax
  attention, at T = 1k..16k: time, tokens/s, achieved FLOP/s and its fraction of the peak, and the log-log
  slope of time against T. FLOPs are the op's state term in scaling.accounting (never a separate formula).
- ``train``: the real train step of scaling.train (AdamW, clipping) for each model preset: tokens/s and MFU =
  accounting training FLOPs (3 x ``flops_per_token``) x tokens/s / peak.
- ``decode``: per-token latency of ``model.step`` at 1k, 4k and 16k tokens of context, and the decode step's
  peak memory (XLA's memory analysis of the compiled step: arguments + outputs + temporaries - aliased).
- ``kernels``: the chunked ops through XLA and through the Pallas kernels (Pallas rows need a GPU or TPU).

``ops`` and ``kernels`` are in scaling.bench_ops; attention's rows there compare the blockwise form with the
parallel one in forward+backward time and compiled temporary memory.

Every time is the median of ``repeats`` runs after a warm-up (compile) run. Each ratio (chunked / parallel,
16k / 1k decode latency, MFU) is measured side by side in the same process, with the peak measured there too.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from scaling import accounting, bench_util, config
from scaling.bench_ops import (
    OPS,
    OPS_CONTEXTS,
    bench_kernels,
    bench_ops,
    kernels_table,
    op_flops_per_token,
    op_inputs,
    ops_table,
    plot_ops,
)
from scaling.bench_util import (  # noqa: F401 (bench_peak and PEAK_SIZES re-exported)
    PEAK_SIZES,
    _check_positive,
    _Progress,
    _subtitle,
    bench_peak,
    loglog_slope,
    machine_info,
    median_time,
)

PRESET_DIR = config.shipped("configs/models")  # the checkout's, else an installed wheel's copy

SUB_BENCHES = ("peak", "ops", "train", "decode", "all", "kernels", "sweep")

# Defaults sized so that `scaling bench all` takes a few minutes on a 2-core CPU; every one is a flag.
TRAIN_PRESETS = ("transformer_small", "power_retention_small", "mamba2_small", "hybrid_small")
DECODE_PRESETS = ("power_retention_small", "mamba2_small", "transformer_small")
DECODE_CONTEXTS = (1024, 4096, 16384)

# The ops and kernels benches live in scaling.bench_ops, the shared timing pieces in scaling.bench_util; both
# are re-exported here (``scaling.bench`` is the one module the CLI and the tests use).
__all__ = ["OPS", "OPS_CONTEXTS", "bench_kernels", "bench_ops", "kernels_table", "op_flops_per_token", "op_inputs",
           "ops_table", "plot_ops", "_check_positive", "_Progress", "_subtitle", "loglog_slope",
           "machine_info", "median_time"]

def _preset_path(preset: str) -> Path:
    """A preset's config file: a path to a config file (``.py``), or a name in configs/models/ (the checkout's, or
    the copy an installed wheel carries: :func:`scaling.config.shipped`)."""
    return Path(preset) if preset.endswith(".py") else PRESET_DIR / f"{preset}.py"


def _check_presets(presets: Sequence[str]) -> None:
    known = sorted(p.stem for p in PRESET_DIR.glob("*.py"))
    bad = [p for p in presets if not _preset_path(p).is_file()]
    if bad:
        where = (f"accepted: {', '.join(known)}, or a config file's path" if known else
                 f"no presets at {PRESET_DIR} (neither a checkout nor an installed wheel's copy): give config "
                 "files' paths")
        raise ValueError(f"presets: unknown {', '.join(map(repr, bad))}; {where}")


# ---------------------------------------------------------------------------------------------------------
# peak
# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------------


def _preset_cfg(preset: str, overrides: Sequence[str] = ()):
    return config.load(_preset_path(preset), list(overrides))


def bench_train(*, presets: Sequence[str] = TRAIN_PRESETS, batch: int = 8, context: int = 256, repeats: int = 3,
                overrides: Sequence[str] = (), peak: dict | None = None, progress: bool = False) -> dict:
    """Median step time of scaling.train's real train step per preset on synthetic tokens (the same
    parameters every step: a fixed-cost step), tokens/s, achieved FLOP/s (3 x the accounting's forward FLOPs
    per token) and MFU = achieved / measured GEMM peak. ``overrides``: config overrides for every preset."""
    from scaling.train import init_train_state, make_steps

    _check_presets(presets)
    for name, v in (("batch", batch), ("context", context), ("repeats", repeats)):
        _check_positive(name, v)
    cfgs = [_preset_cfg(p, [f"train.batch_size={batch}", f"train.context={context}", *overrides]) for p in presets]
    peak = peak or bench_peak(repeats=3)
    bar = _Progress(len(presets), "train", progress)
    rows = []
    for preset, cfg in zip(presets, cfgs, strict=True):
        graphdef, state, tx, _ = init_train_state(cfg)
        train_step, _ = make_steps(graphdef, tx)
        tokens = jax.random.randint(jax.random.key(0), (batch, context + 1), 0, 256)
        lr = np.float32(cfg.train.lr)
        b = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": jnp.ones((batch, context))}
        dt = median_time(lambda p, o, step=train_step, b=b, lr=lr: step(p, o, b, lr)[2]["loss"], state["params"],
                         state["opt"], repeats=repeats)
        tps = batch * context / dt
        flops_tok = accounting.train_flops_per_token(cfg, context)
        rows.append({"preset": preset, "pattern": cfg.model.pattern, "d_model": cfg.model.d_model,
                     "n_layers": cfg.model.n_layers, "params": accounting.params(cfg)["total"], "batch": batch,
                     "context": context, "step_s": dt, "tokens_per_s": tps, "train_flops_per_token": flops_tok,
                     "gflops_per_s": tps * flops_tok / 1e9,
                     "mfu": tps * flops_tok / 1e9 / peak["peak_gflops_per_s"], "dtype": str(cfg.model.dtype)})
        hw = bench_util.hardware_peak(bench_util.device_kind(), str(cfg.model.dtype))
        if hw:  # on a known accelerator: MFU against its datasheet peak too
            rows[-1] |= {"hardware": hw[0], "hardware_peak_flops": hw[1], "hardware_mfu": tps * flops_tok / hw[1]}
        bar.advance(preset)
    bar.close()
    return {"kind": "train", "machine": machine_info(), "repeats": repeats, "overrides": list(overrides),
            "peak_gflops_per_s": peak["peak_gflops_per_s"], "rows": rows}


# ---------------------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------------------


def _at_position(state, context: int):
    """The decode state with every position counter (the model's and each KV cache's ``pos``) at ``context``.

    The work of one decode step depends on the state's shapes and on the position (which cache slots are
    live), not on the values in it, so a state filled by a short prompt and moved to position ``context``
    is timed like one that read ``context`` real tokens, without the prefill's cost.
    """
    def move(path, leaf):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return jnp.asarray(context, leaf.dtype) if name == "pos" else leaf

    return jax.tree_util.tree_map_with_path(move, state)


def bench_decode(*, presets: Sequence[str] = DECODE_PRESETS, contexts: Sequence[int] = DECODE_CONTEXTS,
                 batch: int = 1, tokens: int = 16, prompt: int = 64, overrides: Sequence[str] = (),
                 progress: bool = False) -> dict:
    """Per-token latency of ``model.step`` (jitted, the state donated) at each context, per preset.

    For each preset and context: a state sized for ``context + prompt + tokens + 2`` tokens (attention's
    cache; recurrent states do not depend on it), filled by a real prefill of ``prompt`` tokens and moved to
    position ``context`` (see _at_position); then 2 warm-up steps and ``tokens`` timed steps, each its own
    latency; the median is reported. Memory: XLA's analysis of the compiled step (arguments + outputs +
    temporaries - donated aliases) and the accounting's state bytes.
    """
    from flax import nnx

    from scaling import models

    _check_presets(presets)
    _check_positive("contexts", list(contexts))
    for name, v in (("batch", batch), ("tokens", tokens), ("prompt", prompt)):
        _check_positive(name, v)
    cfgs = [_preset_cfg(p, overrides) for p in presets]
    bar = _Progress(len(presets) * len(contexts), "decode", progress)
    rows = []
    for preset, cfg in zip(presets, cfgs, strict=True):
        model = models.build(cfg.model)
        graphdef, params = nnx.split(model)

        def prefill(params, toks, state, graphdef=graphdef):
            return nnx.merge(graphdef, params).prefill(toks, state)[1]

        def step(params, tok, state, graphdef=graphdef):
            logits, state = nnx.merge(graphdef, params).step(tok, state)
            return jnp.argmax(logits, -1).astype(jnp.int32), state

        prefill_j = jax.jit(prefill)
        step_j = jax.jit(step, donate_argnums=2)
        prompt_toks = jax.random.randint(jax.random.key(1), (batch, prompt), 0, 256)
        for ctx in sorted(set(contexts)):
            state = nnx.merge(graphdef, params).init_state(batch, ctx + prompt + tokens + 2)
            state = _at_position(prefill_j(params, prompt_toks, state), ctx)
            tok = prompt_toks[:, -1]
            compiled = step_j.lower(params, tok, state).compile()
            mem = compiled.memory_analysis()
            times = []
            for i in range(tokens + 2):
                t0 = time.perf_counter()
                tok, state = step_j(params, tok, state)
                jax.block_until_ready(tok)
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            row = {"preset": preset, "pattern": cfg.model.pattern, "context": ctx, "batch": batch,
                   "latency_ms": 1e3 * statistics.median(times), "latency_min_ms": 1e3 * min(times),
                   "tokens_timed": tokens, "state_bytes": accounting.state_bytes(cfg, ctx)}
            if mem is not None:
                row.update(argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
                           temp_bytes=int(mem.temp_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes))
                row["peak_bytes"] = (row["argument_bytes"] + row["output_bytes"] + row["temp_bytes"]
                                     - row["alias_bytes"])
            rows.append(row)
            bar.advance(f"{preset} {ctx}")
    bar.close()
    ratios = []
    for preset in presets:
        r = sorted((row for row in rows if row["preset"] == preset), key=lambda row: row["context"])
        if len(r) >= 2:
            ratios.append({"preset": preset, "context_lo": r[0]["context"], "context_hi": r[-1]["context"],
                           "latency_ratio": r[-1]["latency_ms"] / r[0]["latency_ms"],
                           "peak_bytes_ratio": (r[-1]["peak_bytes"] / r[0]["peak_bytes"]
                                                if "peak_bytes" in r[0] else None)})
    return {"kind": "decode", "machine": machine_info(), "overrides": list(overrides), "rows": rows,
            "ratios": ratios}


# ---------------------------------------------------------------------------------------------------------
# all: every sub-bench in one process (benchmarks/targets.py judges the result)
# ---------------------------------------------------------------------------------------------------------


def bench_all(*, peak_kw: dict | None = None, ops_kw: dict | None = None, train_kw: dict | None = None,
              decode_kw: dict | None = None, progress: bool = False,
              log: Callable[[str], None] | None = None) -> dict:
    """peak, ops, train and decode in one process (the peak shared by all); benchmarks/targets.py judges it."""
    log = log or (lambda s: None)
    peak = bench_peak(progress=progress, **(peak_kw or {}))
    log(peak_table(peak))
    ops = bench_ops(peak=peak, progress=progress, **(ops_kw or {}))
    log(ops_table(ops))
    train = bench_train(peak=peak, progress=progress, **(train_kw or {}))
    log(train_table(train))
    decode = bench_decode(progress=progress, **(decode_kw or {}))
    log(decode_table(decode))
    return {"kind": "all", "machine": machine_info(), "peak": peak, "ops": ops, "train": train, "decode": decode}


# ---------------------------------------------------------------------------------------------------------
# Tables (markdown) and plots
# ---------------------------------------------------------------------------------------------------------


def peak_table(result: dict) -> str:
    lines = ["| fp32 GEMM n x n x n | ms | GFLOP/s |", "|---|---|---|"]
    lines += [f"| {r['n']} | {r['ms']:.1f} | {r['gflops_per_s']:.1f} |" for r in result["rows"]]
    lines.append(f"\npeak {result['peak_gflops_per_s']:.1f} GFLOP/s; memory bandwidth "
                 f"{result['bandwidth_gb_per_s']:.1f} GB/s ({result['bandwidth_mib']} MiB, read + write)")
    return "\n".join(lines)


def train_table(result: dict) -> str:
    hw = any("hardware_mfu" in r for r in result["rows"])
    lines = ["| preset | params | batch x context | step (s) | tokens/s | GFLOP/s | MFU (measured peak) |"
             + (" MFU (datasheet peak) |" if hw else ""), "|---|---|---|---|---|---|---|" + ("---|" if hw else "")]
    for r in result["rows"]:
        line = (f"| {r['preset']} | {r['params']:,} | {r['batch']} x {r['context']} | {r['step_s']:.3f} | "
                f"{r['tokens_per_s']:,.0f} | {r['gflops_per_s']:.1f} | {100 * r['mfu']:.1f}% |")
        if hw:
            line += (f" {100 * r['hardware_mfu']:.1f}% of {r['hardware']} {r.get('dtype', '')} "
                     f"({r['hardware_peak_flops'] / 1e12:.0f} TFLOP/s) |" if "hardware_mfu" in r else " - |")
        lines.append(line)
    return "\n".join(lines)


def decode_table(result: dict) -> str:
    lines = ["| preset | context | latency (ms/token) | step peak memory (MiB) | state (MiB) |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        mem = f"{r['peak_bytes'] / 2**20:.1f}" if "peak_bytes" in r else "-"
        lines.append(f"| {r['preset']} | {r['context']:,} | {r['latency_ms']:.2f} | {mem} | "
                     f"{r['state_bytes'] / 2**20:.2f} |")
    lines.append("\n| preset | latency hi / lo context | peak memory hi / lo |\n|---|---|---|")
    for r in result["ratios"]:
        mem = "-" if r["peak_bytes_ratio"] is None else f"{r['peak_bytes_ratio']:.2f}"
        lines.append(f"| {r['preset']} ({r['context_hi']:,} / {r['context_lo']:,}) | {r['latency_ratio']:.2f} "
                     f"| {mem} |")
    return "\n".join(lines)


def plot_peak(result: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 4.0), layout="constrained")
    ax = fig.subplots()
    n = [r["n"] for r in result["rows"]]
    ax.plot(n, [r["gflops_per_s"] for r in result["rows"]], "o-", color="#1f77b4", label="fp32 GEMM")
    ax.axhline(result["peak_gflops_per_s"], color="k", ls="--", lw=1,
               label=f"peak {result['peak_gflops_per_s']:.0f} GFLOP/s")
    ax.set(xlabel="matrix size n (n x n x n)", ylabel="GFLOP/s", ylim=(0, None),
           title=f"GEMM peak; memory {result['bandwidth_gb_per_s']:.1f} GB/s")
    ax.legend(loc="lower right")
    fig.suptitle(_subtitle(result), fontsize=8)
    return fig


def plot_train(result: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    ax_m, ax_t = fig.subplots(1, 2)
    names = [r["preset"] for r in result["rows"]]
    x = np.arange(len(names))
    ax_m.bar(x, [100 * r["mfu"] for r in result["rows"]], color="#9467bd")
    ax_m.axhline(40, color="k", ls="--", lw=1, label="40% target")
    ax_m.set(ylabel="MFU (% of measured GEMM peak)", title="train step MFU")
    ax_m.legend()
    ax_t.bar(x, [r["tokens_per_s"] for r in result["rows"]], color="#8c564b")
    ax_t.set(ylabel="tokens/s", title="train step throughput")
    r0 = result["rows"][0] if result["rows"] else {"batch": 0, "context": 0}
    for ax in (ax_m, ax_t):
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.set_xlabel(f"preset (batch {r0['batch']} x context {r0['context']})")
    fig.suptitle(_subtitle(result), fontsize=8)
    return fig


def plot_decode(result: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    ax_l, ax_m = fig.subplots(1, 2)
    for preset in dict.fromkeys(r["preset"] for r in result["rows"]):
        rows = sorted((r for r in result["rows"] if r["preset"] == preset), key=lambda r: r["context"])
        ctx = [r["context"] for r in rows]
        ax_l.plot(ctx, [r["latency_ms"] for r in rows], "o-", label=preset)
        if all("peak_bytes" in r for r in rows):
            ax_m.plot(ctx, [r["peak_bytes"] / 2**20 for r in rows], "o-", label=preset)
    for ax in (ax_l, ax_m):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.legend(fontsize=8)
    ax_l.set(ylabel="ms per token (median)", ylim=(0, None), title="decode latency")
    ax_m.set_yscale("log")
    ax_m.set(ylabel="MiB", title="decode step peak memory (XLA memory analysis)")
    fig.suptitle(_subtitle(result), fontsize=8)
    return fig


PLOTS = {"peak": plot_peak, "ops": plot_ops, "train": plot_train, "decode": plot_decode}


def save_plots(result: dict, out_dir) -> list[Path]:
    """bench_<kind>.png/.svg for the result (for ``all``: one per sub-bench) in ``out_dir``."""
    from scaling.analysis.plots import save_figure

    parts = [result[k] for k in PLOTS if k in result] if result["kind"] == "all" else [result]
    paths = []
    for part in parts:
        if part["kind"] in PLOTS:
            paths += save_figure(PLOTS[part["kind"]](part), out_dir, f"bench_{part['kind']}")
    return paths


def write_json(result: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
