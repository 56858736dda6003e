"""Sweep MFU: how much of the machine a sweep's training used.

    sweep MFU = training FLOPs the launcher's runs spent (the accounting's 3 x forward per token, for the steps
    trained in this launch) / (its wall time x the measured fp32 GEMM peak of the cores its workers use)

The peak is ``scaling bench peak``'s (scaling.bench_util.bench_peak: the best rate of square fp32 GEMMs through
XLA on every core), scaled by cores used / cores. It is measured once per machine and JAX version and kept in
``$STATESCALE_CACHE`` (default ``~/.cache/statescale``) as peak-<machine>.json, so a sweep pays a few seconds
once; ``STATESCALE_PEAK_GFLOPS`` gives it instead (a GPU's datasheet rate, or a figure measured elsewhere).
Only the local launcher reports an MFU: Ray and Slurm runs use other machines, whose peak this one cannot measure
(their FLOP/s still print).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from scaling.fields import env_positive

PEAK_ENV, CACHE_ENV = "STATESCALE_PEAK_GFLOPS", "STATESCALE_CACHE"


def _cache_path(machine: dict) -> Path:
    key = {k: machine.get(k) for k in ("platform", "device", "cpu", "cpu_count", "jax", "xla_flags")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "statescale")
    return root / f"peak-{digest}.json"


def machine_peak() -> dict:
    """{"peak_gflops_per_s", "source"} of this machine (all its cores): the environment's, the cached
    measurement, or a fresh ``bench_peak`` (written to the cache atomically)."""
    given = env_positive(PEAK_ENV, "GFLOP/s")
    if given is not None:
        return {"peak_gflops_per_s": given, "source": PEAK_ENV}
    from scaling.bench_util import bench_peak, machine_info

    path = _cache_path(machine_info())
    try:
        cached = json.loads(path.read_text())
        return {"peak_gflops_per_s": float(cached["peak_gflops_per_s"]), "source": str(path)}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    peak = bench_peak(repeats=3)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(peak, f)
        os.replace(f.name, path)
    except OSError:
        pass  # a read-only home: measured again next time
    return {"peak_gflops_per_s": peak["peak_gflops_per_s"], "source": "measured"}


def cores_used(workers: int, cpus: int) -> int:
    """Cores a local sweep keeps busy: one single-threaded worker per core when there are several workers
    (scaling.sweep.backends), else one worker on every core."""
    return min(workers, cpus) if workers > 1 else cpus


def sweep_mfu(flops: float, wall_s: float, peak_gflops: float, used: int, cpus: int) -> float | None:
    """Training FLOPs / (wall x peak x used / cpus); None without time or peak."""
    if not (wall_s > 0 and peak_gflops > 0 and cpus > 0):
        return None
    return flops / (wall_s * peak_gflops * 1e9 * used / cpus)


def summary_line(flops: float, wall_s: float, mfu: float | None, peak_gflops: float | None, used: int | None) -> str:
    """One line for the end of ``scaling sweep``."""
    rate = flops / wall_s / 1e9 if wall_s > 0 else 0.0
    line = f"trained {flops:.3g} FLOPs in {wall_s:.0f} s: {rate:.1f} GFLOP/s"
    if mfu is not None:
        line += f", sweep MFU {100 * mfu:.1f}% of the {peak_gflops:.0f} GFLOP/s fp32 GEMM peak ({used} cores used)"
    return line
