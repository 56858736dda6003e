"""Attention mixer: q/k/v/o projections, RoPE, grouped-query causal softmax attention over scaling.ops."""

from __future__ import annotations

from flax import nnx

from scaling.models.layers import QKVO, dtypes
from scaling.ops.attention import KVCache, attention, init_kv_cache


class Attention(nnx.Module):
    """Causal self-attention with GQA, optional sliding window and RoPE.

    Config: model.attention.{n_heads, n_kv_heads, window (None = none), rope, rope_theta}, and ``impl`` if the
    section has it (the training/prefill form of scaling.ops.attention: "auto", the default, picks the blockwise
    flash-style form from the backend's measured context on (scaling.mixers.chunks.attention_block) and cuDNN on
    GPU; "parallel"; "blockwise"); head_dim = d_model / n_heads.
    Decode state: a KVCache (a ring of ``window`` slots when windowed).
    """

    state_types = (KVCache,)  # the decode states it returns (scaling.inference saves them by name)

    def __init__(self, m, rngs: nnx.Rngs):
        a = m.attention
        self.window = a.window
        self.impl = a.get("impl", "auto")
        self.dtype = dtypes(m)[0]
        self.proj = QKVO(m, a.n_heads, a.n_kv_heads, a.rope, a.rope_theta, rngs)

    def init_state(self, batch: int, max_len: int):
        p = self.proj
        return init_kv_cache(batch, max_len, p.n_kv_heads, p.head_dim, dtype=self.dtype, window=self.window)

    def __call__(self, x, positions, state=None, *, decode: bool = False, segment_ids=None):
        """x [batch, time, d_model] -> y [batch, time, d_model] (and the new state if state is given).

        positions [time] or [batch, time] feed RoPE; segment_ids [batch, time] (packed rows) mask attention
        across documents."""
        q, k, v = self.proj.qkv(x, positions)
        form = "recurrent" if decode else (self.impl if state is None else "parallel")  # a cache: parallel
        out = attention(q, k, v, window=self.window, form=form,
                        initial_state=state, return_state=state is not None, segment_ids=segment_ids)
        y, new_state = out if state is not None else (out, None)
        y = self.proj.out(y)
        return y if state is None else (y, new_state)
