"""``scaling bench ops`` and ``scaling bench kernels``: the mixer ops side by side (see scaling.bench's doc).

- ``ops``: power retention, Mamba-2 SSD, GLA, Gated DeltaNet and Based's linear branch (feature_dim 16), chunked
  against parallel, and causal softmax attention, blockwise
  (flash-style, scaling.ops.attention_blockwise) against parallel, at T = 1k..16k. Attention rows always carry
  forward+backward time and the compiled programs' temporary memory (XLA memory analysis); a parallel form whose
  [T, T] scores exceed ``max_gib`` is compiled (its memory reported) but not run.
- ``kernels``: the chunked ops through XLA and through the Pallas kernels (Pallas rows need a GPU or TPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from scaling import config
from scaling.bench_util import (
    _check_positive,
    _Progress,
    _subtitle,
    bench_peak,
    loglog_slope,
    machine_info,
    median_time,
)
from scaling.mixers import SPECS

OPS = ("power_retention", "ssd", "attention", "gla", "gated_delta", "based")
LETTERS = {"power_retention": "R", "ssd": "M", "attention": "A", "gla": "G", "gated_delta": "D", "based": "B"}
BASED_FEATURE_DIM = 16  # Based's q and k per head (the paper's): the op's own shape, not head_dim
OPS_CONTEXTS = (1024, 2048, 4096, 8192, 16384)

# ---------------------------------------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------------------------------------


def _op_cfg(op: str, heads: int, head_dim: int, d_state: int, chunk: int, p: int):
    """A one-layer model config whose mixer has exactly the op's shape (for its FLOP count)."""
    letter = LETTERS[op]
    return config.load(None, [f"model.pattern='{letter}'", "model.n_layers=1", f"model.d_model={heads * head_dim}",
                              *(f"model.{sec}.n_heads={heads}" for sec in ("gla", "gated_delta", "based")),
                              *(f"model.{sec}.chunk_size={chunk}" for sec in ("gla", "gated_delta", "based")),
                              f"model.based.feature_dim={BASED_FEATURE_DIM}",
                              f"model.retention.n_heads={heads}", f"model.retention.n_kv_heads={heads}",
                              f"model.retention.p={p}", f"model.retention.chunk_size={chunk}",
                              f"model.retention.normalize='{'sum' if p % 2 == 0 else 'rmsnorm'}'",
                              f"model.attention.n_heads={heads}", f"model.attention.n_kv_heads={heads}",
                              "model.mamba.expand=1", f"model.mamba.head_dim={head_dim}",
                              f"model.mamba.d_state={d_state}", f"model.mamba.chunk_size={chunk}"])


def op_flops_per_token(op: str, context: int, **shape) -> float:
    """Forward FLOPs per token of the op alone: the mixer's state term in the accounting."""
    cfg = _op_cfg(op, **shape)
    if op == "based":  # the linear branch alone: the layer's window attention is another op
        from scaling.mixers.based import linear_flops

        return linear_flops(cfg.model, context)
    return SPECS[cfg.model.pattern].flops(cfg.model, context)["state"]


def _op_fn(op: str, backend: str, shape: dict, form: str = "chunked"):
    from scaling.models.kernels import power_retention, ssd
    from scaling.ops import attention
    from scaling.ops.based import based
    from scaling.ops.gated_delta import gated_delta_rule
    from scaling.ops.gla import gla

    c = shape["chunk"]
    if op == "gla":  # a gate per key channel: log_g broadcast over the channels
        return lambda q, k, v, lg, dt, A, B, C: gla(q, k, v, jnp.broadcast_to(lg[..., None], q.shape), form=form,
                                                    chunk_size=c)
    if op == "gated_delta":  # the layer's L2-normalised q and k; write strengths beta = exp(log_g) in (0, 1)
        unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        return lambda q, k, v, lg, dt, A, B, C: gated_delta_rule(unit(q), unit(k), v, jnp.exp(lg), lg, form=form,
                                                                 chunk_size=c)
    if op == "based":  # q and k at the layer's feature_dim
        f = BASED_FEATURE_DIM
        return lambda q, k, v, lg, dt, A, B, C: based(q[..., :f], k[..., :f], v, form=form, chunk_size=c)

    if op == "power_retention":
        return lambda q, k, v, lg, dt, A, B, C: power_retention(
            q, k, v, lg, p=shape["p"], chunk_size=shape["chunk"], backend=backend, form=form,
            normalize="sum" if shape["p"] % 2 == 0 else "rmsnorm")
    if op == "ssd":
        return lambda q, k, v, lg, dt, A, B, C: ssd(v, dt, A, B, C, chunk_size=shape["chunk"], backend=backend,
                                                    form=form)
    return lambda q, k, v, lg, dt, A, B, C: attention(q, k, v, form=form, backend="xla", block_q=shape["block"],
                                                      block_k=shape["block"])


