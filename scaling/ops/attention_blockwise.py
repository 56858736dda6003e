"""Blockwise (flash-style) causal softmax attention in plain JAX: no [T, T] array, forward or backward.

Layout as scaling.ops.attention: q [batch, time, hq, d], k [batch, time, hk, d], v [batch, time, hk, e]; q head i
reads kv head i // (hq // hk) (grouped-query heads: q is viewed as [batch, time, hk, group, d], K/V are never
repeated).

Forward: a scan over query blocks of ``block_q`` tokens; for each, a loop over the key blocks of ``block_k``
tokens it can see, with an online softmax (running max and sum in float32). Only the key blocks that hold an
allowed pair are visited: causal masking stops at the diagonal block, a window starts at the block of the
query block's first visible key, and with ``segment_ids`` the loop starts at the block of the earliest
document start of the query block (over the batch). Within a visited block the mask is applied elementwise.

Backward (a custom VJP, the flash-attention backward): the forward saves only its output and the logsumexp
of each query row; the backward recomputes each visited (query block, key block) pair once: an outer scan
over key blocks (dk, dv of the block accumulated in registers), an inner loop over the query blocks that see
it, dq accumulated into one [batch, time, ...] array. Memory is linear in T in both passes.

T not a multiple of a block is padded (padded keys are masked, padded query rows are dropped). Every row of
a real query sees at least itself, so no real row is empty; an empty (padding) row gives 0.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from scaling.mixers.chunks import ATTENTION_BLOCK
from scaling.ops.segments import run_index, run_start

DEFAULT_BLOCK = ATTENTION_BLOCK  # 512 tokens: scaling.mixers.chunks holds the block form="auto" picks
_NEG = -1e30  # finite "minus infinity" for the running max


def _run_end(segment_ids):
    """[batch, time] int32: the index of the last token of each token's run (run_start of the reversed row)."""
    t = segment_ids.shape[1]
    return (t - 1) - run_start(segment_ids[:, ::-1])[:, ::-1]


def _pad_time(x, n, value=0):
    pad = n - x.shape[1]
    if pad == 0:
        return x
    widths = [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, widths, constant_values=value)


def _block_mask(q0, k0, bq, bk, t, causal, window, run_q, run_k):
    """Allowed pairs of the query block starting at q0 and key block at k0: [bq, bk] or [b, bq, bk]."""
    q_pos = q0 + jnp.arange(bq)
    k_pos = k0 + jnp.arange(bk)
    allowed = jnp.broadcast_to(k_pos[None, :] < t, (bq, bk))
    if causal:
        allowed &= k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= k_pos[None, :] > q_pos[:, None] - window
    if run_q is not None:
        rq = jax.lax.dynamic_slice_in_dim(run_q, q0, bq, axis=1)
        rk = jax.lax.dynamic_slice_in_dim(run_k, k0, bk, axis=1)
        allowed = allowed[None] & (rq[:, :, None] == rk[:, None, :])
    return allowed


def _bcast(mask):
    """[bq, bk] or [b, bq, bk] -> broadcastable against scores [b, hk, g, bq, bk]."""
    return mask[:, None, None] if mask.ndim == 3 else mask


