"""Session-wide setup: XLA's quick CPU compilation, and one persistent XLA compilation cache for the test run.

Compiling dominates the fast suite's time on CPU. On a machine without a GPU plugin every process of the run
(xdist workers and the subprocesses tests start, through XLA_FLAGS) compiles at XLA's lowest backend optimisation
level, without the CPU fusion emitters: the same HLO, the same results to fp32 round-off, several times less
compile time (what tests/ops already did per jit as FAST_COMPILE; measured on tests/test_steps.py and
tests/test_bench.py: 159 s of CPU down to 45 s). A test process that sets XLA_FLAGS itself replaces them (the
mesh tests' subprocesses). STATESCALE_TEST_XLA_FAST=0 keeps XLA's defaults.

The cache: the same program is often compiled more than once in a run: by both xdist workers, by the
subprocesses tests start (the CLI, sweep workers: the tiny sweep's train step) and by a new jit of an identical
function. The run makes one cache folder (in the controller, before the workers start), hands it to every process
through JAX_COMPILATION_CACHE_DIR and removes it at the end: each run starts empty, nothing carries over. A
JAX_COMPILATION_CACHE_DIR already set is used as it is (and kept); STATESCALE_TEST_JAX_CACHE=0 turns the cache off.
The size limit (4 GiB) makes JAX lock the folder around each read and write, so no process reads half an entry;
without the filelock package there is no cache.
"""

import os
import shutil
import sys
import tempfile

_CREATED = []


FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def _has_gpu_plugin() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                                  "jax_rocm60_plugin", "libtpu"))


def pytest_configure(config):
    if os.environ.get("STATESCALE_TEST_XLA_FAST") != "0" and not _has_gpu_plugin():
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_backend_optimization_level" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {FAST_XLA_FLAGS}".strip()
    if os.environ.get("STATESCALE_TEST_JAX_CACHE") == "0":
        return
    try:  # with a size limit JAX locks the folder around each read and write (no half-written entry is read)
        import filelock  # noqa: F401
    except ImportError:
        return
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the controller (or a run without xdist): make the folder
        path = tempfile.mkdtemp(prefix="statescale-test-xla-cache-")
        _CREATED.append(path)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    # cache what took a quarter of a second or more to compile (JAX's default: 1 s)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.25")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
    if "jax" in sys.modules:  # imported before this hook ran: its config read the environment already
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
        jax.config.update("jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))


def pytest_unconfigure(config):
    for path in _CREATED:
        shutil.rmtree(path, ignore_errors=True)