def op_inputs(batch, t, heads, head_dim, d_state):
    """Random q, k, v [b, t, h, d], log_g and dt [b, t, h], A [h], B, C [b, t, 1, n] for the mixer ops."""
    ks = jax.random.split(jax.random.key(0), 8)
    q, k, v = (jax.random.normal(ks[i], (batch, t, heads, head_dim)) / head_dim**0.25 for i in range(3))
    log_g = -jax.nn.softplus(jax.random.normal(ks[3], (batch, t, heads)) - 4.0)
    dt = jax.nn.softplus(jax.random.normal(ks[4], (batch, t, heads)) - 3.0)
    A = -jnp.exp(jax.random.normal(ks[5], (heads,)))
    B, C = (jax.random.normal(ks[6 + i], (batch, t, 1, d_state)) for i in range(2))
    return q, k, v, log_g, dt, A, B, C


def _op_forms(op: str) -> tuple[str, ...]:
    return ("blockwise", "parallel") if op == "attention" else ("chunked", "parallel")


def compiled_memory(jitted, *args) -> dict:
    """XLA's memory analysis of ``jitted`` compiled for ``args`` (nothing is run): temporaries and the peak,
    arguments + outputs + temporaries - aliased, in bytes ({} where the backend reports none)."""
    mem = jitted.lower(*args).compile().memory_analysis()
    if mem is None:
        return {}
    out = {"argument_bytes": int(mem.argument_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
           "temp_bytes": int(mem.temp_size_in_bytes), "alias_bytes": int(mem.alias_size_in_bytes)}
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def _attention_row(row, fn, args, run: bool, repeats: int) -> None:
    """Attention's forward and forward+backward (grad w.r.t. q, k, v): memory from compilation, times if run."""
    fwd = jax.jit(fn)
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=(0, 1, 2)))
    for name, f in (("fwd", fwd), ("fwd_bwd", grad)):
        row.update({f"{name}_{k}": v for k, v in compiled_memory(f, *args).items()})
        if run:
            row[f"{name}_ms"] = 1e3 * median_time(f, *args, repeats=repeats)


def attention_summary(rows) -> list[dict]:
    """Per T: blockwise against parallel forward+backward time and temporary memory (parallel / blockwise)."""
    out = []
    for t in sorted({r["T"] for r in rows if r["op"] == "attention"}):
        by = {r["form"]: r for r in rows if r["op"] == "attention" and r["T"] == t}
        b, p = by.get("blockwise", {}), by.get("parallel", {})
        if "fwd_bwd_temp_bytes" not in b or "fwd_bwd_temp_bytes" not in p:
            continue
        out.append({"T": t, "parallel_run": "fwd_bwd_ms" in p,
                    "temp_parallel_over_blockwise": p["fwd_bwd_temp_bytes"] / max(b["fwd_bwd_temp_bytes"], 1),
                    "time_parallel_over_blockwise": (p["fwd_bwd_ms"] / b["fwd_bwd_ms"]
                                                     if "fwd_bwd_ms" in p and "fwd_bwd_ms" in b else None)})
    return out


