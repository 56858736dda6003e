"""Power retention mixer (Manifest AI's symmetric-power linear attention) over scaling.ops.

The projections match attention's (q/k/v/o), so a transformer's weights fit it, plus a per-kv-head
gate log_g = logsigmoid(W_g x + b) whose bias starts the gate at ``gate_init`` (near 1: long memory).
The state per sequence is n_kv_heads x (D x head_dim + D) with D = C(head_dim + p - 1, p): it is tuned by
p and by the head split at fixed parameters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.models.layers import QKVO, dense
from scaling.ops.power_retention import RetentionState, power_retention, sympow_dim


class PowerRetention(nnx.Module):
    """Config: model.retention.{n_heads, n_kv_heads, p, chunk_size, rope, rope_theta, normalize, gate,
    gate_init}; head_dim = d_model / n_heads."""

    def __init__(self, m, rngs: nnx.Rngs):
        r = m.retention
        self.p, self.chunk_size, self.normalize = r.p, r.chunk_size, r.normalize
        self.backend = m.kernel
        self.proj = QKVO(m, r.n_heads, r.n_kv_heads, r.rope, r.rope_theta, rngs)
        self.gate = nnx.data(None)
        if r.gate:
            self.gate = dense(m, m.d_model, r.n_kv_heads, rngs, use_bias=True)
            logit = math.log(r.gate_init / (1 - r.gate_init))
            self.gate.bias[...] = jnp.full_like(self.gate.bias[...], logit)

    def init_state(self, batch: int, max_len: int):
        del max_len  # the state does not grow with context
        hk, hd = self.proj.n_kv_heads, self.proj.head_dim
        dim = sympow_dim(hd, self.p)
        return RetentionState(S=jnp.zeros((batch, hk, dim, hd), jnp.float32),
                              z=jnp.zeros((batch, hk, dim), jnp.float32))

    def __call__(self, x, positions, state=None, *, decode: bool = False):
        """x [batch, time, d_model] -> y [batch, time, d_model] (and the new state if state is given)."""
        q, k, v = self.proj.qkv(x, positions)
        log_g = None if self.gate is None else jax.nn.log_sigmoid(self.gate(x).astype(jnp.float32))
        out = power_retention(
            q, k, v, log_g, p=self.p, chunk_size=self.chunk_size, normalize=self.normalize,
            form="recurrent" if decode else "chunked", initial_state=state,
            return_state=state is not None, backend=self.backend)
        y, new_state = out if state is not None else (out, None)
        y = self.proj.out(y)
        return y if state is None else (y, new_state)
