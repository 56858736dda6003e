"""Gated linear attention mixer (GLA, Yang et al. 2024) over scaling.ops.gla (spec: scaling/mixers/gla.py).

q, k, v, o projections as attention's (so `scaling convert` keeps a transformer's), no RoPE; a log gate per key
channel, logsigmoid(x W_1 W_2 + b) / gate_normalizer through a rank-r bottleneck (the GLA paper's, normaliser 16
so the gates start near 1); optionally a short causal conv over q, k and v (gla.conv, as power retention's); the
output RMS-normalised per head, times swish(x W_r) (= SiLU), then the out-projection.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.models.layers import QKVO, conv_params, dense, dtypes, gated_head_norm, short_conv
from scaling.ops.gla import gla


class GLAState(NamedTuple):
    S: jax.Array  # [batch, heads, dk, dv] float32
    conv: jax.Array  # [batch, max(conv - 1, 0), 3 * heads * head_dim]: the short conv's last inputs (none: empty)


class GLA(nnx.Module):
    """Config: model.gla.{n_heads, chunk_size, gate_rank, gate_normalizer, conv}; head_dim = d_model / n_heads."""

    state_types = (GLAState,)  # the decode states it returns (scaling.inference saves them by name)

    def __init__(self, m, rngs: nnx.Rngs):
        g = m.gla
        self.chunk_size, self.normalizer, self.eps = g.chunk_size, float(g.gate_normalizer), m.norm_eps
        self.proj = QKVO(m, g.n_heads, g.n_heads, False, 10_000.0, rngs)
        inner = g.n_heads * self.proj.head_dim
        self.gate_down = dense(m, m.d_model, g.gate_rank, rngs)
        self.gate_up = dense(m, g.gate_rank, inner, rngs, use_bias=True, dtype=jnp.float32)
        self.out_gate = dense(m, m.d_model, inner, rngs)
        self.dtype, param_dtype = dtypes(m)
        self.norm_w = nnx.Param(jnp.ones((self.proj.head_dim,), param_dtype))
        self.d_conv = g.conv
        if g.conv:  # a short causal conv over q, k and v (as power retention's retention.conv)
            self.conv_w, self.conv_b = conv_params(g.conv, 3 * inner, rngs, param_dtype)

    def init_state(self, batch: int, max_len: int):
        del max_len
        h, hd = self.proj.n_heads, self.proj.head_dim
        return GLAState(S=jnp.zeros((batch, h, hd, hd), jnp.float32), conv=self._conv_zeros(batch))

    def _conv_zeros(self, batch: int):
        return jnp.zeros((batch, max(self.d_conv - 1, 0), 3 * self.proj.n_heads * self.proj.head_dim), self.dtype)

    def __call__(self, x, positions, state=None, *, decode: bool = False, segment_ids=None):
        """x [batch, time, d_model] -> y (and the new GLAState if state is given)."""
        q, k, v = self.proj.project(x)
        new_conv = self._conv_zeros(x.shape[0]) if state is None else state.conv
        if self.d_conv:
            (q, k, v), new_conv = short_conv([q, k, v], new_conv, self.conv_w[...], self.conv_b[...], segment_ids)
        q, k, v = self.proj.heads(q, k, v, positions)
        b, t, h, hd = q.shape
        log_gk = jax.nn.log_sigmoid(self.gate_up(self.gate_down(x)).astype(jnp.float32)) / self.normalizer
        out = gla(q, k, v, log_gk.reshape(b, t, h, hd), form="recurrent" if decode else "chunked",
                  chunk_size=self.chunk_size, initial_state=None if state is None else state.S,
                  return_state=state is not None,
                  segment_ids=segment_ids)
        o, new_state = out if state is not None else (out, None)
        y = self.proj.out(gated_head_norm(o, self.out_gate(x), self.norm_w[...], self.eps, q.dtype))
        return y if state is None else (y, GLAState(S=new_state, conv=new_conv))
