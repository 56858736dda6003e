"""Attention mixer: q/k/v/o projections, RoPE, grouped-query causal softmax attention over scaling.ops."""

from __future__ import annotations

from flax import nnx

from scaling.models.layers import dense, dtypes, rope
from scaling.ops.attention import attention, init_kv_cache


class Attention(nnx.Module):
    """Causal self-attention with GQA, optional sliding window and RoPE.

    Config: model.attention.{n_heads, n_kv_heads, window (None = none), rope, rope_theta};
    head_dim = d_model / n_heads. Decode state: a KVCache of max_len tokens.
    """

    def __init__(self, m, rngs: nnx.Rngs):
        a = m.attention
        self.n_heads, self.n_kv_heads = a.n_heads, a.n_kv_heads
        self.head_dim = m.d_model // a.n_heads
        self.window = a.window
        self.use_rope, self.rope_theta = a.rope, a.rope_theta
        self.dtype = dtypes(m)[0]
        out_std = m.init_std / (2 * m.n_layers) ** 0.5
        self.q = dense(m, m.d_model, self.n_heads * self.head_dim, rngs)
        self.k = dense(m, m.d_model, self.n_kv_heads * self.head_dim, rngs)
        self.v = dense(m, m.d_model, self.n_kv_heads * self.head_dim, rngs)
        self.o = dense(m, self.n_heads * self.head_dim, m.d_model, rngs, std=out_std)

    def qkv(self, x, positions):
        b, t, _ = x.shape
        q = self.q(x).reshape(b, t, self.n_heads, self.head_dim)
        k = self.k(x).reshape(b, t, self.n_kv_heads, self.head_dim)
        v = self.v(x).reshape(b, t, self.n_kv_heads, self.head_dim)
        if self.use_rope:
            q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
        return q, k, v

    def init_state(self, batch: int, max_len: int):
        return init_kv_cache(batch, max_len, self.n_kv_heads, self.head_dim, dtype=self.dtype, window=self.window)

    def __call__(self, x, positions, state=None, *, decode: bool = False):
        """x [batch, time, d_model] -> y [batch, time, d_model] (and the new state if state is given)."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x, positions)
        form = "recurrent" if decode else "parallel"
        out = attention(q, k, v, window=self.window, form=form, initial_state=state,
                        return_state=state is not None)
        y, new_state = out if state is not None else (out, None)
        y = self.o(y.reshape(b, t, self.n_heads * self.head_dim))
        return y if state is None else (y, new_state)