def bench_ops(*, contexts: Sequence[int] = OPS_CONTEXTS, batch: int = 1, heads: int = 4, head_dim: int = 64,
              d_state: int = 64, chunk: int = 64, p: int = 2, repeats: int = 3, max_gib: float = 0.5,
              attention_block: int = 512,
              backward: bool = False, ops: Sequence[str] = OPS, peak: dict | None = None,
              progress: bool = False) -> dict:
    """Chunked against parallel forms of each mixer op, and attention, at each context (see module doc).

    A parallel form is not run where its [T, T] score matrix, 4 * batch * heads * T^2 bytes (GLA's: times
    head_dim, a decay per key channel), would exceed ``max_gib`` GiB (attention's is still compiled, for its
    memory). Attention rows (blockwise with ``attention_block``-token blocks, and parallel) always carry
    forward+backward times and XLA's memory analysis of both compiled programs (``fwd_temp_bytes``,
    ``fwd_bwd_temp_bytes``, ``*_peak_bytes``).
    ``peak``: a ``bench_peak`` result for the utilisation column (measured
    here when None). ``backward`` adds forward+backward timings (gradient w.r.t. every input; 3x FLOPs).
    """
    _check_positive("contexts", list(contexts))
    for name, v in (("batch", batch), ("heads", heads), ("head_dim", head_dim), ("d_state", d_state),
                    ("chunk", chunk), ("repeats", repeats)):
        _check_positive(name, v)
    if p not in (1, 2, 3, 4):
        raise ValueError(f"p = {p!r}: must be one of 1, 2, 3, 4")
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ValueError(f"ops: unknown {bad or ops}; accepted: {', '.join(OPS)}")
    if not max_gib > 0:
        raise ValueError(f"max_gib = {max_gib!r}: must be > 0")
    if peak is None:
        peak = bench_peak(repeats=3)
    peak_gflops = peak["peak_gflops_per_s"]
    _check_positive("attention_block", attention_block)
    shape = {"heads": heads, "head_dim": head_dim, "d_state": d_state, "chunk": chunk, "p": p}
    todo = [(t, op, form) for t in contexts for op in ops for form in _op_forms(op)]
    bar = _Progress(len(todo), "ops", progress)
    rows = []
    for t in sorted(set(contexts)):
        args = op_inputs(batch, t, heads, head_dim, d_state)
        for op in ops:
            flops = op_flops_per_token(op, t, **shape) * batch * t
            for form in _op_forms(op):
                row = {"op": op, "form": form, "T": t, "batch": batch, **shape, "flops": flops}
                if op == "attention":
                    row["block"] = attention_block
                # GLA's parallel form keeps a [T, T] decay per key channel: head_dim times the scores
                score_gib = 4 * batch * heads * t * t * (head_dim if op == "gla" else 1) / 2**30
                fn = _op_fn(op, "xla", {**shape, "block": attention_block}, form)
                too_big = form == "parallel" and score_gib > max_gib
                if too_big:
                    what = "[T, T, head_dim] decays" if op == "gla" else "[T, T] scores"
                    row["skipped"] = f"{what} {score_gib:.2f} GiB > max_gib {max_gib}" + (
                        ": not run, memory from compilation alone" if op == "attention" else "")
                if op == "attention":
                    _attention_row(row, fn, args, not too_big, repeats)
                if not too_big:
                    dt_s = median_time(jax.jit(fn), *args, repeats=repeats)
                    row.update(fwd_ms=1e3 * dt_s, tokens_per_s=batch * t / dt_s, gflops_per_s=flops / dt_s / 1e9,
                               pct_peak=100 * flops / dt_s / 1e9 / peak_gflops)
                    if backward and op != "attention":
                        grad = jax.jit(jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a)), argnums=tuple(range(8))))
                        dt_b = median_time(grad, *args, repeats=repeats)
                        row.update(fwd_bwd_ms=1e3 * dt_b, fwd_bwd_gflops_per_s=3 * flops / dt_b / 1e9)
                rows.append(row)
                bar.advance(f"{op} {form} T={t}")
    bar.close()
    slopes = {}
    for op in ops:
        for form in _op_forms(op):
            pts = [(r["T"], r["fwd_ms"]) for r in rows if r["op"] == op and r["form"] == form and "fwd_ms" in r]
            if len({x for x, _ in pts}) >= 2:
                slopes[f"{op}/{form}"] = {"slope": loglog_slope(*zip(*pts, strict=True)),
                                          "T_min": min(x for x, _ in pts), "T_max": max(x for x, _ in pts)}
    ratios = []
    for t in sorted(set(contexts)):
        for op in ops:
            r = {row["form"]: row for row in rows if row["op"] == op and row["T"] == t}
            if "fwd_ms" in r.get("chunked", {}) and "fwd_ms" in r.get("parallel", {}):
                ratios.append({"op": op, "T": t, "chunked_over_parallel": r["chunked"]["fwd_ms"] /
                               r["parallel"]["fwd_ms"]})
    return {"kind": "ops", "machine": machine_info(), "repeats": repeats, "max_gib": max_gib, "backward": backward,
            "peak_gflops_per_s": peak_gflops, "rows": rows, "slopes": slopes, "ratios": ratios,
            "attention": attention_summary(rows)}


