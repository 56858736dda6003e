"""Based mixer (Arora et al. 2024) over scaling.ops.based and scaling.ops.attention (spec: scaling/mixers/based.py).

Two branches on one input, summed before the out-projection: Based's Taylor linear attention, with q and k
projected to ``feature_dim`` per head (no RoPE: the features see raw dot products), and a sliding-window causal
softmax attention over the last ``window`` tokens with its own q and k (RoPE). Both read the same v. Optionally a
short causal conv (based.conv) over the linear branch's q, k and the shared v. Decode state:
the linear branch's BasedState and the window's ring KV cache, in one BasedLayerState.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.models.layers import conv_params, dense, dtypes, rope, short_conv
from scaling.ops.attention import KVCache, attention, init_kv_cache
from scaling.ops.based import BasedState, based, based_feature_dim
from scaling.ops.window_attention import sliding_window_attention


class BasedLayerState(NamedTuple):
    S: jax.Array  # [batch, heads, D, head_dim] float32: the linear branch's moments
    z: jax.Array  # [batch, heads, D] float32: its normaliser
    k: jax.Array  # [batch, window, heads, head_dim]: the window's ring of keys
    v: jax.Array  # [batch, window, heads, head_dim]: and values
    pos: jax.Array  # int32 []: tokens written to the ring
    conv: jax.Array  # [batch, max(conv - 1, 0), heads * (2 feature_dim + head_dim)]: the short conv's last inputs


class Based(nnx.Module):
    """Config: model.based.{n_heads, feature_dim, chunk_size, window, rope_theta, conv}; head_dim = d_model /
    n_heads."""

    state_types = (BasedLayerState,)  # the decode states it returns (scaling.inference saves them by name)

    def __init__(self, m, rngs: nnx.Rngs):
        s = m.based
        self.n_heads, self.head_dim, self.f = s.n_heads, m.d_model // s.n_heads, s.feature_dim
        self.chunk_size, self.window, self.rope_theta = s.chunk_size, s.window, s.rope_theta
        self.dtype = dtypes(m)[0]
        inner = self.n_heads * self.head_dim
        out_std = m.init_std / (2 * m.n_layers) ** 0.5
        self.q_f = dense(m, m.d_model, self.n_heads * self.f, rngs)
        self.k_f = dense(m, m.d_model, self.n_heads * self.f, rngs)
        self.q = dense(m, m.d_model, inner, rngs)
        self.k = dense(m, m.d_model, inner, rngs)
        self.v = dense(m, m.d_model, inner, rngs)
        self.o = dense(m, inner, m.d_model, rngs, std=out_std)
        self.d_conv, self.conv_channels = s.conv, self.n_heads * (2 * self.f + self.head_dim)
        if s.conv:  # a short causal conv over q_f, k_f and v (as power retention's retention.conv)
            self.conv_w, self.conv_b = conv_params(s.conv, self.conv_channels, rngs, dtypes(m)[1])

    def init_state(self, batch: int, max_len: int):
        D = based_feature_dim(self.f)
        cache = init_kv_cache(batch, max_len, self.n_heads, self.head_dim, dtype=self.dtype, window=self.window)
        return BasedLayerState(S=jnp.zeros((batch, self.n_heads, D, self.head_dim), jnp.float32),
                               z=jnp.zeros((batch, self.n_heads, D), jnp.float32), k=cache.k, v=cache.v,
                               pos=cache.pos,
                               conv=self._conv_zeros(batch))

    def _conv_zeros(self, batch: int):
        return jnp.zeros((batch, max(self.d_conv - 1, 0), self.conv_channels), self.dtype)

    def __call__(self, x, positions, state=None, *, decode: bool = False, segment_ids=None):
        """x [batch, time, d_model] -> y (and the new BasedLayerState if state is given)."""
        b, t, _ = x.shape
        h, hd = self.n_heads, self.head_dim
        qf, kf, v = self.q_f(x), self.k_f(x), self.v(x)
        new_conv = self._conv_zeros(b) if state is None else state.conv
        if self.d_conv:
            (qf, kf, v), new_conv = short_conv([qf, kf, v], new_conv, self.conv_w[...], self.conv_b[...],
                                               segment_ids)
        qf, kf, v = qf.reshape(b, t, h, self.f), kf.reshape(b, t, h, self.f), v.reshape(b, t, h, hd)
        out = based(qf, kf, v, form="recurrent" if decode else "chunked", chunk_size=self.chunk_size,
                    initial_state=None if state is None else BasedState(state.S, state.z),
                    return_state=state is not None, segment_ids=segment_ids)
        lin, lin_state = out if state is not None else (out, None)
        q = rope(self.q(x).reshape(b, t, h, hd), positions, self.rope_theta)
        k = rope(self.k(x).reshape(b, t, h, hd), positions, self.rope_theta)
        if state is None:  # training: blocks of the window, linear in T (scaling/ops/window_attention.py)
            win, cache = sliding_window_attention(q, k, v, self.window, segment_ids=segment_ids), None
        else:  # prefill / decode over the ring cache of the window
            win, cache = attention(q, k, v, window=self.window, form="recurrent" if decode else "parallel",
                                   initial_state=KVCache(state.k, state.v, state.pos), return_state=True)
        y = self.o((lin.astype(self.dtype) + win.astype(self.dtype)).reshape(b, t, h * hd))
        if state is None:
            return y
        return y, BasedLayerState(S=lin_state.S, z=lin_state.z, k=cache.k, v=cache.v, pos=cache.pos, conv=new_conv)
