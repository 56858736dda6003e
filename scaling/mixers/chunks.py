"""The chunk size each chunked mixer trains fastest at, per backend: the one place the presets take it from; and
the form and block of softmax attention's ``form="auto"`` (:func:`attention_block`).

The chunked forms are exact for any chunk (tests/ops hold each to its reference at several), so the chunk is a
speed setting, and its best value depends on the backend and the shape. :data:`FASTEST` holds what
``benchmarks/chunk_sizes.py`` measured: scaling.train's real train step at chunks 32, 64 and 128, side by side in
one process, at each mixer's small preset (batch 8 x context 256) and at quickstart models (d_model 16 and 32,
2 layers, batch 16 x context 128). The rule: the fastest at the preset; where the preset's rounds overlap, the
quickstart shapes decide; where those tie too, the specs' default (64) stays. The numbers are in
docs/performance.md ("Chunk sizes").

Backends not measured yet (GPU, TPU: no machine was at hand) take the specs' default. A preset reads its chunk
with :func:`fastest_chunk` when it is loaded, so the value lands in the run's config.json and its run id: a run
built on one backend and resumed on another keeps the chunk it started with. Set ``chunk_size`` explicitly to pin
it, or ``STATESCALE_BACKEND`` (cpu, gpu, tpu) to choose for another backend than this machine's.

Finding the backend initialises nothing: JAX's backend must not start before ``jax.distributed.initialize`` and
the XLA flags are read once, at that start. So :func:`backend` reads ``JAX_PLATFORMS`` and looks for the installed
accelerator plugins instead of asking JAX.
"""

from __future__ import annotations

import importlib.util
import os

from scaling.fields import ConfigError

DEFAULT_CHUNK = 64  # the specs' default (scaling/mixers/*.py defaults())

# backend -> mixer section -> chunk. Measured on CPU (2-core AMD EPYC, fp32, jax 0.10.2, 2026-12-02); see the module
# docstring for the rule and docs/performance.md for the table
FASTEST: dict[str, dict[str, int]] = {
    "cpu": {
        "retention": 128,  # preset 8.62 s against 8.96 s at 64 (rounds apart), 10.89 s at 32
        "mamba": 32,  # preset tie (4.78 / 4.86 s); quickstart d32 58.9 ms against 72.4 at 64
        "gla": 32,  # preset 4.03 s against 4.15 s at 64 (rounds apart)
        "gated_delta": 32,  # preset 5.34 s against 5.74 s at 64; quickstart d32 60.1 ms against 110.8
        "based": 64,  # a tie at every shape (4.82 / 4.76 / 4.70 s at the preset, rounds overlapping)
    },
}
BACKENDS = ("cpu", "gpu", "tpu")
_PLUGINS = (("libtpu", "tpu"), ("jax_cuda13_plugin", "gpu"), ("jax_cuda12_plugin", "gpu"),
            ("jax_plugins.xla_cuda13", "gpu"), ("jax_plugins.xla_cuda12", "gpu"), ("jax_plugins.xla_rocm", "gpu"))
PLATFORM_NAMES = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a dotted name whose parent package is missing
        return False


def backend() -> str:
    """cpu, gpu or tpu: ``STATESCALE_BACKEND`` if set, else the first of ``JAX_PLATFORMS``, else the first
    accelerator plugin installed, else cpu. Starts no JAX backend."""
    chosen = os.environ.get("STATESCALE_BACKEND", "").strip().lower()
    if chosen:
        if chosen not in BACKENDS:
            raise ConfigError(f"STATESCALE_BACKEND={chosen!r}: must be one of {', '.join(BACKENDS)}")
        return chosen
    platforms = [p.strip().lower() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms and platforms[0] in PLATFORM_NAMES:
        return PLATFORM_NAMES[platforms[0]]
    return next((name for module, name in _PLUGINS if _installed(module)), "cpu")


# Softmax attention's blockwise form (scaling.ops.attention_blockwise), per backend: form="auto" runs it from
# ``min_t`` tokens on, in blocks of ``block(T, head_dim)``; below, the parallel form. Measured on CPU by
# benchmarks/attention_blocks.py (the real train step, one core, blocks 16-512 interleaved; docs/performance.md
# "Attention: blockwise at short context"): at head dims 8 and 16 (the quickstart's d16 and d32) 32-token blocks
# were fastest at every context from 64 to 1,024 tokens (1.16x over the parallel form at 64, 1.44-1.64x at 128,
# 6.6-9.9x at 1,024, where 512-token blocks gave 2.5x less); at head dim 64 (transformer_small) 32 was fastest
# at 128 and 256 tokens (1.05x, 1.16x) and 128 at 1,024 (2.26x against 1.97x at 32 and 1.82x at 512). Backends
# not measured keep the first rule: blockwise from 1,024 tokens (2x faster forward+backward there on CPU) in
# 512-token blocks.
ATTENTION_BLOCK = 512  # the blockwise form's block where none is measured or asked for
ATTENTION_DEFAULT = {"min_t": 1024, "block": lambda t, head_dim: ATTENTION_BLOCK}
ATTENTION: dict[str, dict] = {
    "cpu": {"min_t": 64, "block": lambda t, head_dim: 32 if head_dim <= 32 else min(128, max(32, t // 8))},
}


def attention_block(t: int, head_dim: int, backend_name: str | None = None) -> int | None:
    """The block (tokens) of the blockwise form that softmax attention's ``form="auto"`` runs ``t`` tokens in at
    this head dim on ``backend_name`` (default: this machine's, :func:`backend`), or None where it runs the
    parallel form (fewer tokens than the backend's ``min_t``)."""
    rule = ATTENTION.get(backend_name or backend(), ATTENTION_DEFAULT)
    return None if t < rule["min_t"] else rule["block"](t, head_dim)


def fastest_chunk(section: str, backend_name: str | None = None) -> int:
    """The measured fastest chunk of mixer ``section`` (retention, mamba, gla, gated_delta, based) on
    ``backend_name`` (default: this machine's, :func:`backend`); the specs' default where not measured."""
    return FASTEST.get(backend_name or backend(), {}).get(section, DEFAULT_CHUNK)