# ---------------------------------------------------------------------------------------------------------
# kernels (XLA against Pallas)
# ---------------------------------------------------------------------------------------------------------


def bench_kernels(*, contexts=(1024, 4096), batch=1, heads=4, head_dim=64, d_state=64, chunk=64, p=2,
                  repeats=5, ops=("power_retention", "ssd"), dtype: str = "float32", progress=None) -> dict:
    """Time XLA and (on an accelerator) Pallas chunked ops side by side. Returns {"machine", "rows"}.
    ``dtype``: of q, k, v, B and C (the gates and dt stay float32, as the models keep them)."""
    on_accel = jax.devices()[0].platform in ("gpu", "tpu")
    shape = {"heads": heads, "head_dim": head_dim, "d_state": d_state, "chunk": chunk, "p": p}
    rows = []
    for t in contexts:
        args = list(op_inputs(batch, t, heads, head_dim, d_state))
        for i in (0, 1, 2, 6, 7):
            args[i] = args[i].astype(dtype)
        for op in ops:
            flops = op_flops_per_token(op, t, **shape)
            for backend in ("xla", "pallas"):
                row = {"op": op, "backend": backend, "T": t, "batch": batch, **shape, "dtype": dtype,
                       "fwd_flops_per_token": flops}
                if backend == "pallas" and not on_accel:
                    row["skipped"] = "Pallas timings need a GPU or TPU (on CPU the kernels run in interpret mode)"
                    rows.append(row)
                    continue
                fn = _op_fn(op, backend, shape)
                fwd = jax.jit(fn)
                grad = jax.jit(jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a)), argnums=tuple(range(8))))
                for name, f, mult in (("fwd", fwd, 1.0), ("fwd_bwd", grad, 3.0)):
                    dt_s = median_time(f, *args, repeats=repeats)
                    row[f"{name}_ms"] = 1e3 * dt_s
                    row[f"{name}_tokens_per_s"] = batch * t / dt_s
                    row[f"{name}_gflops_per_s"] = mult * flops * batch * t / dt_s / 1e9
                rows.append(row)
                if progress:
                    progress(row)
    return {"kind": "kernels", "machine": machine_info(), "rows": rows}


# ---------------------------------------------------------------------------------------------------------
# Tables (markdown) and plots
# ---------------------------------------------------------------------------------------------------------


def kernels_table(result: dict) -> str:
    lines = ["| op | backend | T | fwd ms | fwd tok/s | fwd GFLOP/s | fwd+bwd ms | fwd+bwd tok/s | fwd+bwd GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['op']} | {r['backend']} | {r['T']} | {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['op']} | {r['backend']} | {r['T']} | {r['fwd_ms']:.1f} | {r['fwd_tokens_per_s']:,.0f} "
                     f"| {r['fwd_gflops_per_s']:.1f} | {r['fwd_bwd_ms']:.1f} | {r['fwd_bwd_tokens_per_s']:,.0f} "
                     f"| {r['fwd_bwd_gflops_per_s']:.1f} |")
    return "\n".join(lines)



