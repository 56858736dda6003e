"""Sliding-window causal softmax attention in blocks: linear in time, every computed score counted.

Each block of ``w = min(window, T)`` queries attends to the keys of its own block and of the block before
(2w keys, masked to the window ``(i - window, i]``, to causality and to the query's document), so the work per
query is 2w scores whatever T is (w when T fits in one block; scaling.mixers.based.window_keys counts them).
It computes the same function as ``scaling.ops.attention(q, k, v, window=window)``
(tests/ops/test_window_attention.py), whose parallel form computes the whole T x T block below 1,024 tokens and
whose blockwise form loops over key blocks. Used by the Based layer's window branch (scaling/models/based.py);
decode runs scaling.ops.attention's recurrent form over a ring KV cache of ``window`` slots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scaling.ops.segments import check_segment_ids, run_index

_NEG = -1e30  # finite "minus infinity": a fully masked row stays NaN-free


def sliding_window_attention(q, k, v, window: int, *, scale: float | None = None, segment_ids=None):
    """q [b, t, hq, d], k [b, t, hk, d], v [b, t, hk, e] (hq a multiple of hk) -> [b, t, hq, e] in q.dtype.

    window: tokens a query sees, itself included (>= 1). scale: default d^-1/2. segment_ids [b, t] (packed rows):
    no score crosses a document start (scaling.ops.segments)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"sliding_window_attention: window = {window!r}: must be an integer >= 1")
    b, t, hq, d = q.shape
    hk, e = k.shape[2], v.shape[-1]
    if hq % hk:
        raise ValueError(f"sliding_window_attention: q heads {hq} must be a multiple of kv heads {hk}")
    segment_ids = check_segment_ids(segment_ids, b, t, "sliding_window_attention")
    if t == 0:
        return jnp.zeros((b, 0, hq, e), q.dtype)
    scale = d ** -0.5 if scale is None else float(scale)
    w = min(window, t)
    n = -(-t // w)
    pad = n * w - t

    def blocks(x):  # [b, t, ...] -> [b, n, w, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
        return x.reshape(b, n, w, *x.shape[2:])

    def with_previous(x):  # [b, n, w, ...] -> [b, n, 2w, ...]: the block before (zeros for the first), then this one
        if n == 1:
            return x
        prev = jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
        return jnp.concatenate([prev, x], axis=2)

    qb = blocks(q.astype(jnp.float32)).reshape(b, n, w, hk, hq // hk, d)
    kb, vb = with_previous(blocks(k.astype(jnp.float32))), with_previous(blocks(v.astype(jnp.float32)))
    q_pos = (jnp.arange(n)[:, None] * w + jnp.arange(w)[None, :])  # [n, w]
    k_pos = jnp.arange(n)[:, None] * w + jnp.arange(kb.shape[2])[None, :] - (w if n > 1 else 0)  # [n, keys]
    allowed = ((k_pos[:, None, :] <= q_pos[:, :, None]) & (k_pos[:, None, :] > q_pos[:, :, None] - window)
               & (k_pos[:, None, :] >= 0))[None]  # [1, n, w, keys]
    if segment_ids is not None:
        run = run_index(segment_ids)
        rq, rk = blocks(run), with_previous(blocks(run))
        allowed = allowed & (rq[:, :, :, None] == rk[:, :, None, :])
    s = jnp.einsum("bnihgd,bnjhd->bnhgij", qb, kb) * scale
    mask = allowed[:, :, None, None]
    p = jnp.where(mask, jax.nn.softmax(jnp.where(mask, s, _NEG), axis=-1), 0.0)
    y = jnp.einsum("bnhgij,bnjhe->bnihge", p, vb).reshape(b, n * w, hq, e)
    return y[:, :t].astype(q.dtype)
