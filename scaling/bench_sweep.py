"""``scaling bench sweep``: the sweep MFU of a fixed small sweep, trained from scratch in a temporary directory.

Six runs, the quickstart's kind (scaling/sweep/utilisation.py defines the MFU): attention, power retention and
Mamba-2 at d_model 16 and 24, 2 layers, context 128, batch 16, 1e11 training FLOPs each, on the embedded corpus.
The spec is built here from the config defaults (no file of the checkout), so the bench runs from an installed
package. The launcher is the local one with ``workers`` (default: the sweep's own default).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from scaling.bench_util import machine_info

BUDGET = 1e11


def bench_spec() -> dict:
    """The fixed sweep (a dict for scaling.sweep): 3 families x 2 sizes at one budget."""
    return {
        "name": "bench_sweep",
        "base": None,
        "overrides": {"model.n_layers": 2, "train.batch_size": 16, "train.context": 128, "train.lr": 3e-3,
                      "train.warmup_steps": 10, "train.log_every": 10, "train.eval_every": 1000,
                      "train.checkpoint_every": 250, "data.eval_tokens": 16384, "data.packing": False},
        "variants": {
            "attention": {"model.pattern": "A", "model.attention.n_heads": 2, "model.attention.n_kv_heads": 2},
            "retention": {"model.pattern": "R", "model.retention.p": 2, "model.retention.n_heads": 2,
                          "model.retention.n_kv_heads": 2},
            "mamba": {"model.pattern": "M", "model.mamba.d_state": 16, "model.mamba.head_dim": 8,
                      "model.mamba.chunk_size": 32}},
        "sizes": {"d16": {"model.d_model": 16}, "d24": {"model.d_model": 24}},
        "budgets": [BUDGET],
    }


def bench_sweep(*, workers: int | None = None, sweep_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Train :func:`bench_spec` (in ``sweep_dir``, a fresh temporary directory by default) and report its MFU."""
    from scaling.sweep import run_sweep

    with tempfile.TemporaryDirectory(prefix="bench_sweep-") as tmp:
        where = Path(sweep_dir) if sweep_dir is not None else Path(tmp)
        res = run_sweep(bench_spec(), where, workers=workers, progress=progress, log=lambda s: None)
    return {"kind": "sweep", "machine": machine_info(), "runs": res.runs, "trained": res.trained,
            "failed": res.failed_ids, "trained_flops": res.trained_flops, "train_s": res.train_s,
            "wall_s": res.wall_s, "gflops_per_s": res.trained_flops / res.train_s / 1e9 if res.train_s else None,
            "mfu": res.mfu, "peak_gflops_per_s": res.peak_gflops, "cores_used": res.cores_used}


def sweep_table(result: dict) -> str:
    r = result
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    lines = ["| runs | trained | FLOPs | train s | wall s | GFLOP/s | peak GFLOP/s | cores | sweep MFU |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {r['runs']} | {r['trained']} | {r['trained_flops']:.3g} | {r['train_s']:.1f} | {r['wall_s']:.1f} | "
             f"{r['gflops_per_s'] or 0:.1f} | {r['peak_gflops_per_s'] or 0:.0f} | {r['cores_used']} | {mfu} |"]
    if r["failed"]:
        lines.append(f"failed runs: {', '.join(r['failed'])}")
    return "\n".join(lines)