def ops_table(result: dict) -> str:
    bwd = result.get("backward")
    head = "| op | form | T | fwd ms | tokens/s | GFLOP/s | % of peak |" + (" fwd+bwd ms |" if bwd else "")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['op']} | {r['form']} | {r['T']} | skipped: {r['skipped']} | | | |"
                         + (" |" if bwd else ""))
            continue
        lines.append(f"| {r['op']} | {r['form']} | {r['T']} | {r['fwd_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['gflops_per_s']:.1f} | {r['pct_peak']:.1f} |" + (f" {r['fwd_bwd_ms']:.1f} |" if bwd else ""))
    lines.append("\n| op / form | log-log slope of time vs T | T range |\n|---|---|---|")
    lines += [f"| {k} | {v['slope']:.2f} | {v['T_min']}..{v['T_max']} |" for k, v in result["slopes"].items()]
    if any(r["op"] == "attention" for r in result["rows"]):
        lines += ["", attention_table(result)]
    return "\n".join(lines)


def attention_table(result: dict) -> str:
    """Attention, blockwise against parallel: forward+backward time and XLA temporary memory at each T."""
    def ms(r, k):
        return f"{r[k]:.1f}" if k in r else "not run"

    def mib(r, k):
        return f"{r[k] / 2**20:,.1f}" if k in r else "-"

    lines = ["| attention form | T | fwd ms | fwd+bwd ms | fwd temp MiB | fwd+bwd temp MiB | fwd+bwd peak MiB |",
             "|---" * 7 + "|"]
    for r in result["rows"]:
        if r["op"] == "attention":
            lines.append(f"| {r['form']} | {r['T']} | {ms(r, 'fwd_ms')} | {ms(r, 'fwd_bwd_ms')} | "
                         f"{mib(r, 'fwd_temp_bytes')} | {mib(r, 'fwd_bwd_temp_bytes')} | "
                         f"{mib(r, 'fwd_bwd_peak_bytes')} |")
    lines.append("\n| T | fwd+bwd temp memory parallel / blockwise | fwd+bwd time parallel / blockwise |")
    lines.append("|---|---|---|")
    for a in result.get("attention", []):
        ratio = a["time_parallel_over_blockwise"]
        tr = "parallel not run" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| {a['T']} | {a['temp_parallel_over_blockwise']:.1f} | {tr} |")
    return "\n".join(lines)



_OP_COLOR = {"power_retention": "#d62728", "ssd": "#2ca02c", "attention": "#1f77b4", "gla": "#ff7f0e",
             "gated_delta": "#8c564b", "based": "#e377c2"}  # as the analysis' family colours


def plot_ops(result: dict):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    ax_t, ax_f = fig.subplots(1, 2)
    for key in sorted({(r["op"], r["form"]) for r in result["rows"]}):
        pts = sorted((r["T"], r["fwd_ms"], r["gflops_per_s"]) for r in result["rows"]
                     if (r["op"], r["form"]) == key and "fwd_ms" in r)
        if not pts:
            continue
        T, ms, gf = zip(*pts, strict=True)
        slope = result["slopes"].get(f"{key[0]}/{key[1]}")
        label = f"{key[0]} {key[1]}" + (f" (slope {slope['slope']:.2f})" if slope else "")
        style = {"color": _OP_COLOR[key[0]], "ls": "-" if key[1] == "chunked" else "--", "marker": "o"}
        ax_t.plot(T, ms, label=label, **style)
        ax_f.plot(T, gf, label=f"{key[0]} {key[1]}", **style)
    for ax in (ax_t, ax_f):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length T (tokens)")
    ax_t.set_yscale("log")
    ax_t.set(ylabel="forward time (ms)", title="time vs T (log-log)")
    ax_t.legend(fontsize=7)
    ax_f.axhline(result["peak_gflops_per_s"], color="k", ls=":", lw=1, label="GEMM peak")
    ax_f.axhline(result["peak_gflops_per_s"] / 2, color="grey", ls=":", lw=1, label="50% of peak")
    ax_f.set(ylabel="achieved GFLOP/s (accounting FLOPs)", ylim=(0, None), title="achieved FLOP/s")
    ax_f.legend(fontsize=7)
    fig.suptitle(_subtitle(result), fontsize=8)
    return fig


