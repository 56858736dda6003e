"""Shared pieces of ``scaling bench``: timing, machine description, progress bar, slope, argument checks."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

PEAK_SIZES = (1024, 2048, 3072)

# ---------------------------------------------------------------------------------------------------------
# Timing, machine, progress
# ---------------------------------------------------------------------------------------------------------


def median_time(fn, *args, repeats: int = 5) -> float:
    """Median wall time of ``fn(*args)`` in seconds, after one warm-up call (compile)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Machine, JAX version and date for every result (the numbers mean nothing without them)."""
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device": getattr(dev, "device_kind", str(dev)),
            "processor": platform.processor() or platform.machine(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "date": datetime.date.today().isoformat(),
            "time_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


# Datasheet dense peak FLOP/s per chip (no sparsity), by compute dtype, for the MFU that papers quote. Sources: NVIDIA
# H100 Tensor Core GPU datasheet (SXM: 989.4 TF bf16, 67 TF fp32; PCIe: 756 / 51), H200 datasheet (as H100 SXM),
# A100 datasheet (312 TF bf16, 19.5 TF fp32), Google Cloud TPU system architecture pages (bf16 per chip: v4 275,
# v5e 197, v5p 459, v6e 918). fp32 on NVIDIA is the non-tensor-core rate (TF32 is not fp32); TPUs publish no fp32
# matmul rate (None). Matched in order against jax's device_kind, lower case.
HARDWARE_PEAKS = (  # (device_kind substring, name, {dtype: FLOP/s})
    ("h100 pcie", "H100 PCIe", {"bfloat16": 756e12, "float32": 51e12}),
    ("h100", "H100 SXM", {"bfloat16": 989.4e12, "float32": 67e12}),
    ("h200", "H200", {"bfloat16": 989.4e12, "float32": 67e12}),
    ("a100", "A100", {"bfloat16": 312e12, "float32": 19.5e12}),
    ("tpu v4", "TPU v4", {"bfloat16": 275e12, "float32": None}),
    ("tpu v5 lite", "TPU v5e", {"bfloat16": 197e12, "float32": None}),
    ("tpu v5e", "TPU v5e", {"bfloat16": 197e12, "float32": None}),
    ("tpu v5", "TPU v5p", {"bfloat16": 459e12, "float32": None}),
    ("tpu v6 lite", "TPU v6e", {"bfloat16": 918e12, "float32": None}),
)


def hardware_peak(device_kind: str, dtype: str) -> tuple[str, float] | None:
    """(name, datasheet peak FLOP/s) of a device for ``dtype`` ("bfloat16" | "float32"), or None when the table does
    not know the device (a CPU) or has no figure for that dtype."""
    kind = str(device_kind).lower()
    for key, name, peaks in HARDWARE_PEAKS:
        if key in kind:
            peak = peaks.get(str(dtype))
            return (name, peak) if peak else None
    return None


def device_kind() -> str:
    return getattr(jax.devices()[0], "device_kind", jax.devices()[0].platform)


class _Progress:
    """A rich progress bar on stderr (or nothing); ``advance(label)`` after each measurement."""

    def __init__(self, total: int, title: str, enabled: bool):
        self._bar = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(title, total=total)
            self._title = title

    def advance(self, label: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{self._title}: {label}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): 1 for linear growth, 2 for quadratic."""
    x, y = np.log(np.asarray(xs, np.float64)), np.log(np.asarray(ys, np.float64))
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"loglog_slope: need at least two distinct x values, got {list(xs)}")
    return float(np.polyfit(x, y, 1)[0])


def _check_positive(name: str, values) -> None:
    for v in values if isinstance(values, list | tuple) else (values,):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} = {v!r}: must be an integer >= 1")


def _subtitle(result: dict) -> str:
    m = result["machine"]
    return f"{m['cpu']} ({m['cpu_count']} cores, {m['platform']}), jax {m['jax']}, {m['date']}"


def bench_peak(*, sizes: Sequence[int] = PEAK_SIZES, repeats: int = 5, bandwidth_mib: int = 256,
               progress: bool = False) -> dict:
    """Square fp32 GEMMs (2 n^3 FLOPs each) through XLA; the peak is the best rate over the sizes.

    Also the memory bandwidth of ``y = 2 x`` over a ``bandwidth_mib`` MiB array (bytes read + written / time),
    the other roofline for ops whose features and states stream through memory.
    """
    _check_positive("sizes", list(sizes))
    _check_positive("repeats", repeats)
    _check_positive("bandwidth_mib", bandwidth_mib)
    bar = _Progress(len(sizes) + 1, "peak", progress)
    rows = []
    matmul = jax.jit(lambda a, b: a @ b)
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        t = median_time(matmul, a, b, repeats=repeats)
        rows.append({"n": n, "ms": 1e3 * t, "gflops_per_s": 2.0 * n**3 / t / 1e9})
        bar.advance(f"GEMM {n}")
    x = jnp.ones((bandwidth_mib * 2**20 // 4,), jnp.float32)
    t = median_time(jax.jit(lambda x: 2.0 * x), x, repeats=repeats)
    bar.advance("bandwidth")
    bar.close()
    return {"kind": "peak", "machine": machine_info(), "repeats": repeats, "rows": rows,
            "peak_gflops_per_s": max(r["gflops_per_s"] for r in rows),
            "bandwidth_gb_per_s": 2 * x.size * 4 / t / 1e9, "bandwidth_mib": bandwidth_mib}
