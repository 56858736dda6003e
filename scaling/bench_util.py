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
import numpy as np

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
