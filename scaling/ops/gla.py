"""Gated linear attention (GLA; Yang, Wang, Shen, Panda, Kim 2024): linear attention with a gate per key channel.

Per head, with q_t, k_t [dk], v_t [dv] and a log gate ``gk_t [dk] <= 0`` per key channel::

    S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T          S: [dk, dv] float32
    o_t = scale * S_t^T q_t                            scale = dk^-1/2 unless given

Unrolled: ``o_i = scale * sum_{j <= i} sum_c q_ic k_jc exp(gk_{j+1,c} + ... + gk_{i,c}) v_j`` (plus the
initial state decayed to i). Three forms of one function, all through ``gla(form=...)``:

* ``"parallel"``: the T x T definition with the exact per-channel decay of every pair (a [dk, T, T] masked
  cumulative sum per head, so O(T^2 dk) memory): for short sequences and checks.
* ``"recurrent"``: the recurrence, one ``lax.scan`` step per token (the decode path).
* ``"chunked"`` (default, training): chunks of ``c = chunk_size`` tokens, no secondary chunking. Inside chunk
  n let ``b_t = gk_{start} + ... + gk_t`` (the local cumulative log gate, per channel, <= 0) and ``a = b_{end}``
  the chunk's total. Then with ``r = a / 2`` (the chunk's midpoint in log space)::

      intra:  A_ij = (q_i o exp(b_i - r)) . (k_j o exp(r - b_j))  for j <= i,   o_i = A v
      inter:  o_i += (q_i o exp(b_i)) . S_in                     (exponent <= 0)
      state:  S_out = diag(exp(a)) S_in + sum_j (k_j o exp(a - b_j)) v_j^T   (exponent <= 0)

  Only the intra-chunk factors have exponents of either sign, and relative to the midpoint they lie in
  [a/2, -a/2]. **Numerical limit:** the chunked form is exact while every chunk's total log gate per channel
  stays above about -170 (fp32 exp overflows past +88), e.g. chunk_size = 64 with log_gk >= -2.6 per step
  on average; beyond that the factors overflow to inf. Use smaller chunks for stronger gates (GLA's usual
  ``logsigmoid(x) / 16`` gates are far inside), or the parallel / recurrent forms, which have no such limit.
  A ragged last chunk is padded with k = v = 0 and gk = 0, so the padding changes nothing.

Cost of the chunked form per token and head (multiply-adds): ``c (dk + dv)`` for the intra block (dense c x c,
half masked), ``2 dk dv`` for the state query and update, ``dk dv / c`` for the chunk-to-chunk decay.

Packed rows: with ``segment_ids [batch, time]`` (scaling.ops.segments) the state restarts from zero at each
document's first token (the initial state belongs to the call's first document); pairs across documents are
masked and the chunked form's decay factors zeroed by the masks of segments.chunk_masks, after the exp.

Float32 throughout; o comes back in q.dtype and the state is float32. Axis letters: b batch, t time, n chunk,
i/j position in a chunk (query / key), h head, d key dim, e value dim.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from scaling.ops.checks import check_form_and_chunk, check_qkv, check_scale, check_state_matrix
from scaling.ops.segments import ChunkMasks, check_segment_ids, chunk_masks, resets, run_index

FORMS = ("parallel", "chunked", "recurrent")

__all__ = ["gla", "gla_reference", "gla_state_shape", "gla_state_size", "FORMS"]


def gla_state_shape(dk: int, dv: int) -> tuple[int, int]:
    """The recurrent state per (batch, head): S [dk, dv] float32."""
    return (int(dk), int(dv))


def gla_state_size(dk: int, dv: int) -> int:
    """Elements of the state per (batch, head): dk * dv."""
    return math.prod(gla_state_shape(dk, dv))


# ------------------------------------------------------------------------------------------- validation


def _validate(q, k, v, log_gk, *, scale, initial_state, fn):
    """Checks shapes and scale; returns (b, t, h, dk, dv). Raises ValueError with one line."""
    b, t, h, dk, dv = check_qkv(q, k, v, fn)
    if log_gk.ndim != 4:
        raise ValueError(f"{fn}: log_gk must have rank 4 [batch, time, heads, dim]; got shape {tuple(log_gk.shape)}")
    if log_gk.shape != q.shape:
        raise ValueError(f"{fn}: log_gk must have the shape of q, {tuple(q.shape)}; got {tuple(log_gk.shape)}")
    check_scale(scale, fn)
    check_state_matrix(initial_state, (b, h, dk, dv), fn)
    return b, t, h, dk, dv


def _prepare(q, k, v, log_gk, initial_state, scale):
    b, t, h, dk = q.shape
    f32 = jnp.float32
    scale = dk ** -0.5 if scale is None else float(scale)
    S0 = jnp.zeros((b, h, dk, v.shape[-1]), f32) if initial_state is None else initial_state.astype(f32)
    return q.astype(f32) * scale, k.astype(f32), v.astype(f32), log_gk.astype(f32), S0


def _asarrays(*arrays):
    return tuple(None if a is None else jnp.asarray(a) for a in arrays)


# ------------------------------------------------------------------------------------------- public API


def gla(q, k, v, log_gk, *, scale=None, form="chunked", chunk_size=64, initial_state=None, return_state=False,
        segment_ids=None):
    """Gated linear attention (module docstring for the math, the forms and the chunked form's limit).

    Args:
      q, k: [batch, time, heads, dk]; v: [batch, time, heads, dv].
      log_gk: [batch, time, heads, dk] log gates per key channel, <= 0 (not checked: values are traced).
      scale: query scale, default dk^-1/2.
      form: "chunked" (default), "parallel" or "recurrent"; all compute the same function.
      chunk_size: tokens per chunk of the chunked form (clipped to time); ignored by the other forms.
      initial_state: optional [batch, heads, dk, dv] state entering the call (zeros if None).
      return_state: also return the float32 final state (pass it back as initial_state to continue).
      segment_ids: optional [batch, time] int document ids of packed rows (scaling.ops.segments).

    Returns o [batch, time, heads, dv] in q.dtype, or (o, state) with return_state.
    """
    check_form_and_chunk(form, chunk_size, FORMS, "gla")
    q, k, v, log_gk, initial_state = _asarrays(q, k, v, log_gk, initial_state)
    b, t, h, dk, dv = _validate(q, k, v, log_gk, scale=scale, initial_state=initial_state, fn="gla")
    segment_ids = check_segment_ids(segment_ids, b, t, "gla")
    q32, k32, v32, g32, S0 = _prepare(q, k, v, log_gk, initial_state, scale)
    if t == 0:
        o, S = jnp.zeros((b, 0, h, dv), jnp.float32), S0
    elif form == "recurrent":
        o, S = _recurrent(q32, k32, v32, g32, S0, None if segment_ids is None else resets(segment_ids))
    elif form == "parallel":
        o, S = _parallel(q32, k32, v32, g32, S0, segment_ids)
    else:
        chunk = min(int(chunk_size), t)
        masks = None if segment_ids is None else chunk_masks(segment_ids, -(-t // chunk), chunk)
        o, S = _chunked(q32, k32, v32, g32, S0, chunk=chunk, masks=masks)
    o = o.astype(q.dtype)
    return (o, S) if return_state else o


def gla_reference(q, k, v, log_gk, *, scale=None, initial_state=None, return_state=False):
    """The GLA recurrence written step by step, for clarity (one lax.scan step per token, no segments).

    Same shapes as :func:`gla`; the tests also check it against an independent float64 loop."""
    q, k, v, log_gk, initial_state = _asarrays(q, k, v, log_gk, initial_state)
    b, t, h, dk, dv = _validate(q, k, v, log_gk, scale=scale, initial_state=initial_state, fn="gla_reference")
    q32, k32, v32, g32, S0 = _prepare(q, k, v, log_gk, initial_state, scale)

    def step(S, qkvg):
        q_t, k_t, v_t, g_t = qkvg
        S = jnp.exp(g_t)[..., None] * S + jnp.einsum("bhd,bhe->bhde", k_t, v_t)
        return S, jnp.einsum("bhd,bhde->bhe", q_t, S)

    S, o_tbhe = lax.scan(step, S0, tuple(jnp.moveaxis(x, 1, 0) for x in (q32, k32, v32, g32)))
    o = jnp.moveaxis(o_tbhe, 0, 1).astype(q.dtype)
    return (o, S) if return_state else o


# ------------------------------------------------------------------------------------------- internals


def _recurrent(q_bthd, k_bthd, v_bthe, g_bthd, S0_bhde, reset_bt=None):
    def step(S_bhde, inputs):
        q_bhd, k_bhd, v_bhe, g_bhd = inputs[:4]
        decay_bhd = jnp.exp(g_bhd)
        if reset_bt is not None:
            decay_bhd = jnp.where(inputs[4][:, None, None], 0.0, decay_bhd)
        S_bhde = decay_bhd[..., None] * S_bhde + k_bhd[..., None] * v_bhe[..., None, :]
        return S_bhde, jnp.einsum("bhd,bhde->bhe", q_bhd, S_bhde)

    inputs = (q_bthd, k_bthd, v_bthe, g_bthd) + (() if reset_bt is None else (reset_bt,))
    S, o_tbhe = lax.scan(step, S0_bhde, tuple(jnp.moveaxis(x, 1, 0) for x in inputs))
    return jnp.moveaxis(o_tbhe, 0, 1), S


def _segsum(a):
    """a [..., T] -> s [..., T(i), T(j)] with s_ij = a_{j+1} + ... + a_i for j <= i, 0 above (masked cumsum)."""
    n = a.shape[-1]
    a_ij = jnp.where(jnp.tril(jnp.ones((n, n), dtype=bool), k=-1), a[..., :, None], 0.0)
    return jnp.cumsum(a_ij, axis=-2)


def _parallel(q_bthd, k_bthd, v_bthe, g_bthd, S0_bhde, segment_ids):
    """The T x T form with the exact decay of every pair and channel: o and the final state."""
    t = q_bthd.shape[1]
    keep_ij = jnp.tril(jnp.ones((t, t), dtype=bool))
    first_bt = jnp.ones(q_bthd.shape[:2], dtype=bool)  # the initial state reaches the token
    through_b = jnp.ones(q_bthd.shape[:1], dtype=bool)  # the initial state survives the call
    if segment_ids is not None:
        run_bt = run_index(segment_ids)
        keep_ij = keep_ij & (run_bt[:, None, None, :, None] == run_bt[:, None, None, None, :])
        first_bt, through_b = run_bt == 0, run_bt[:, -1] == 0
    W_bhdij = jnp.where(keep_ij, jnp.exp(_segsum(jnp.moveaxis(g_bthd, 1, -1))), 0.0)
    A_bhij = jnp.einsum("bihd,bjhd,bhdij->bhij", q_bthd, k_bthd, W_bhdij)
    o = jnp.einsum("bhij,bjhe->bihe", A_bhij, v_bthe)
    G_bthd = jnp.cumsum(g_bthd, axis=1)
    q0_bthd = jnp.where(first_bt[..., None, None], q_bthd * jnp.exp(G_bthd), 0.0)
    o = o + jnp.einsum("bthd,bhde->bthe", q0_bthd, S0_bhde)
    decay_bhd = jnp.where(through_b[:, None, None], jnp.exp(G_bthd[:, -1]), 0.0)
    S = decay_bhd[..., None] * S0_bhde + jnp.einsum("bhdj,bjhd,bjhe->bhde", W_bhdij[..., -1, :], k_bthd, v_bthe)
    return o, S


# Above this many chunks (and without segments) the chunked form runs as one scan over the chunks; at or below it
# as one batched pass, whose few large ops beat a scan's per-step cost (measured, 4 heads of 64 on 2 cores: 1,024
# tokens 5.3 ms batched vs 11.4 ms scanned; 16,384 tokens 140 vs 144 ms, but the batched form's time grows 6.5x
# from 4k to 16k against the scan's 3.9x).
SCAN_ABOVE_CHUNKS = 4
SCAN_UNROLL = 1  # the chunk scan's unroll; scaling.accounting_xla sets True (XLA counts a loop body once)


def _chunked_scan(q_bthd, k_bthd, v_bthe, g_bthd, S0_bhde, *, chunk):
    """Chunked GLA without segments as one scan over the chunks: each step does one chunk's intra-chunk block, its
    read-out of the entering state and its state update, so the working set is one chunk whatever T (the batched
    form below streams [n, ...] arrays through memory: time grew 6.5x from 4k to 16k tokens on a 2-core CPU)."""
    b, t, h, dk = q_bthd.shape
    nc = -(-t // chunk)
    pad = nc * chunk - t

    def split(x):  # [b, t, ...] -> [n, b, c, ...], padding with zeros (gk = 0: no decay; k = v = 0: no input)
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
        return jnp.moveaxis(x.reshape(b, nc, chunk, *x.shape[2:]), 1, 0)

    keep_ij = jnp.tril(jnp.ones((chunk, chunk), dtype=bool))

    def step(S_bhde, xs):
        q_bihd, k_bjhd, v_bjhe, g_bchd = xs
        bcum = jnp.cumsum(g_bchd, axis=1)
        total_bhd = bcum[:, -1]
        mid = 0.5 * total_bhd[:, None]
        A_bhij = jnp.einsum("bihd,bjhd->bhij", q_bihd * jnp.exp(bcum - mid), k_bjhd * jnp.exp(mid - bcum))
        A_bhij = jnp.where(keep_ij, A_bhij, 0.0)
        o = jnp.einsum("bhij,bjhe->bihe", A_bhij, v_bjhe)
        o = o + jnp.einsum("bihd,bhde->bihe", q_bihd * jnp.exp(bcum), S_bhde)
        k_end = k_bjhd * jnp.exp(total_bhd[:, None] - bcum)
        S_out = jnp.exp(total_bhd)[..., None] * S_bhde + jnp.einsum("bjhd,bjhe->bhde", k_end, v_bjhe)
        return S_out, o

    S, o_nbihe = lax.scan(step, S0_bhde, tuple(map(split, (q_bthd, k_bthd, v_bthe, g_bthd))), unroll=SCAN_UNROLL)
    return jnp.moveaxis(o_nbihe, 0, 1).reshape(b, nc * chunk, h, -1)[:, :t], S


def _chunked(q_bthd, k_bthd, v_bthe, g_bthd, S0_bhde, *, chunk, masks: ChunkMasks | None = None):
    """Chunked GLA (module docstring); ``masks`` zero the decay factors that cross a document start."""
    if masks is None and -(-q_bthd.shape[1] // chunk) > SCAN_ABOVE_CHUNKS:
        return _chunked_scan(q_bthd, k_bthd, v_bthe, g_bthd, S0_bhde, chunk=chunk)
    b, t, h, dk = q_bthd.shape
    nc = -(-t // chunk)
    pad = nc * chunk - t

    def split(x):  # [b, t, ...] -> [b, n, c, ...], padding with zeros (gk = 0: no decay; k = v = 0: no input)
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
        return x.reshape(b, nc, chunk, *x.shape[2:])

    q_bnihd, k_bnjhd, v_bnjhe, g_bnchd = map(split, (q_bthd, k_bthd, v_bthe, g_bthd))
    bcum_bnchd = jnp.cumsum(g_bnchd, axis=2)  # local cumulative log gate, <= 0, non-increasing
    total_bnhd = bcum_bnchd[:, :, -1]
    mid_bn1hd = 0.5 * total_bnhd[:, :, None]

    # 1. Intra-chunk: factors relative to the chunk's log-space midpoint, exponents within [a/2, -a/2].
    A_bnhij = jnp.einsum("bnihd,bnjhd->bnhij", q_bnihd * jnp.exp(bcum_bnchd - mid_bn1hd),
                         k_bnjhd * jnp.exp(mid_bn1hd - bcum_bnchd))
    keep_ij = jnp.tril(jnp.ones((chunk, chunk), dtype=bool))
    if masks is not None:
        keep_ij = keep_ij & masks.same[:, :, None]  # [b, n, 1, i, j]
    A_bnhij = jnp.where(keep_ij, A_bnhij, 0.0)  # where, not multiply: masked entries may be large
    o = jnp.einsum("bnhij,bnjhe->bnihe", A_bnhij, v_bnjhe)

    # 2. What each chunk adds to the state by its end, and its total decay (exponents <= 0).
    k_end_bnjhd = k_bnjhd * jnp.exp(total_bnhd[:, :, None] - bcum_bnchd)
    q_start_bnihd = q_bnihd * jnp.exp(bcum_bnchd)
    decay_nbhd = jnp.moveaxis(jnp.exp(total_bnhd), 1, 0)
    if masks is not None:
        k_end_bnjhd = jnp.where(masks.to_end[..., None, None], k_end_bnjhd, 0.0)
        q_start_bnihd = jnp.where(masks.from_start[..., None, None], q_start_bnihd, 0.0)
        decay_nbhd = jnp.where(jnp.moveaxis(masks.through, 1, 0)[..., None, None], decay_nbhd, 0.0)
    S_add_nbhde = jnp.einsum("bnjhd,bnjhe->nbhde", k_end_bnjhd, v_bnjhe)

    # 3. Chunk-to-chunk recurrence, emitting the state entering each chunk; 4. that state read out.
    def carry(S_bhde, inputs):
        decay_bhd, add_bhde = inputs
        return decay_bhd[..., None] * S_bhde + add_bhde, S_bhde

    S, S_in_nbhde = lax.scan(carry, S0_bhde, (decay_nbhd, S_add_nbhde))
    o = o + jnp.einsum("bnihd,nbhde->bnihe", q_start_bnihd, S_in_nbhde)
    return o.reshape(b, nc * chunk, h, -1)[:, :t], S
