"""Session-wide setup: XLA's quick CPU compilation in every test process.

Compiling dominates the fast suite's time on CPU. On a machine without a GPU plugin every process of the run
(xdist workers and the subprocesses tests start, through XLA_FLAGS) compiles at XLA's lowest backend optimisation
level, without the CPU fusion emitters: the same HLO, the same results to fp32 round-off, several times less
compile time (what tests/ops already did per jit as FAST_COMPILE). Measured, CPU seconds before/after on the same
load: tests/ops/test_attention.py 320/92, tests/test_inference.py 113/36, tests/test_accounting.py 78/31,
tests/test_steps.py with tests/test_bench.py 159/45. A test that sets XLA_FLAGS for a subprocess replaces them
unless it appends to them. STATESCALE_TEST_XLA_FAST=0 keeps XLA's defaults. STATESCALE_PEAK_GFLOPS is set for the
sweeps' MFU line (scaling.sweep.utilisation). (A persistent compilation cache shared
by the run's processes was measured too: no gain once compiles are this quick.)
"""

import importlib.util
import os

FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def _has_gpu_plugin() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                                  "jax_rocm60_plugin", "libtpu"))


def pytest_configure(config):
    # sweeps report their MFU against the machine's GEMM peak: a fixed figure here, so that no test measures the
    # peak under the suite's load (tests/sweep/test_utilisation.py measures it into a temporary cache)
    os.environ.setdefault("STATESCALE_PEAK_GFLOPS", "100")
    # before any test module imports jax: XLA reads XLA_FLAGS when its first backend starts
    if os.environ.get("STATESCALE_TEST_XLA_FAST") != "0" and not _has_gpu_plugin():
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {FAST_XLA_FLAGS}".strip()


def pytest_collection_modifyitems(config, items):
    """The tests marked ``long`` first, the rest in their order. In file order the longest tests (the sharded and
    multi-process runs, 25-60 s each on the 2-core machine) come near the end of the list, where one that starts
    last keeps its xdist worker busy while the other has nothing left; first, the short tests even out the two
    workers' ends by work stealing."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: False (long) first