class _Plan(NamedTuple):
    """Static shapes (hashable: a nondiff argument of the custom VJP)."""

    t: int
    bq: int
    bk: int
    causal: bool
    window: int | None

    @property
    def nq(self):
        return -(-self.t // self.bq)

    @property
    def nk(self):
        return -(-self.t // self.bk)

    @property
    def tq(self):
        return self.nq * self.bq

    @property
    def tk(self):
        return self.nk * self.bk


def _k_range(plan, seg, i):
    """Key blocks [lo, hi) that query block i can see (traced scalars)."""
    q_first, q_last = i * plan.bq, jnp.minimum((i + 1) * plan.bq, plan.t) - 1
    hi = q_last // plan.bk + 1 if plan.causal else plan.nk
    lo = 0
    if plan.window is not None:
        lo = jnp.maximum(q_first - plan.window + 1, 0) // plan.bk
    if seg is not None:  # run starts are non-decreasing: the block's first query starts earliest
        lo = jnp.maximum(lo, jnp.min(seg[2][:, q_first]) // plan.bk)
    return lo, hi


def _q_range(plan, seg, j):
    """Query blocks [lo, hi) that see key block j (traced scalars)."""
    k_first, k_last = j * plan.bk, jnp.minimum((j + 1) * plan.bk, plan.t) - 1
    lo = k_first // plan.bq if plan.causal else 0
    hi = plan.nq
    if plan.window is not None:
        hi = jnp.minimum(hi, (k_last + plan.window - 1) // plan.bq + 1)
    if seg is not None:  # run ends are non-decreasing: the block's last key's run ends latest
        hi = jnp.minimum(hi, jnp.max(seg[3][:, k_last]) // plan.bq + 1)
    return lo, hi


def _mask(plan, seg, q0, k0):
    run_q, run_k = (None, None) if seg is None else seg[:2]
    return _block_mask(q0, k0, plan.bq, plan.bk, plan.t, plan.causal, plan.window, run_q, run_k)


def _scores(qb, kb, scale):
    """qb [b, bq, hk, g, d], kb [b, bk, hk, d] -> [b, hk, g, bq, bk] float32."""
    return jnp.einsum("bqhgd,bkhd->bhgqk", qb.astype(jnp.float32), kb.astype(jnp.float32)) * scale


def _forward(plan, scale, seg, q, k, v):
    """q [b, tq, hk, g, d] (padded), k [b, tk, hk, d], v [b, tk, hk, e] -> o [b, tq, hk, g, e] f32, lse
    [b, hk, g, tq] f32."""
    b, _, hk, g, _ = q.shape
    e = v.shape[-1]
    bq, bk = plan.bq, plan.bk

    def q_block(i):
        qb = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=1)

        def k_step(j, carry):
            m, l, acc = carry
            kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1)
            vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1).astype(jnp.float32)
            mask = _bcast(_mask(plan, seg, i * bq, j * bk))
            s = jnp.where(mask, _scores(qb, kb, scale), _NEG)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            l = l * corr + jnp.sum(p, axis=-1)
            acc = acc * corr[..., None] + jnp.einsum("bhgqk,bkhe->bhgqe", p, vb)
            return m_new, l, acc

        init = (jnp.full((b, hk, g, bq), _NEG, jnp.float32), jnp.zeros((b, hk, g, bq), jnp.float32),
                jnp.zeros((b, hk, g, bq, e), jnp.float32))
        lo, hi = _k_range(plan, seg, i)
        m, l, acc = jax.lax.fori_loop(lo, hi, k_step, init)
        safe = jnp.where(l > 0, l, 1.0)
        o = acc / safe[..., None]
        lse = jnp.where(l > 0, m + jnp.log(safe), 0.0)
        return jnp.einsum("bhgqe->bqhge", o), lse

    o, lse = jax.lax.map(q_block, jnp.arange(plan.nq))  # [nq, b, bq, hk, g, e], [nq, b, hk, g, bq]
    o = jnp.moveaxis(o, 0, 1).reshape(b, plan.tq, hk, g, e)
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, hk, g, plan.tq)
    return o, lse


def _backward(plan, scale, seg, q, k, v, o, lse, do):
    """Gradients of the padded arrays from the saved o, lse (float32) and the output cotangent do."""
    b, _, hk, g, d = q.shape
    e = v.shape[-1]
    bq, bk = plan.bq, plan.bk
    do = do.astype(jnp.float32)
    delta = jnp.einsum("bqhge,bqhge->bhgq", do, o)  # rowsum(dO * O)

    def k_block(dq, j):
        kb = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1).astype(jnp.float32)
        vb = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1).astype(jnp.float32)

        def q_step(i, carry):
            dq, dk, dv = carry
            q0 = i * bq
            qb = jax.lax.dynamic_slice_in_dim(q, q0, bq, axis=1).astype(jnp.float32)
            dob = jax.lax.dynamic_slice_in_dim(do, q0, bq, axis=1)
            lse_b = jax.lax.dynamic_slice_in_dim(lse, q0, bq, axis=3)
            delta_b = jax.lax.dynamic_slice_in_dim(delta, q0, bq, axis=3)
            mask = _bcast(_mask(plan, seg, q0, j * bk))
            p = jnp.where(mask, jnp.exp(_scores(qb, kb, scale) - lse_b[..., None]), 0.0)
            dv = dv + jnp.einsum("bhgqk,bqhge->bkhe", p, dob)
            dp = jnp.einsum("bqhge,bkhe->bhgqk", dob, vb)
            ds = p * (dp - delta_b[..., None]) * scale
            dk = dk + jnp.einsum("bhgqk,bqhgd->bkhd", ds, qb)
            dq_b = jax.lax.dynamic_slice_in_dim(dq, q0, bq, axis=1) + jnp.einsum("bhgqk,bkhd->bqhgd", ds, kb)
            dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_b, q0, axis=1)
            return dq, dk, dv

        lo, hi = _q_range(plan, seg, j)
        init = (dq, jnp.zeros((b, bk, hk, d), jnp.float32), jnp.zeros((b, bk, hk, e), jnp.float32))
        dq, dk, dv = jax.lax.fori_loop(lo, hi, q_step, init)
        return dq, (dk, dv)

    dq0 = jnp.zeros((b, plan.tq, hk, g, d), jnp.float32)
    dq, (dk, dv) = jax.lax.scan(k_block, dq0, jnp.arange(plan.nk))  # dk [nk, b, bk, hk, d]
    dk = jnp.moveaxis(dk, 0, 1).reshape(b, plan.tk, hk, d)
    dv = jnp.moveaxis(dv, 0, 1).reshape(b, plan.tk, hk, e)
    return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(plan, scale, seg, q, k, v):
    return _forward(plan, scale, seg, q, k, v)[0]


