"""Gated DeltaNet mixer (Yang, Kautz, Hatamizadeh 2024) over scaling.ops.gated_delta (spec:
scaling/mixers/gated_delta.py).

q, k, v projections (no RoPE) through a short causal depthwise conv and SiLU, q and k L2-normalised per head (so
the delta rule's update I - beta k k^T is a contraction); the write strength beta = sigmoid(x W_beta) and the log
gate -exp(A_log) softplus(x W_a + dt_bias) per head (Mamba-2's parametrisation, dt log-uniform in
[dt_min, dt_max] and A uniform in a_init_range at init); the output RMS-normalised per head, times SiLU(x W_g),
then the out-projection.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.models.layers import QKVO, causal_conv, conv_params, decay_params, dense, dtypes, gated_head_norm
from scaling.ops.gated_delta import gated_delta_rule


class GatedDeltaState(NamedTuple):
    S: jax.Array  # [batch, heads, dk, dv] float32
    conv: jax.Array  # [batch, conv - 1, 3 * heads * head_dim]: the conv's last inputs


def _l2norm(x, eps: float = 1e-6):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class GatedDeltaNet(nnx.Module):
    """Config: model.gated_delta.{n_heads, chunk_size, conv, dt_min, dt_max, a_init_range}."""

    state_types = (GatedDeltaState,)  # the decode states it returns (scaling.inference saves them by name)

    def __init__(self, m, rngs: nnx.Rngs):
        s = m.gated_delta
        self.chunk_size, self.d_conv, self.eps = s.chunk_size, s.conv, m.norm_eps
        self.proj = QKVO(m, s.n_heads, s.n_heads, False, 10_000.0, rngs)
        h, hd = s.n_heads, self.proj.head_dim
        self.dtype, param_dtype = dtypes(m)
        self.beta = dense(m, m.d_model, h, rngs, out_float32=True)
        self.a = dense(m, m.d_model, h, rngs, out_float32=True)
        self.out_gate = dense(m, m.d_model, h * hd, rngs)
        self.conv_w, self.conv_b = conv_params(s.conv, 3 * h * hd, rngs, param_dtype)
        self.norm_w = nnx.Param(jnp.ones((hd,), param_dtype))
        self.dt_bias, self.A_log = decay_params(h, s.dt_min, s.dt_max, s.a_init_range, rngs, param_dtype)

    def init_state(self, batch: int, max_len: int):
        del max_len
        h, hd = self.proj.n_heads, self.proj.head_dim
        return GatedDeltaState(S=jnp.zeros((batch, h, hd, hd), jnp.float32),
                               conv=jnp.zeros((batch, self.d_conv - 1, 3 * h * hd), self.dtype))

    def __call__(self, x, positions, state=None, *, decode: bool = False, segment_ids=None):
        """x [batch, time, d_model] -> y (and the new GatedDeltaState if state is given)."""
        del positions  # no RoPE: the conv and the decay carry position
        b, t, _ = x.shape
        h, hd = self.proj.n_heads, self.proj.head_dim
        q, k, v = self.proj.project(x)
        conv_state = self.init_state(b, 0).conv if state is None else state.conv
        hc, new_conv = causal_conv(jnp.concatenate([q, k, v], axis=-1), conv_state, self.conv_w[...],
                                   self.conv_b[...], segment_ids)
        q, k, v = (z.reshape(b, t, h, hd) for z in jnp.split(jax.nn.silu(hc), 3, axis=-1))
        q, k = _l2norm(q), _l2norm(k)
        beta = jax.nn.sigmoid(self.beta(x))
        dt = jax.nn.softplus(self.a(x) + self.dt_bias[...].astype(jnp.float32))
        log_g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * dt
        out = gated_delta_rule(q, k, v, beta, log_g, form="recurrent" if decode else "chunked",
                               chunk_size=self.chunk_size, initial_state=None if state is None else state.S,
                               return_state=state is not None, segment_ids=segment_ids)
        o, S = out if state is not None else (out, None)
        y = self.proj.out(gated_head_norm(o, self.out_gate(x), self.norm_w[...], self.eps, self.dtype))
        return y if state is None else (y, GatedDeltaState(S=S, conv=new_conv))
