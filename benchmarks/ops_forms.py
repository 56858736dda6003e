"""Chunked vs parallel forms of each mixer on this machine, forward and forward+backward.

    python benchmarks/ops_forms.py [--T 1024 4096 16384] [--json out.json]

Backward is the gradient with respect to every input. Times are medians of several repeats after a warm-up,
measured side by side in one process. The parallel forms are quadratic in T; where their score matrices
would exceed --max-gib they are skipped and marked.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp

from scaling.bench import median_time, op_inputs
from scaling.ops.attention import attention
from scaling.ops.power_retention import power_retention
from scaling.ops.ssd import ssd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--d-state", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--max-gib", type=float, default=2.0, help="skip parallel forms whose [T, T] scores exceed this")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)

    ops = {
        "power_retention p=2": lambda form, q, k, v, lg, dt, A, B, C: power_retention(
            q, k, v, lg, p=2, form=form, chunk_size=a.chunk),
        "ssd (Mamba-2)": lambda form, q, k, v, lg, dt, A, B, C: ssd(v, dt, A, B, C, form=form, chunk_size=a.chunk),
        "attention": lambda form, q, k, v, lg, dt, A, B, C: attention(q, k, v),
    }
    rows = []
    for t in a.T:
        args = op_inputs(a.batch, t, a.heads, a.head_dim, a.d_state)
        score_gib = 4 * a.batch * a.heads * t * t / 2**30
        for name, op in ops.items():
            for form in (("parallel",) if name == "attention" else ("chunked", "parallel")):
                row = {"op": name, "form": form, "T": t}
                if form == "parallel" and score_gib > a.max_gib:
                    row["skipped"] = f"[T, T] scores {score_gib:.1f} GiB > --max-gib {a.max_gib}"
                    rows.append(row)
                    continue
                fwd = jax.jit(lambda *x, op=op, form=form: op(form, *x))
                grad = jax.jit(jax.grad(lambda *x, op=op, form=form: jnp.sum(op(form, *x)), argnums=tuple(range(8))))
                row["fwd_ms"] = 1e3 * median_time(fwd, *args, repeats=3)
                row["fwd_bwd_ms"] = 1e3 * median_time(grad, *args, repeats=3)
                rows.append(row)
                print(json.dumps(row), flush=True)

    print(f"\nbatch {a.batch}, heads {a.heads}, head_dim {a.head_dim}, d_state {a.d_state}, chunk {a.chunk}, fp32, "
          f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, jax {jax.__version__}\n")
    print("| op | T | chunked fwd (ms) | parallel fwd (ms) | chunked / parallel | chunked fwd+bwd (ms) "
          "| parallel fwd+bwd (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name in ops:
        for t in a.T:
            r = {row["form"]: row for row in rows if row["op"] == name and row["T"] == t}
            ch, pa = r.get("chunked", {}), r.get("parallel", {})
            f = lambda row, key: f"{row[key]:.1f}" if key in row else ("skipped" if "skipped" in row else "-")
            ratio = f"{ch['fwd_ms'] / pa['fwd_ms']:.2f}" if "fwd_ms" in ch and "fwd_ms" in pa else "-"
            print(f"| {name} | {t} | {f(ch, 'fwd_ms')} | {f(pa, 'fwd_ms')} | {ratio} | {f(ch, 'fwd_bwd_ms')} | "
                  f"{f(pa, 'fwd_bwd_ms')} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "jax": jax.__version__, "date": time.strftime("%Y-%m-%d")}, fh, indent=2)


if __name__ == "__main__":
    main()
