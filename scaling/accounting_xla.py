"""The accounting's FLOPs against XLA's cost analysis of the compiled forward pass (``scaling flops --xla``).

:func:`xla_flops_per_token` compiles the model's forward on zeros and reads ``compiled.cost_analysis()["flops"]`` per
token. XLA counts a while-loop body once, so the chunked forms' scans over chunks are unrolled while compiling
(``SCAN_UNROLL`` of power retention, GLA, Gated DeltaNet and Based: same math, no loop), and attention runs its parallel
form (the blockwise form skips fully masked key blocks in a loop XLA does not unroll): both count every FLOP the math
does, as the accounting's "full" convention does. Nothing runs; compiling a large model at a long context takes a while.
"""

from __future__ import annotations

import contextlib
import importlib

import jax
import jax.numpy as jnp
from flax import nnx

from scaling import accounting, config
from scaling.models import build

SCANNED_OPS = ("power_retention", "gla", "gated_delta", "based")  # ops whose chunked form scans over chunks


@contextlib.contextmanager
def unrolled_chunk_loops():
    """Unroll the chunked forms' scans over chunks while compiling, so every chunk's FLOPs are in XLA's count."""
    modules = [importlib.import_module(f"scaling.ops.{name}") for name in SCANNED_OPS]
    old = [m.SCAN_UNROLL for m in modules]
    for m in modules:
        m.SCAN_UNROLL = True
    try:
        yield
    finally:
        for m, value in zip(modules, old, strict=True):
            m.SCAN_UNROLL = value


def xla_flops_per_token(cfg, context: int, batch: int = 2) -> float:
    """XLA's cost analysis of the compiled forward of ``cfg``'s model on [batch, context] tokens, per token.

    The caller chooses the attention form (``model.attention.impl``); :func:`xla_ratio` sets "parallel"."""
    model = build(cfg.model)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda st, tok: nnx.merge(graphdef, st)(tok))
    with unrolled_chunk_loops():
        cost = fwd.lower(state, jnp.zeros((batch, context), jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"] / (batch * context)


def xla_ratio(cfg, context: int, batch: int = 2) -> tuple[float, float]:
    """(the accounting's forward FLOPs per token, "full" convention; its ratio to XLA's count) at ``context``,
    the model compiled with parallel attention."""
    parallel = config.from_dict(config.to_dict(cfg))
    parallel.model.attention.impl = "parallel"
    formula = accounting.flops_per_token(parallel, context)
    return formula, formula / xla_flops_per_token(parallel, context, batch)
