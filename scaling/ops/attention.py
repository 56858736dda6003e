"""Causal softmax attention with grouped-query heads and an optional sliding window.

Layout: q [batch, time, hq, d], k and v [batch, time, hk, d] / [batch, time, hk, e], with hq a multiple
of hk; q head i reads kv head i // (hq // hk).

Forms:
- ``"parallel"``: the quadratic form, one masked softmax over all key positions (a [T, T] score matrix).
- ``"blockwise"``: flash-style, scaling.ops.attention_blockwise: key/value blocks with an online softmax and a
  recomputing custom VJP; no [T, T] array in the forward or the backward, memory linear in T. For training and
  prefill at long context (no ``initial_state``).
- ``"auto"`` (the default): ``"parallel"`` with a cache (``initial_state``) or below the backend's measured
  threshold, else ``"blockwise"`` in the block measured fastest for the backend, context and head dim
  (scaling.mixers.chunks.attention_block: on CPU from 64 tokens, 32-token blocks at head dims up to 32; other
  backends from 1,024 tokens, 512-token blocks); on GPU, where cuDNN's constraints hold,
  ``jax.nn.dot_product_attention`` with ``implementation="cudnn"`` (see ``backend``).
- ``"recurrent"``: token by token over a KV cache. The cache is the attention's state: a
  :class:`KVCache` of fixed capacity, a ring that keeps the latest ``capacity`` tokens. With a window
  w the capacity need only be w (the state stays bounded however long the context); without one it
  must hold the whole context (``init_kv_cache(..., max_len)``), else the oldest tokens drop out.
  ``initial_state`` continues from a cache (e.g. after a prefill), ``return_state`` hands it back,
  so prefill then step equals one long call, as for the other mixers.

Backends: ``"xla"`` (the forms above in plain JAX); ``"cudnn"``: ``jax.nn.dot_product_attention(...,
implementation="cudnn")`` (its fused flash attention), only on a GPU with bf16/fp16 inputs, equal q/k/v head
dims of at most 128 (a multiple of 8), no ``segment_ids`` and no ``initial_state``; ``"auto"`` (the default):
cuDNN where those hold, else XLA. The cuDNN path cannot run on CPU, so it is untested here (see docs/kernels.md).

Parallel and recurrent accept ``initial_state`` (a KVCache holding earlier tokens) and ``return_state``. The window
``w`` means query i sees keys j with i - w < j <= i (w tokens, itself included).

Packed rows: ``segment_ids [batch, time]`` (see scaling.ops.segments) mask every (query, key) pair in
different documents (runs of equal ids), so each document attends only to itself; a query always sees at
least itself, so padding (id 0) rows stay finite. The cache of ``initial_state`` belongs to the call's first
document: queries of later documents in the call do not see it. The cache records no segments: the one handed
back holds every token written, whatever its document.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from scaling.mixers.chunks import PLATFORM_NAMES, attention_block
from scaling.ops.attention_blockwise import DEFAULT_BLOCK, blockwise_attention
from scaling.ops.segments import check_segment_ids, run_index, run_start

FORMS = ("auto", "parallel", "blockwise", "recurrent")
BACKENDS = ("auto", "xla", "cudnn")

_NEG = -1e30  # finite "minus infinity": a fully masked row stays NaN-free


class KVCache(NamedTuple):
    """Keys and values of earlier tokens.

    k: [batch, capacity, hk, d]; v: [batch, capacity, hk, e] (a ring, see slot_positions);
    pos: int32 scalar, the number of tokens written so far.
    """

    k: jax.Array
    v: jax.Array
    pos: jax.Array


def init_kv_cache(batch: int, max_len: int, kv_heads: int, head_dim: int, v_dim: int | None = None,
                  dtype=jnp.float32, window: int | None = None) -> KVCache:
    """An empty cache for up to ``max_len`` tokens; with a window, only min(max_len, window) slots."""
    v_dim = head_dim if v_dim is None else v_dim
    max_len = min(max_len, window) if window else max_len
    return KVCache(
        k=jnp.zeros((batch, max_len, kv_heads, head_dim), dtype),
        v=jnp.zeros((batch, max_len, kv_heads, v_dim), dtype),
        pos=jnp.zeros((), jnp.int32),
    )


def slot_positions(n_written, capacity: int):
    """Absolute position held by each cache slot after ``n_written`` tokens; -1 where a slot is empty.

    The cache is a ring: slot s holds the latest position congruent to s modulo the capacity.
    """
    last = n_written - 1
    pos = last - jnp.mod(last - jnp.arange(capacity), capacity)
    return jnp.where(pos >= 0, pos, -1)


def _write(cache: KVCache, k, v) -> KVCache:
    """Append k, v [batch, t, hk, *] to the ring, keeping the latest ``capacity`` tokens."""
    t, cap = k.shape[1], cache.k.shape[1]
    n = cache.pos + t
    want = slot_positions(n, cap)  # the position each slot must hold after the write
    from_new = want >= cache.pos
    idx = jnp.clip(want - cache.pos, 0, t - 1)
    sel = from_new[None, :, None, None]
    new_k = jnp.where(sel, jnp.take(k.astype(cache.k.dtype), idx, axis=1), cache.k)
    new_v = jnp.where(sel, jnp.take(v.astype(cache.v.dtype), idx, axis=1), cache.v)
    return KVCache(new_k, new_v, n)


def _validate(q, k, v, causal, window, form, backend, initial_state):
    if form not in FORMS:
        raise ValueError(f"form = {form!r}: must be one of {', '.join(FORMS)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend = {backend!r}: must be one of {', '.join(BACKENDS)} "
                         "(attention has no Pallas kernel; 'cudnn' is jax.nn.dot_product_attention on GPU)")
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim != 4:
            raise ValueError(f"{name} has shape {a.shape}: must be [batch, time, heads, head_dim]")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: batch and time must match, and k, v heads")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q head_dim {q.shape[-1]} != k head_dim {k.shape[-1]}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"q heads {q.shape[2]} must be a multiple of kv heads {k.shape[2]}")
    if window is not None and (not isinstance(window, int) or window <= 0):
        raise ValueError(f"window = {window!r}: must be a positive int or None")
    if not causal and (form == "recurrent" or initial_state is not None or window is not None):
        raise ValueError("causal=False is only supported by the parallel and blockwise forms, without window or "
                         "initial_state")
    if form == "recurrent" and initial_state is None:
        raise ValueError("form='recurrent' needs initial_state=KVCache (see init_kv_cache) to write into")
    if form == "blockwise" and initial_state is not None:
        raise ValueError("form='blockwise' does not read a KV cache (initial_state): use form='parallel'")


def cudnn_unsupported(q, k, v, *, segment_ids=None, initial_state=None) -> str | None:
    """Why jax.nn.dot_product_attention(implementation="cudnn") cannot take this call, or None if it can."""
    if jax.default_backend() != "gpu":
        return f"needs a GPU (the default backend is {jax.default_backend()!r})"
    if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"needs bf16 or fp16 q, k, v (got {q.dtype}, {k.dtype}, {v.dtype})"
    d = q.shape[-1]
    if v.shape[-1] != d or d > 128 or d % 8:
        return f"needs equal q/k/v head dims <= 128, a multiple of 8 (got {d}, {v.shape[-1]})"
    if segment_ids is not None:
        return "does not take segment_ids here (packed rows would need a [T, T] mask)"
    if initial_state is not None:
        return "does not read a KV cache (initial_state)"
    return None


def _resolve(q, k, v, form, backend, initial_state, segment_ids):
    """(form, use_cudnn) for the call: the 'auto' choices made, an explicit 'cudnn' checked."""
    why = cudnn_unsupported(q, k, v, segment_ids=segment_ids, initial_state=initial_state)
    if backend == "cudnn":
        if why is not None:
            raise ValueError(f"backend='cudnn': jax.nn.dot_product_attention(implementation='cudnn') {why}")
        if form not in ("auto", "parallel"):
            raise ValueError(f"backend='cudnn' computes the parallel form, not form={form!r}")
        return "parallel", True
    if backend == "auto" and why is None and form in ("auto", "parallel"):
        return "parallel", True
    if form == "auto":
        form = "parallel" if initial_state is not None or auto_block(q) is None else "blockwise"
    return form, False


def auto_block(q) -> int | None:
    """The blockwise block ``form="auto"`` uses for q's context and head dim on the backend running it (None: the
    parallel form); scaling.mixers.chunks.attention_block holds the measured rule."""
    return attention_block(q.shape[1], q.shape[-1], PLATFORM_NAMES.get(jax.default_backend(), "cpu"))


def _cudnn_attention(q, k, v, causal, window, scale):
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal,
                                        local_window_size=None if window is None else (window - 1, 0),
                                        implementation="cudnn")


def _scores_mask(q_pos, k_pos, causal, window):
    """Boolean [tq, tk] mask of allowed (query, key) pairs from absolute positions (-1: empty slot)."""
    allowed = jnp.broadcast_to(k_pos[None, :] >= 0, (q_pos.shape[0], k_pos.shape[0]))
    if causal:
        allowed &= k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= k_pos[None, :] > q_pos[:, None] - window
    return allowed


def _masked_softmax_attend(q, k, v, allowed, scale):
    """q [b,tq,hq,d], k [b,tk,hk,d], v [b,tk,hk,e], allowed [tq,tk] or [b,tq,tk] -> [b,tq,hq,e] fp32.

    Its VJP is the softmax's closed form (FlashAttention's): with weights w and output y, dS = w * (dW - D) where
    D = rowsum(dY * Y) is a [tq] vector per head, not a reduction over the [tq, tk] scores as autodiff's is;
    the backward keeps w from the forward (this form's [T, T] array; the blockwise form recomputes instead).
    Measured on the quickstart's attention at d_model 16, context 128: see docs/performance.md."""
    return _attend(q, k, v, allowed, scale)[0]


def _attend(q, k, v, allowed, scale):
    """(y [b,tq,hq,e] fp32, weights [b,hk,g,tq,tk] fp32)."""
    b, tq, hq, d = q.shape
    hk = k.shape[2]
    qg = q.reshape(b, tq, hk, hq // hk, d).astype(jnp.float32)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(jnp.float32)) * scale
    mask = allowed[:, None, None] if allowed.ndim == 3 else allowed
    s = jnp.where(mask, s, _NEG)
    w = jax.nn.softmax(s, axis=-1)
    w = jnp.where(mask, w, 0.0)  # a fully masked row (an empty cache slot's) gives zeros, not a uniform average
    y = jnp.einsum("bhgqk,bkhe->bqhge", w, v.astype(jnp.float32))
    return y.reshape(b, tq, hq, v.shape[-1]), w


def _attend_fwd(q, k, v, allowed, scale):
    y, w = _attend(q, k, v, allowed, scale)
    return y, (q, k, v, w, y)


def _attend_bwd(scale, res, dy):
    q, k, v, w, y = res
    b, tq, hq, d = q.shape
    hk = k.shape[2]
    g = hq // hk
    dy_g = dy.reshape(b, tq, hk, g, -1)
    dv = jnp.einsum("bhgqk,bqhge->bkhe", w, dy_g)
    dw = jnp.einsum("bqhge,bkhe->bhgqk", dy_g, v.astype(jnp.float32))
    rows = jnp.moveaxis(jnp.sum(dy_g * y.reshape(b, tq, hk, g, -1), axis=-1), 1, -1)  # D: [b, hk, g, tq]
    ds = w * (dw - rows[..., None]) * scale  # zero where masked: w is
    dq = jnp.einsum("bhgqk,bkhd->bqhgd", ds, k.astype(jnp.float32)).reshape(b, tq, hq, d)
    dk = jnp.einsum("bhgqk,bqhgd->bkhd", ds, q.reshape(b, tq, hk, g, d).astype(jnp.float32))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_masked_softmax_attend = jax.custom_vjp(_masked_softmax_attend, nondiff_argnums=(4,))
_masked_softmax_attend.defvjp(_attend_fwd, _attend_bwd)


def attention(q, k, v, *, causal: bool = True, window: int | None = None, scale: float | None = None,
              form: str = "auto", initial_state: KVCache | None = None, return_state: bool = False,
              backend: str = "auto", segment_ids=None, block_q: int | None = None, block_k: int | None = None):
    """Softmax attention.

    Args:
      q: [batch, time, hq, d]; k: [batch, time, hk, d]; v: [batch, time, hk, e].
      causal: mask future keys. window: sliding window length in tokens (itself included), or None.
      scale: score scale, default 1/sqrt(d).
      form: "auto", "parallel", "blockwise" or "recurrent" (token by token over the KV cache in
        ``initial_state``); see the module doc.
      backend: "auto", "xla" or "cudnn" (GPU only); see the module doc.
      initial_state: a KVCache of earlier tokens (``pos`` of them); the new ones are appended to its ring.
      return_state: also return the updated KVCache (needs initial_state).
      segment_ids: optional [batch, time] int document ids of a packed row: no attention across documents.
      block_q, block_k: query / key block sizes of the blockwise form (tokens); default: the block "auto" picks
        for this call (:func:`auto_block`), or 512 where "auto" would run the parallel form.
    Returns:
      y [batch, time, hq, e] in q.dtype, and the KVCache if return_state.
    """
    _validate(q, k, v, causal, window, form, backend, initial_state)
    if return_state and initial_state is None:
        raise ValueError("return_state=True needs initial_state=KVCache (see init_kv_cache)")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    t = q.shape[1]
    segment_ids = check_segment_ids(segment_ids, q.shape[0], t, "attention")
    form, use_cudnn = _resolve(q, k, v, form, backend, initial_state, segment_ids)
    if use_cudnn:
        return _cudnn_attention(q, k, v, causal, window, scale).astype(q.dtype)
    if form == "blockwise":
        block = auto_block(q) or DEFAULT_BLOCK
        block_q, block_k = (block if b is None else b for b in (block_q, block_k))
        return blockwise_attention(q, k, v, causal=causal, window=window, scale=scale, segment_ids=segment_ids,
                                   block_q=block_q, block_k=block_k)

    if initial_state is None:
        pos = jnp.arange(t)
        allowed = _scores_mask(pos, pos, causal, window)
        if segment_ids is not None:
            run = run_index(segment_ids)
            allowed = allowed[None] & (run[:, :, None] == run[:, None, :])
        y = _masked_softmax_attend(q, k, v, allowed, scale)
        return y.astype(q.dtype)

    cache = initial_state
    q_pos = cache.pos + jnp.arange(t)
    # With segments, the absolute position where each query's document starts (0 for the call's first
    # document, which continues the cache): causal keys at or after it are exactly its document's.
    doc_start = None
    if segment_ids is not None:
        doc_start = jnp.where(run_index(segment_ids) == 0, 0, cache.pos + run_start(segment_ids))
    if form == "parallel":
        # Keys: the cache's slots, then the new tokens, each with its absolute position.
        k_all = jnp.concatenate([cache.k, k.astype(cache.k.dtype)], axis=1)
        v_all = jnp.concatenate([cache.v, v.astype(cache.v.dtype)], axis=1)
        k_pos = jnp.concatenate([slot_positions(cache.pos, cache.k.shape[1]), q_pos])
        allowed = _scores_mask(q_pos, k_pos, True, window)
        if doc_start is not None:
            allowed = allowed[None] & (k_pos[None, None, :] >= doc_start[:, :, None])
        y = _masked_softmax_attend(q, k_all, v_all, allowed, scale)
        new = _write(cache, k, v)
    else:
        def step(c: KVCache, xs):
            q_t, k_t, v_t = xs[:3]  # [b, h, d]
            c = _write(c, k_t[:, None], v_t[:, None])
            k_pos = slot_positions(c.pos, c.k.shape[1])
            allowed = _scores_mask(c.pos[None] - 1, k_pos, True, window)
            if doc_start is not None:  # xs[3]: [b], where this token's document starts
                allowed = allowed[None] & (k_pos[None, None, :] >= xs[3][:, None, None])
            y_t = _masked_softmax_attend(q_t[:, None], c.k, c.v, allowed, scale)[:, 0]
            return c, y_t

        xs = (jnp.moveaxis(q, 1, 0), jnp.moveaxis(k, 1, 0), jnp.moveaxis(v, 1, 0))
        if doc_start is not None:
            xs = xs + (jnp.moveaxis(doc_start, 1, 0),)
        new, y = jax.lax.scan(step, cache, xs)
        y = jnp.moveaxis(y, 0, 1)
    y = y.astype(q.dtype)
    return (y, new) if return_state else y


def attention_reference(q, k, v, *, causal: bool = True, window: int | None = None,
                        scale: float | None = None):
    """Attention written for clarity: a loop over queries, each a softmax over its allowed keys."""
    b, t, hq, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    group = hq // k.shape[2]
    k_full = jnp.repeat(k, group, axis=2).astype(jnp.float32)  # q head h reads kv head h // group
    v_full = jnp.repeat(v, group, axis=2).astype(jnp.float32)
    rows = []
    for i in range(t):
        lo = 0 if window is None else max(0, i - window + 1)
        hi = i + 1 if causal else t
        s = jnp.einsum("bhd,bjhd->bhj", q[:, i].astype(jnp.float32), k_full[:, lo:hi]) * scale
        rows.append(jnp.einsum("bhj,bjhe->bhe", jax.nn.softmax(s, axis=-1), v_full[:, lo:hi]))
    return jnp.stack(rows, axis=1).astype(q.dtype)
