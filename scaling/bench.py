"""Performance harness behind ``scaling bench``: side-by-side timings measured in one process.

``scaling bench kernels`` times the chunked power retention and SSD ops through XLA and through the Pallas
kernels at the same shapes, forward and forward+backward, and reports tokens/s and achieved FLOP/s (the
op's FLOPs from scaling.accounting). On a CPU the Pallas kernels only run in interpret mode, which measures
the interpreter, not the kernel: there the XLA path is timed and the Pallas rows say they need an
accelerator. Every time is the median of ``repeats`` runs after a warm-up (compile) run.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from scaling import accounting, config


def median_time(fn, *args, repeats: int = 5) -> float:
    """Median wall time of ``fn(*args)`` in seconds, after one warm-up call (compile)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info() -> dict:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device": getattr(dev, "device_kind", str(dev)),
            "processor": platform.processor() or platform.machine(), "jax": jax.__version__,
            "date": datetime.date.today().isoformat()}


def _op_cfg(op: str, heads: int, head_dim: int, d_state: int, chunk: int, p: int):
    """A one-layer model config whose mixer has exactly the op's shape (for its FLOP count)."""
    letter = {"power_retention": "R", "ssd": "M"}[op]
    return config.load(None, [f"model.pattern='{letter}'", "model.n_layers=1", f"model.d_model={heads * head_dim}",
                              f"model.retention.n_heads={heads}", f"model.retention.n_kv_heads={heads}",
                              f"model.retention.p={p}", f"model.retention.chunk_size={chunk}",
                              f"model.retention.normalize='{'sum' if p % 2 == 0 else 'rmsnorm'}'",
                              "model.mamba.expand=1", f"model.mamba.head_dim={head_dim}",
                              f"model.mamba.d_state={d_state}", f"model.mamba.chunk_size={chunk}"])


def op_flops_per_token(op: str, context: int, **shape) -> float:
    """Forward FLOPs per token of the op alone: the mixer's state term in the accounting."""
    cfg = _op_cfg(op, **shape)
    return accounting.ACCOUNTING[cfg.model.pattern].flops(cfg.model, context)["state"]


def _op_fn(op: str, backend: str, shape: dict):
    from scaling.ops import power_retention, ssd

    if op == "power_retention":
        return lambda q, k, v, lg, dt, A, B, C: power_retention(
            q, k, v, lg, p=shape["p"], chunk_size=shape["chunk"], backend=backend,
            normalize="sum" if shape["p"] % 2 == 0 else "rmsnorm")
    return lambda q, k, v, lg, dt, A, B, C: ssd(v, dt, A, B, C, chunk_size=shape["chunk"], backend=backend)


def op_inputs(batch, t, heads, head_dim, d_state):
    """Random q, k, v [b, t, h, d], log_g and dt [b, t, h], A [h], B, C [b, t, 1, n] for the mixer ops."""
    ks = jax.random.split(jax.random.key(0), 8)
    q, k, v = (jax.random.normal(ks[i], (batch, t, heads, head_dim)) / head_dim**0.25 for i in range(3))
    log_g = -jax.nn.softplus(jax.random.normal(ks[3], (batch, t, heads)) - 4.0)
    dt = jax.nn.softplus(jax.random.normal(ks[4], (batch, t, heads)) - 3.0)
    A = -jnp.exp(jax.random.normal(ks[5], (heads,)))
    B, C = (jax.random.normal(ks[6 + i], (batch, t, 1, d_state)) for i in range(2))
    return q, k, v, log_g, dt, A, B, C


def bench_kernels(*, contexts=(1024, 4096), batch=1, heads=4, head_dim=64, d_state=64, chunk=64, p=2,
                  repeats=5, ops=("power_retention", "ssd"), progress=None) -> dict:
    """Time XLA and (on an accelerator) Pallas chunked ops side by side. Returns {"machine", "rows"}."""
    on_accel = jax.devices()[0].platform in ("gpu", "tpu")
    shape = {"heads": heads, "head_dim": head_dim, "d_state": d_state, "chunk": chunk, "p": p}
    rows = []
    for t in contexts:
        args = op_inputs(batch, t, heads, head_dim, d_state)
        for op in ops:
            flops = op_flops_per_token(op, t, **shape)
            for backend in ("xla", "pallas"):
                row = {"op": op, "backend": backend, "T": t, "batch": batch, **shape,
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
    return {"machine": machine_info(), "rows": rows}


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


def write_json(result: dict, path) -> None:
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
