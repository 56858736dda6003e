"""Gated DeltaNet's mixer: the delta rule with a scalar gate per head (Yang, Kautz, Hatamizadeh 2024).

Per head, with q_t, k_t [dk], v_t [dv], a write strength ``beta_t in (0, 1)`` and a log gate ``g_t <= 0``::

    S <- exp(g_t) S                      decay the memory            S: [dk, dv] float32
    u_t = beta_t (v_t - S^T k_t)         the correction of what S recalls for k_t
    S <- S + k_t u_t^T                   one step of online regression of v on k
    o_t = scale * S^T q_t                scale = dk^-1/2 unless given

equivalently ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``. The layer L2-normalises
q and k (the delta rule is then a contraction); the op does not. Forms, all through ``gated_delta_rule``:

* ``"recurrent"``: the per-step update, one ``lax.scan`` step per token (the decode path).
* ``"chunked"`` (default): the WY / UT-transform form, gate folded in. In a chunk of c tokens entering with
  state S_0, let ``b_t = g_{start} + ... + g_t`` (local cumulative log gate), ``gamma_t = exp(b_t)`` and
  ``Gam_tj = exp(b_t - b_j)`` for j <= t (a masked cumulative sum: exponents <= 0, exact at any T). Unrolling
  ``S_t = gamma_t S_0 + sum_{j <= t} Gam_tj k_j u_j^T`` in the definition of u_t gives a unit lower-triangular
  system for the c update vectors U [c, dv]::

      (I + L) U = diag(beta) V - diag(beta gamma) K S_0,    L_tj = beta_t (k_t . k_j) Gam_tj  (j < t)

  so ``U = U~ - W S_0`` with ``U~ = (I + L)^-1 diag(beta) V`` and ``W = (I + L)^-1 diag(beta gamma) K``. The
  inverse of the unit lower-triangular I + L is built by blocks (:func:`unit_lower_inverse`: matrix products
  only, log2(c) levels), then applied to both right-hand sides by one product. (LAPACK's batched triangular solve,
  jax.scipy.linalg.solve_triangular, computes the same, but its gradient inside this step deadlocked XLA's CPU
  runtime in jax 0.10.2 from batch 16 on: the train step never returned.) Then::

      O     = scale * (diag(gamma) Q S_0 + (Q K^T o Gam) U)
      S_out = gamma_c S_0 + (K o Gam_{c,.})^T U  = gamma_c S_0 + K_end^T U~ - (K_end^T W) S_0

  The chunk-to-chunk ``lax.scan`` carries S with a [dk, dk] x [dk, dv] product per chunk; everything else is
  batched over chunks. A ragged last chunk is padded with beta = 0 and g = 0 (u = 0: the state is unchanged).
* ``"parallel"``: the same with one chunk spanning the whole call (a T x T solve): short sequences, checks.

Cost of the chunked form per token and head (multiply-adds): ``c dk`` (K K^T) + ``c dk`` (Q K^T) +
``n (n^2 - 1) / (3 c)`` (the inverse, n = c rounded up to a power of two) + ``c (dk + dv)`` (applying it) +
``c dv`` (intra output) + ``dk dv`` (U~ - W S, read-out Q S)
twice + ``dk^2 (dk + dv) / c`` for the per-chunk ``K_end^T W`` and its product with S.

Packed rows: with ``segment_ids [batch, time]`` (scaling.ops.segments) the state restarts from zero at each
document's first token (the initial state belongs to the call's first document): L and Gam are masked to
pairs in one document, and gamma, Gam_{c,.} and gamma_c by segments.chunk_masks, after the exp.

Float32 throughout; o comes back in q.dtype and the state is float32. Axis letters: b batch, t time, n chunk,
i/j position in a chunk (query / key), h head, d key dim, e value dim.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from scaling.ops.checks import check_form_and_chunk, check_qkv, check_scale, check_state_matrix
from scaling.ops.segments import ChunkMasks, check_segment_ids, chunk_masks, resets

FORMS = ("parallel", "chunked", "recurrent")

__all__ = ["gated_delta_rule", "gated_delta_rule_reference", "gated_delta_state_shape", "gated_delta_state_size",
           "FORMS"]


def gated_delta_state_shape(dk: int, dv: int) -> tuple[int, int]:
    """The recurrent state per (batch, head): S [dk, dv] float32."""
    return (int(dk), int(dv))


def gated_delta_state_size(dk: int, dv: int) -> int:
    """Elements of the state per (batch, head): dk * dv."""
    return math.prod(gated_delta_state_shape(dk, dv))


# ------------------------------------------------------------------------------------------- validation


def _validate(q, k, v, beta, log_g, *, scale, initial_state, fn):
    """Checks shapes and scale; returns (b, t, h, dk, dv). Raises ValueError with one line."""
    b, t, h, dk, dv = check_qkv(q, k, v, fn)
    for name, x in (("beta", beta), ("log_g", log_g)):
        if x.shape != (b, t, h):
            raise ValueError(f"{fn}: {name} must have shape [batch, time, heads] = {(b, t, h)}; got {tuple(x.shape)}")
    check_scale(scale, fn)
    check_state_matrix(initial_state, (b, h, dk, dv), fn)
    return b, t, h, dk, dv


def _prepare(q, k, v, beta, log_g, initial_state, scale):
    b, t, h, dk = q.shape
    f32 = jnp.float32
    scale = dk ** -0.5 if scale is None else float(scale)
    S0 = jnp.zeros((b, h, dk, v.shape[-1]), f32) if initial_state is None else initial_state.astype(f32)
    return q.astype(f32) * scale, k.astype(f32), v.astype(f32), beta.astype(f32), log_g.astype(f32), S0


def _asarrays(*arrays):
    return tuple(None if a is None else jnp.asarray(a) for a in arrays)


# ------------------------------------------------------------------------------------------- public API


def gated_delta_rule(q, k, v, beta, log_g, *, scale=None, form="chunked", chunk_size=64, initial_state=None,
                     return_state=False, segment_ids=None):
    """The gated delta rule (module docstring for the math and the forms).

    Args:
      q, k: [batch, time, heads, dk] (the layer L2-normalises them); v: [batch, time, heads, dv].
      beta: [batch, time, heads] write strengths in (0, 1); log_g: [batch, time, heads] log gates <= 0 (values
        are not checked: they are traced).
      scale: query scale, default dk^-1/2.
      form: "chunked" (default), "parallel" or "recurrent"; all compute the same function.
      chunk_size: tokens per chunk of the chunked form (clipped to time); ignored by the other forms.
      initial_state: optional [batch, heads, dk, dv] state entering the call (zeros if None).
      return_state: also return the float32 final state (pass it back as initial_state to continue).
      segment_ids: optional [batch, time] int document ids of packed rows (scaling.ops.segments).

    Returns o [batch, time, heads, dv] in q.dtype, or (o, state) with return_state.
    """
    fn = "gated_delta_rule"
    check_form_and_chunk(form, chunk_size, FORMS, fn)
    q, k, v, beta, log_g, initial_state = _asarrays(q, k, v, beta, log_g, initial_state)
    b, t, h, dk, dv = _validate(q, k, v, beta, log_g, scale=scale, initial_state=initial_state, fn=fn)
    segment_ids = check_segment_ids(segment_ids, b, t, fn)
    args = _prepare(q, k, v, beta, log_g, initial_state, scale)
    if t == 0:
        o, S = jnp.zeros((b, 0, h, dv), jnp.float32), args[-1]
    elif form == "recurrent":
        o, S = _recurrent(*args, None if segment_ids is None else resets(segment_ids))
    else:
        chunk = t if form == "parallel" else min(int(chunk_size), t)
        masks = None if segment_ids is None else chunk_masks(segment_ids, -(-t // chunk), chunk)
        o, S = _chunked(*args, chunk=chunk, masks=masks)
    o = o.astype(q.dtype)
    return (o, S) if return_state else o


def gated_delta_rule_reference(q, k, v, beta, log_g, *, scale=None, initial_state=None, return_state=False):
    """The recurrence in its transition-matrix form, one token at a time, for clarity (no segments):
    ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = scale S_t^T q_t``."""
    fn = "gated_delta_rule_reference"
    q, k, v, beta, log_g, initial_state = _asarrays(q, k, v, beta, log_g, initial_state)
    _, _, _, dk, _ = _validate(q, k, v, beta, log_g, scale=scale, initial_state=initial_state, fn=fn)
    q32, k32, v32, beta32, g32, S0 = _prepare(q, k, v, beta, log_g, initial_state, scale)
    eye = jnp.eye(dk, dtype=jnp.float32)

    def step(S, inputs):
        q_t, k_t, v_t, beta_t, g_t = inputs
        beta_k = beta_t[..., None, None] * k_t[..., :, None]  # [b, h, dk, 1]
        transition = jnp.exp(g_t)[..., None, None] * (eye - beta_k * k_t[..., None, :])
        S = transition @ S + beta_k * v_t[..., None, :]
        return S, jnp.einsum("bhd,bhde->bhe", q_t, S)

    S, o_tbhe = lax.scan(step, S0, tuple(jnp.moveaxis(x, 1, 0) for x in (q32, k32, v32, beta32, g32)))
    o = jnp.moveaxis(o_tbhe, 0, 1).astype(q.dtype)
    return (o, S) if return_state else o


# ------------------------------------------------------------------------------------------- internals


def _recurrent(q_bthd, k_bthd, v_bthe, beta_bth, g_bth, S0_bhde, reset_bt=None):
    def step(S_bhde, inputs):
        q_bhd, k_bhd, v_bhe, beta_bh, g_bh = inputs[:5]
        decay_bh = jnp.exp(g_bh)
        if reset_bt is not None:
            decay_bh = jnp.where(inputs[5][:, None], 0.0, decay_bh)
        S_bhde = decay_bh[..., None, None] * S_bhde
        u_bhe = beta_bh[..., None] * (v_bhe - jnp.einsum("bhd,bhde->bhe", k_bhd, S_bhde))
        S_bhde = S_bhde + k_bhd[..., None] * u_bhe[..., None, :]
        return S_bhde, jnp.einsum("bhd,bhde->bhe", q_bhd, S_bhde)

    inputs = (q_bthd, k_bthd, v_bthe, beta_bth, g_bth) + (() if reset_bt is None else (reset_bt,))
    S, o_tbhe = lax.scan(step, S0_bhde, tuple(jnp.moveaxis(x, 1, 0) for x in inputs))
    return jnp.moveaxis(o_tbhe, 0, 1), S


def _segsum(a):
    """a [..., c] -> s [..., c(i), c(j)] with s_ij = a_{j+1} + ... + a_i for j <= i, 0 above (masked cumsum)."""
    n = a.shape[-1]
    a_ij = jnp.where(jnp.tril(jnp.ones((n, n), dtype=bool), k=-1), a[..., :, None], 0.0)
    return jnp.cumsum(a_ij, axis=-2)


def unit_lower_inverse(L):
    """(I + L)^-1 for L [..., c, c] strictly lower triangular (entries on and above the diagonal are ignored).

    By blocks, bottom up: the inverse of [[A, 0], [C, D]] is [[A^-1, 0], [-D^-1 C A^-1, D^-1]], so each level
    doubles the diagonal blocks with two products per pair; c is padded to a power of two n with the identity.
    n (n^2 - 1) / 3 multiply-adds per matrix, all batched matrix products (autodiff through them).
    """
    c = L.shape[-1]
    n = 1 << max(c - 1, 0).bit_length()
    M = jnp.tril(L, k=-1)
    if n != c:
        M = jnp.pad(M, [(0, 0)] * (M.ndim - 2) + [(0, n - c), (0, n - c)])
    lead = M.shape[:-2]
    inv = jnp.ones((*lead, n, 1, 1), M.dtype)  # the n diagonal 1 x 1 blocks
    size = 1
    while size < n:
        pairs = n // (2 * size)
        A, D = inv[..., 0::2, :, :], inv[..., 1::2, :, :]  # [..., pairs, size, size]
        blocks = M.reshape(*lead, pairs, 2, size, pairs, 2, size)
        C = jnp.moveaxis(jnp.diagonal(blocks, axis1=-6, axis2=-3), -1, -5)[..., 1, :, 0, :]  # [..., pairs, s, s]
        low = -(D @ C) @ A
        top = jnp.concatenate([A, jnp.zeros_like(A)], axis=-1)
        inv = jnp.concatenate([top, jnp.concatenate([low, D], axis=-1)], axis=-2)
        size *= 2
    return inv[..., 0, :c, :c]


# Above this many chunks (and without segments) the chunked form runs as one scan over the chunks, one chunk's
# working set at a time; at or below it as one batched pass (at 1,024 tokens in chunks of 64 the two took 9.1 and
# 7.9 ms; the batched pass's time grows faster beyond). The accounting counts the batched pass's products.
SCAN_ABOVE_CHUNKS = 16
SCAN_UNROLL = 1  # the chunk scan's unroll; scaling.accounting_xla sets True (XLA counts a loop body once)


def _chunked_scan(q_bthd, k_bthd, v_bthe, beta_bth, g_bth, S0_bhde, *, chunk):
    """The WY / UT form without segments as one scan over the chunks: each step solves its chunk, reads the
    entering state out and updates it (S_out = gamma_c S + K_end^T U, U = U~ - W S)."""
    b, t, h, dk = q_bthd.shape
    nc = -(-t // chunk)
    pad = nc * chunk - t

    def split(x):  # [b, t, h(, dim)] -> [n, b, h, c(, dim)], padded with zeros (beta = 0, g = 0: no update)
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
        x = x.reshape(b, nc, chunk, *x.shape[2:])
        return jnp.moveaxis(jnp.moveaxis(x, 2, 3) if x.ndim == 5 else jnp.moveaxis(x, 2, -1), 1, 0)

    lower_ij = jnp.tril(jnp.ones((chunk, chunk), dtype=bool))
    strict_ij = jnp.tril(jnp.ones((chunk, chunk), dtype=bool), k=-1)

    def step(S_bhde, xs):
        q, k, v, beta, g = xs  # [b, h, c, d] / [b, h, c]
        Gam = jnp.where(lower_ij, jnp.exp(_segsum(g)), 0.0)
        gamma = jnp.exp(jnp.cumsum(g, axis=-1))
        kk = jnp.einsum("bhid,bhjd->bhij", k, k)
        L = jnp.where(strict_ij, beta[..., :, None] * kk * Gam, 0.0)
        rhs = jnp.concatenate([beta[..., None] * v, (beta * gamma)[..., None] * k], axis=-1)
        sol = unit_lower_inverse(L) @ rhs
        U = sol[..., : v.shape[-1]] - sol[..., v.shape[-1]:] @ S_bhde
        P = jnp.einsum("bhid,bhjd->bhij", q, k) * Gam
        o = gamma[..., None] * (q @ S_bhde) + P @ U
        k_end = k * Gam[..., -1, :, None]
        S_out = gamma[..., -1, None, None] * S_bhde + jnp.einsum("bhjd,bhje->bhde", k_end, U)
        return S_out, o

    xs = tuple(map(split, (q_bthd, k_bthd, v_bthe, beta_bth, g_bth)))
    S, o_nbhce = lax.scan(step, S0_bhde, xs, unroll=SCAN_UNROLL)
    return jnp.moveaxis(jnp.moveaxis(o_nbhce, 0, 1), 3, 2).reshape(b, nc * chunk, h, -1)[:, :t], S


def _chunked(q_bthd, k_bthd, v_bthe, beta_bth, g_bth, S0_bhde, *, chunk, masks: ChunkMasks | None = None):
    """WY / UT-transform form (module docstring); ``masks`` keep state from crossing a document start."""
    if masks is None and -(-q_bthd.shape[1] // chunk) > SCAN_ABOVE_CHUNKS:
        return _chunked_scan(q_bthd, k_bthd, v_bthe, beta_bth, g_bth, S0_bhde, chunk=chunk)
    b, t, h, dk = q_bthd.shape
    dv = v_bthe.shape[-1]
    nc = -(-t // chunk)
    pad = nc * chunk - t

    def split(x, heads_last=False):  # [b, t, ...] -> [b, n, c, ...] (or [b, n, h, c] for per-head scalars)
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
        x = x.reshape(b, nc, chunk, *x.shape[2:])
        return jnp.moveaxis(x, 2, -1) if heads_last else jnp.moveaxis(x, 2, 3)  # [b, n, h, c(, dim)]

    q_bnhid, k_bnhjd, v_bnhje = split(q_bthd), split(k_bthd), split(v_bthe)
    beta_bnhc, g_bnhc = split(beta_bth, True), split(g_bth, True)

    lower_ij = jnp.tril(jnp.ones((chunk, chunk), dtype=bool))
    strict_ij = jnp.tril(jnp.ones((chunk, chunk), dtype=bool), k=-1)
    if masks is not None:
        same = masks.same[:, :, None]  # [b, n, 1, i, j]
        lower_ij, strict_ij = lower_ij & same, strict_ij & same
    seg_bnhij = _segsum(g_bnhc)
    Gam_bnhij = jnp.where(lower_ij, jnp.exp(seg_bnhij), 0.0)
    gamma_bnhc = jnp.exp(jnp.cumsum(g_bnhc, axis=-1))
    to_end_bnhc = Gam_bnhij[..., -1, :]  # exp(b_c - b_j), already 0 across a document start
    decay_bnh = gamma_bnhc[..., -1]
    if masks is not None:
        gamma_bnhc = jnp.where(masks.from_start[:, :, None], gamma_bnhc, 0.0)
        decay_bnh = jnp.where(masks.through[:, :, None], decay_bnh, 0.0)

    # The UT transform: one unit lower-triangular solve for both right-hand sides.
    kk_bnhij = jnp.einsum("bnhid,bnhjd->bnhij", k_bnhjd, k_bnhjd)
    L_bnhij = jnp.where(strict_ij, beta_bnhc[..., :, None] * kk_bnhij * Gam_bnhij, 0.0)
    rhs = jnp.concatenate([beta_bnhc[..., None] * v_bnhje, (beta_bnhc * gamma_bnhc)[..., None] * k_bnhjd], axis=-1)
    sol = unit_lower_inverse(L_bnhij) @ rhs
    Ut_bnhje, W_bnhjd = sol[..., :dv], sol[..., dv:]

    # Chunk-to-chunk: S_out = decay S_in + K_end^T U~ - (K_end^T W) S_in.
    k_end_bnhjd = k_bnhjd * to_end_bnhc[..., None]
    add_nbhde = jnp.moveaxis(jnp.einsum("bnhjd,bnhje->bnhde", k_end_bnhjd, Ut_bnhje), 1, 0)
    mix_nbhdf = jnp.moveaxis(jnp.einsum("bnhjd,bnhjf->bnhdf", k_end_bnhjd, W_bnhjd), 1, 0)

    def carry(S_bhde, inputs):
        decay_bh, add_bhde, mix_bhdf = inputs
        S_out = decay_bh[..., None, None] * S_bhde + add_bhde - mix_bhdf @ S_bhde
        return S_out, S_bhde

    S, S_in_nbhde = lax.scan(carry, S0_bhde, (jnp.moveaxis(decay_bnh, 1, 0), add_nbhde, mix_nbhdf))
    S_in_bnhde = jnp.moveaxis(S_in_nbhde, 0, 1)

    # Outputs: the entering state decayed to each token plus the intra-chunk updates U = U~ - W S_in.
    U_bnhje = Ut_bnhje - W_bnhjd @ S_in_bnhde
    P_bnhij = jnp.einsum("bnhid,bnhjd->bnhij", q_bnhid, k_bnhjd) * Gam_bnhij
    o = gamma_bnhc[..., None] * (q_bnhid @ S_in_bnhde) + P_bnhij @ U_bnhje  # [b, n, h, c, e]
    return jnp.moveaxis(o, 3, 2).reshape(b, nc * chunk, h, dv)[:, :t], S