def _flash_fwd(plan, scale, seg, q, k, v):
    o, lse = _forward(plan, scale, seg, q, k, v)
    return o, (seg, q, k, v, o, lse)


def _flash_bwd(plan, scale, res, do):
    seg, q, k, v, o, lse = res
    dq, dk, dv = _backward(plan, scale, seg, q, k, v, o, lse, do)
    return None, dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_flash.defvjp(_flash_fwd, _flash_bwd)


def blockwise_attention(q, k, v, *, causal: bool = True, window: int | None = None, scale: float | None = None,
                        segment_ids=None, block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK):
    """Flash-style attention (see module doc); inputs validated by scaling.ops.attention.attention.

    Args:
      q: [batch, time, hq, d]; k: [batch, time, hk, d]; v: [batch, time, hk, e].
      causal, window, scale: as scaling.ops.attention.attention.
      segment_ids: optional int32 [batch, time] document ids (no attention across runs of equal ids).
      block_q, block_k: tokens per query / key block (clipped to T); T is padded to a multiple of each.
    Returns:
      y [batch, time, hq, e] in q.dtype.
    """
    b, t, hq, d = q.shape
    hk, e = k.shape[2], v.shape[-1]
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(blk, bool) or not isinstance(blk, int) or blk < 1:
            raise ValueError(f"{name} = {blk!r}: must be a positive int")
    scale = d ** -0.5 if scale is None else float(scale)
    bq, bk = min(block_q, t), min(block_k, t)
    plan = _Plan(t, bq, bk, bool(causal), window)
    seg = None
    if segment_ids is not None:
        run = run_index(segment_ids)
        seg = (_pad_time(run, plan.tq, -1), _pad_time(run, plan.tk, -2),
               _pad_time(run_start(segment_ids), plan.tq, t), _pad_time(_run_end(segment_ids), plan.tk, t))
    qg = _pad_time(q.reshape(b, t, hk, hq // hk, d), plan.tq)
    y = _flash(plan, scale, seg, qg, _pad_time(k, plan.tk), _pad_time(v, plan.tk))
    return y[:, :t].reshape(b, t, hq, e).astype(q.dtype)
