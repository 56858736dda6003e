"""The prepared accelerator check (run by benchmarks/accelerator_check.sh): on one GPU, in well under 8 minutes,

- the Pallas chunked kernels (power retention, SSD) against the XLA path, forward and forward+backward, bf16,
  T = 1k, 4k, 16k, 64k (scaling.bench_ops.bench_kernels);
- the memory-efficient (blockwise) attention against the parallel form: time and XLA's memory analysis;
- one train step of each small preset in bf16 (scaling.bench.bench_train: tokens/s, MFU against the datasheet);
- where the packages `retention` (Manifest AI's power retention) and `fla` (flash-linear-attention) import, their
  kernels at the same shapes, the comparison that counts.

Writes OUT/accelerator_check.json and OUT/accelerator_check.md (the tables for docs/kernels.md). Each part is
timed and kept apart: a part that fails is reported and the others still run. On a CPU it runs the XLA rows only
(``--contexts 64 --presets transformer_tiny`` makes a seconds-long smoke run).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

CONTEXTS = (1024, 4096, 16384, 65536)
PRESETS = ("transformer_small", "power_retention_small", "mamba2_small", "hybrid_small", "gla_small",
           "gated_delta_small", "based_small")


def _part(name: str, fn, results: dict, log) -> None:
    t0 = time.time()
    try:
        results[name] = fn()
        log(f"{name}: {time.time() - t0:.0f} s")
    except Exception as e:  # a part that fails is reported; the others still run
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        log(f"{name}: failed after {time.time() - t0:.0f} s: {type(e).__name__}: {e}")


def _external(contexts, heads: int, head_dim: int, repeats: int) -> list[dict]:
    """The `retention` and `fla` packages' kernels where they import (forward+backward, bf16)."""
    rows = []
    try:
        import torch
    except ImportError:
        return [{"package": "torch", "skipped": "not installed: the retention and fla kernels need PyTorch"}]
    for package, name in (("retention", "power_retention"), ("fla.ops.gla", "chunk_gla")):
        try:
            mod = __import__(package, fromlist=[name])
            fn = getattr(mod, name)
        except Exception as e:  # not installed here, or a different API
            rows.append({"package": package, "skipped": f"{type(e).__name__}: {e}"})
            continue
        for t in contexts:
            q, k, v = (torch.randn(1, t, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            args = (q, k, v) if package == "retention" else (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                             torch.zeros_like(q.transpose(1, 2)))
            try:
                fn(*args)[0].float().sum().backward()  # warm-up (compile)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(repeats):
                    fn(*args)[0].float().sum().backward()
                torch.cuda.synchronize()
                rows.append({"package": package, "T": t, "fwd_bwd_ms": 1e3 * (time.perf_counter() - t0) / repeats})
            except Exception as e:
                rows.append({"package": package, "T": t, "error": f"{type(e).__name__}: {e}"})
    return rows


def _tables(results: dict) -> str:
    out = ["## Accelerator check", "", f"machine: `{json.dumps(results.get('machine', {}))}`", ""]
    k = results.get("kernels", {})
    if "rows" in k:
        out += ["| op | backend | T | dtype | fwd ms | fwd+bwd ms | fwd+bwd GFLOP/s |",
                "|---|---|---:|---|---:|---:|---:|"]
        for r in k["rows"]:
            if "skipped" in r:
                out.append(f"| {r['op']} | {r['backend']} | {r['T']} | {r.get('dtype', '')} | {r['skipped']} | | |")
            else:
                out.append(f"| {r['op']} | {r['backend']} | {r['T']} | {r['dtype']} | {r['fwd_ms']:.2f} | "
                           f"{r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_gflops_per_s']:.0f} |")
    a = results.get("attention", {})
    if "rows" in a:
        out += ["", "| attention form | T | fwd+bwd ms | fwd+bwd temp MiB |", "|---|---:|---:|---:|"]
        for r in a["rows"]:
            ms = f"{r['fwd_bwd_ms']:.2f}" if "fwd_bwd_ms" in r else "not run"
            out.append(f"| {r['form']} | {r['T']} | {ms} | {r.get('fwd_bwd_temp_bytes', 0) / 2**20:.0f} |")
    t = results.get("train", {})
    if "rows" in t:
        out += ["", "| preset | tokens/s | MFU |", "|---|---:|---:|"]
        out += [f"| {r['preset']} | {r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% |" for r in t["rows"]]
    ext = results.get("external", [])
    if isinstance(ext, list) and ext:
        out += ["", "| package | T | fwd+bwd ms |", "|---|---:|---:|"]
        for r in ext:
            ms = f"{r['fwd_bwd_ms']:.2f}" if "fwd_bwd_ms" in r else (r.get("skipped") or r.get("error"))
            out.append(f"| {r['package']} | {r.get('T', '')} | {ms} |")
    for name, part in results.items():
        if isinstance(part, dict) and "error" in part:
            out += ["", f"{name} failed: {part['error']}"]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="accelerator_check")
    ap.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from scaling import bench
    from scaling.bench_ops import bench_kernels

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": bench.machine_info()}
    log = lambda s: print(s, flush=True)  # noqa: E731
    _part("kernels", lambda: bench_kernels(contexts=args.contexts, batch=1, heads=4, head_dim=64, chunk=64,
                                           repeats=args.repeats, dtype="bfloat16"), results, log)
    _part("attention", lambda: bench.bench_ops(contexts=args.contexts, ops=("attention",), repeats=args.repeats,
                                               max_gib=16.0, peak={"peak_gflops_per_s": 1.0}), results, log)
    _part("train", lambda: bench.bench_train(presets=args.presets, batch=8, context=1024, repeats=args.repeats,
                                             overrides=["model.dtype='bfloat16'"]), results, log)
    _part("external", lambda: _external(args.contexts, 4, 64, args.repeats), results, log)
    (out / "accelerator_check.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "accelerator_check.md").write_text(_tables(results))
    print(_tables(results))
    return 0 if not any(isinstance(p, dict) and "error" in p for p in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
