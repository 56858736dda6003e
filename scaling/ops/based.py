"""Based's linear attention: the second-order Taylor kernel of exp (Arora et al. 2024, "Simple linear attention
language models balance the recall-throughput tradeoff"). The sliding-window attention that the Based layer
adds beside it is not part of this op.

Per head, with ``s_ij = scale * q_i . k_j`` (scale = dk^-1/2 unless given)::

    phi_ij = 1 + s_ij + s_ij^2 / 2                      (> 0: it is ((s + 1)^2 + 1) / 2)
    o_i    = sum_{j <= i} phi_ij v_j / (sum_{j <= i} phi_ij + eps)

Because phi_ij = f(scale q_i) . f(k_j) for the feature map ``f(x) = [1, x, sympow2(x) / sqrt(2)]`` (scaling.ops.
sympow: the compact symmetric square, one feature per pair a <= b weighted so that sympow2(x) . sympow2(y) =
(x . y)^2 exactly), the op is a linear recurrence over a constant-size state holding the 0th, 1st and
2nd-order moments of the keys, weighted by the values and unweighted (the normaliser)::

    S_t = S_{t-1} + f(k_t) v_t^T    [D, dv]        z_t = z_{t-1} + f(k_t)    [D],   D = 1 + dk + dk (dk + 1) / 2
    o_t = f(scale q_t)^T S_t / (f(scale q_t)^T z_t + eps)

(rows 0, 1..dk and dk+1.. of S are the 0th, 1st and 2nd moments). Forms, all through ``based(form=...)``:

* ``"parallel"``: the T x T definition (phi from s directly, no features except to read the initial state).
* ``"chunked"`` (default): phi over each chunk's c x c block plus f(scale q)^T (S, z) of the state entering the
  chunk; lax.scan adds each chunk's sum of f(k_j) v_j^T and f(k_j). There is no decay, so nothing overflows.
* ``"recurrent"``: one token per lax.scan step (the decode path).

Cost of the chunked form per token and head (multiply-adds): ``c (dk + dv + 1)`` for the intra block (dense
c x c, half masked) and ``2 D (dv + 1)`` for the state read-out and update, plus ~``2 D`` to form f(q), f(k).

Packed rows: with ``segment_ids [batch, time]`` (scaling.ops.segments) the state restarts from zero at each
document's first token (the initial state belongs to the call's first document), by the masks of
segments.chunk_masks. Float32 throughout; o comes back in q.dtype and the state is float32.
Axis letters: b batch, t time, n chunk, i/j position in a chunk (query / key), h head, d key dim, e value dim,
f feature (D).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scaling.ops.checks import check_form_and_chunk, check_qkv, check_scale
from scaling.ops.segments import ChunkMasks, check_segment_ids, chunk_masks, resets, run_index
from scaling.ops.sympow import sympow_dim, sympow_features

FORMS = ("parallel", "chunked", "recurrent")

__all__ = ["BasedState", "based", "based_reference", "based_features", "based_feature_dim", "based_state_shape",
           "based_state_size", "FORMS"]


class BasedState(NamedTuple):
    """The state of :func:`based` per sequence and head (a pytree), float32.

    S: [batch, heads, D, dv]  sum_j f(k_j) v_j^T        z: [batch, heads, D]  sum_j f(k_j)
    """

    S: jax.Array
    z: jax.Array


def based_feature_dim(dk: int) -> int:
    """D = 1 + dk + dk (dk + 1) / 2: the features of the 0th, 1st and (compact, symmetric) 2nd order."""
    return 1 + int(dk) + sympow_dim(int(dk), 2)


def based_state_shape(dk: int, dv: int) -> tuple[tuple[int, int], tuple[int]]:
    """Shapes of the state per (batch, head): (S [D, dv], z [D])."""
    D = based_feature_dim(dk)
    return ((D, int(dv)), (D,))


def based_state_size(dk: int, dv: int) -> int:
    """Elements of the state per (batch, head): D (dv + 1)."""
    return sum(math.prod(s) for s in based_state_shape(dk, dv))


def based_features(x):
    """f(x) = [1, x, sympow2(x) / sqrt(2)]: x [..., d] -> [..., D] with f(x) . f(y) = 1 + x.y + (x.y)^2 / 2."""
    x = jnp.asarray(x)
    return jnp.concatenate([jnp.ones_like(x[..., :1]), x, sympow_features(x, 2) * np.float32(0.5 ** 0.5)], axis=-1)


# ------------------------------------------------------------------------------------------- validation


def _validate(q, k, v, *, scale, eps, initial_state, fn):
    """Checks shapes and options; returns (b, t, h, dk, dv). Raises ValueError with one line."""
    b, t, h, dk, dv = check_qkv(q, k, v, fn)
    check_scale(scale, fn)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"{fn}: eps = {eps!r}: must be a float >= 0")
    if initial_state is not None:
        D = based_feature_dim(dk)
        if not (isinstance(initial_state, tuple) and len(initial_state) == 2):
            raise ValueError(f"{fn}: initial_state must be None or a BasedState(S, z); got "
                             f"{type(initial_state).__name__}")
        S0, z0 = initial_state
        if tuple(jnp.shape(S0)) != (b, h, D, dv) or tuple(jnp.shape(z0)) != (b, h, D):
            raise ValueError(f"{fn}: initial_state must have S [batch, heads, D, dv] = {(b, h, D, dv)} and z "
                             f"[batch, heads, D] = {(b, h, D)} (D = based_feature_dim({dk})); got S "
                             f"{tuple(jnp.shape(S0))} and z {tuple(jnp.shape(z0))}")
    return b, t, h, dk, dv


def _prepare(q, k, v, initial_state, scale):
    b, t, h, dk = q.shape
    f32 = jnp.float32
    scale = dk ** -0.5 if scale is None else float(scale)
    D, dv = based_feature_dim(dk), v.shape[-1]
    if initial_state is None:
        S0, z0 = jnp.zeros((b, h, D, dv), f32), jnp.zeros((b, h, D), f32)
    else:
        S0, z0 = (jnp.asarray(x, f32) for x in initial_state)
    return q.astype(f32) * scale, k.astype(f32), v.astype(f32), S0, z0


# ------------------------------------------------------------------------------------------- public API


def based(q, k, v, *, scale=None, form="chunked", chunk_size=64, eps=1e-6, initial_state=None, return_state=False,
          segment_ids=None):
    """Based's Taylor linear attention (module docstring for the math and the forms).

    Args:
      q, k: [batch, time, heads, dk]; v: [batch, time, heads, dv].
      scale: s_ij = scale * q_i . k_j, default dk^-1/2.
      form: "chunked" (default), "parallel" or "recurrent"; all compute the same function.
      chunk_size: tokens per chunk of the chunked form (clipped to time); ignored by the other forms.
      eps: added to the normaliser.
      initial_state: optional BasedState(S [batch, heads, D, dv], z [batch, heads, D]) (zeros if None).
      return_state: also return the float32 final BasedState (pass it back as initial_state to continue).
      segment_ids: optional [batch, time] int document ids of packed rows (scaling.ops.segments).

    Returns o [batch, time, heads, dv] in q.dtype, or (o, BasedState) with return_state.
    """
    check_form_and_chunk(form, chunk_size, FORMS, "based")
    q, k, v = (jnp.asarray(x) for x in (q, k, v))
    b, t, h, dk, dv = _validate(q, k, v, scale=scale, eps=eps, initial_state=initial_state, fn="based")
    segment_ids = check_segment_ids(segment_ids, b, t, "based")
    q32, k32, v32, S0, z0 = _prepare(q, k, v, initial_state, scale)
    if t == 0:
        num, den, S, z = jnp.zeros((b, 0, h, dv)), jnp.zeros((b, 0, h)), S0, z0
    elif form == "recurrent":
        num, den, S, z = _recurrent(q32, k32, v32, S0, z0, None if segment_ids is None else resets(segment_ids))
    elif form == "parallel":
        num, den, S, z = _parallel(q32, k32, v32, S0, z0, segment_ids)
    else:
        chunk = min(int(chunk_size), t)
        masks = None if segment_ids is None else chunk_masks(segment_ids, -(-t // chunk), chunk)
        num, den, S, z = _chunked(q32, k32, v32, S0, z0, chunk=chunk, masks=masks)
    o = (num / (den[..., None] + eps)).astype(q.dtype)
    return (o, BasedState(S, z)) if return_state else o


def based_reference(q, k, v, *, scale=None, eps=1e-6, initial_state=None, return_state=False):
    """The T x T definition written plainly (no segments); the initial state is read and the final state
    formed with :func:`based_features`. Same shapes as :func:`based`."""
    q, k, v = (jnp.asarray(x) for x in (q, k, v))
    b, t, h, dk, dv = _validate(q, k, v, scale=scale, eps=eps, initial_state=initial_state, fn="based_reference")
    q32, k32, v32, S0, z0 = _prepare(q, k, v, initial_state, scale)
    s = jnp.einsum("bihd,bjhd->bhij", q32, k32)
    phi = jnp.where(jnp.tril(jnp.ones((t, t), dtype=bool)), 1.0 + s + 0.5 * s * s, 0.0)
    fq = based_features(q32)
    num = jnp.einsum("bhij,bjhe->bihe", phi, v32) + jnp.einsum("bihf,bhfe->bihe", fq, S0)
    den = jnp.einsum("bhij->bih", phi) + jnp.einsum("bihf,bhf->bih", fq, z0)
    o = (num / (den[..., None] + eps)).astype(q.dtype)
    fk = based_features(k32)
    state = BasedState(S0 + jnp.einsum("bjhf,bjhe->bhfe", fk, v32), z0 + jnp.einsum("bjhf->bhf", fk))
    return (o, state) if return_state else o


# ------------------------------------------------------------------------------------------- internals


def _recurrent(q_bthd, k_bthd, v_bthe, S0_bhfe, z0_bhf, reset_bt=None):
    def step(carry, inputs):
        S_bhfe, z_bhf = carry
        fq_bhf, fk_bhf, v_bhe = based_features(inputs[0]), based_features(inputs[1]), inputs[2]
        if reset_bt is not None:
            keep_b = ~inputs[3]
            S_bhfe, z_bhf = S_bhfe * keep_b[:, None, None, None], z_bhf * keep_b[:, None, None]
        S_bhfe = S_bhfe + fk_bhf[..., None] * v_bhe[..., None, :]
        z_bhf = z_bhf + fk_bhf
        num = jnp.einsum("bhf,bhfe->bhe", fq_bhf, S_bhfe)
        return (S_bhfe, z_bhf), (num, jnp.einsum("bhf,bhf->bh", fq_bhf, z_bhf))

    inputs = (q_bthd, k_bthd, v_bthe) + (() if reset_bt is None else (reset_bt,))
    (S, z), (num_t, den_t) = lax.scan(step, (S0_bhfe, z0_bhf), tuple(jnp.moveaxis(x, 1, 0) for x in inputs))
    return jnp.moveaxis(num_t, 0, 1), jnp.moveaxis(den_t, 0, 1), S, z


def _parallel(q_bthd, k_bthd, v_bthe, S0_bhfe, z0_bhf, segment_ids):
    t = q_bthd.shape[1]
    keep_ij = jnp.tril(jnp.ones((t, t), dtype=bool))
    first_bt = jnp.ones(q_bthd.shape[:2], dtype=bool)  # the initial state reaches the token
    last_bt = jnp.ones(q_bthd.shape[:2], dtype=bool)  # the token is in the call's last document
    through_b = jnp.ones(q_bthd.shape[:1], dtype=bool)  # the initial state survives the call
    if segment_ids is not None:
        run_bt = run_index(segment_ids)
        keep_ij = keep_ij & (run_bt[:, None, :, None] == run_bt[:, None, None, :])
        first_bt, last_bt, through_b = run_bt == 0, run_bt == run_bt[:, -1:], run_bt[:, -1] == 0
    s = jnp.einsum("bihd,bjhd->bhij", q_bthd, k_bthd)
    phi = jnp.where(keep_ij, 1.0 + s + 0.5 * s * s, 0.0)
    fq = jnp.where(first_bt[..., None, None], based_features(q_bthd), 0.0)
    num = jnp.einsum("bhij,bjhe->bihe", phi, v_bthe) + jnp.einsum("bihf,bhfe->bihe", fq, S0_bhfe)
    den = jnp.einsum("bhij->bih", phi) + jnp.einsum("bihf,bhf->bih", fq, z0_bhf)
    fk = jnp.where(last_bt[..., None, None], based_features(k_bthd), 0.0)
    keep_b = through_b.astype(jnp.float32)
    S = keep_b[:, None, None, None] * S0_bhfe + jnp.einsum("bjhf,bjhe->bhfe", fk, v_bthe)
    z = keep_b[:, None, None] * z0_bhf + jnp.einsum("bjhf->bhf", fk)
    return num, den, S, z


# Above this many chunks (and without segments) the chunked form runs as one scan over the chunks, one chunk's
# working set at a time; at or below it as one batched pass (few large ops beat a scan's per-step cost).
SCAN_ABOVE_CHUNKS = 4
SCAN_UNROLL = 1  # the chunk scan's unroll; scaling.accounting_xla sets True (XLA counts a loop body once)


def _chunked_scan(q_bthd, k_bthd, v_bthe, S0_bhfe, z0_bhf, *, chunk):
    """The chunked form without segments as one scan over the chunks: each step does one chunk's intra block,
    its read-out of the entering moments and their update."""
    b, t, h, _ = q_bthd.shape
    nc = -(-t // chunk)
    pad = nc * chunk - t

    def split(x):  # [b, t, ...] -> [n, b, c, ...], zero-padded
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
        return jnp.moveaxis(x.reshape(b, nc, chunk, *x.shape[2:]), 1, 0)

    keep_ij = jnp.tril(jnp.ones((chunk, chunk), dtype=bool))
    real_nc = jnp.asarray((np.arange(nc * chunk) < t).reshape(nc, chunk))  # padded keys must not count in z

    def step(state, xs):
        S, z = state
        q, k, v, real_c = xs
        s = jnp.einsum("bihd,bjhd->bhij", q, k)
        phi = jnp.where(keep_ij, 1.0 + s + 0.5 * s * s, 0.0)
        fq = based_features(q)
        fk = jnp.where(real_c[None, :, None, None], based_features(k), 0.0)
        num = jnp.einsum("bhij,bjhe->bihe", phi, v) + jnp.einsum("bihf,bhfe->bihe", fq, S)
        den = jnp.einsum("bhij->bih", phi) + jnp.einsum("bihf,bhf->bih", fq, z)
        S_out = S + jnp.einsum("bjhf,bjhe->bhfe", fk, v)
        return (S_out, z + jnp.einsum("bjhf->bhf", fk)), (num, den)

    xs = (*map(split, (q_bthd, k_bthd, v_bthe)), real_nc)
    (S, z), (num, den) = lax.scan(step, (S0_bhfe, z0_bhf), xs, unroll=SCAN_UNROLL)
    dv = v_bthe.shape[-1]
    num = jnp.moveaxis(num, 0, 1).reshape(b, nc * chunk, h, dv)[:, :t]
    return num, jnp.moveaxis(den, 0, 1).reshape(b, nc * chunk, h)[:, :t], S, z


def _chunked(q_bthd, k_bthd, v_bthe, S0_bhfe, z0_bhf, *, chunk, masks: ChunkMasks | None = None):
    if masks is None and -(-q_bthd.shape[1] // chunk) > SCAN_ABOVE_CHUNKS:
        return _chunked_scan(q_bthd, k_bthd, v_bthe, S0_bhfe, z0_bhf, chunk=chunk)
    b, t, h, _ = q_bthd.shape
    nc = -(-t // chunk)
    pad = nc * chunk - t

    def split(x):  # [b, t, ...] -> [b, n, c, ...], zero-padded
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
        return x.reshape(b, nc, chunk, *x.shape[2:])

    q_bnihd, k_bnjhd, v_bnjhe = map(split, (q_bthd, k_bthd, v_bthe))

    # 1. Intra-chunk: phi over the c x c block.
    keep_ij = jnp.tril(jnp.ones((chunk, chunk), dtype=bool))
    if masks is not None:
        keep_ij = keep_ij & masks.same[:, :, None]  # [b, n, 1, i, j]
    s = jnp.einsum("bnihd,bnjhd->bnhij", q_bnihd, k_bnjhd)
    phi = jnp.where(keep_ij, 1.0 + s + 0.5 * s * s, 0.0)
    num = jnp.einsum("bnhij,bnjhe->bnihe", phi, v_bnjhe)
    den = jnp.einsum("bnhij->bnih", phi)

    # 2. Each chunk's moments; padded tokens (f(0) = [1, 0, ...]) must not count in z.
    fk = based_features(k_bnjhd)
    to_end_bnj = jnp.broadcast_to(jnp.asarray((np.arange(nc * chunk) < t).reshape(nc, chunk)), (b, nc, chunk))
    through_nb = jnp.ones((nc, b), dtype=bool)
    fq = based_features(q_bnihd)
    if masks is not None:
        to_end_bnj, through_nb = to_end_bnj & masks.to_end, jnp.moveaxis(masks.through, 1, 0)
        fq = jnp.where(masks.from_start[..., None, None], fq, 0.0)
    fk = jnp.where(to_end_bnj[..., None, None], fk, 0.0)
    add_S = jnp.einsum("bnjhf,bnjhe->nbhfe", fk, v_bnjhe)
    add_z = jnp.moveaxis(jnp.einsum("bnjhf->bnhf", fk), 1, 0)

    # 3. Chunk-to-chunk sums, emitting the state entering each chunk; 4. its read-out.
    def carry(state, inputs):
        through_b, dS, dz = inputs
        keep_b = through_b.astype(jnp.float32)
        S, z = state
        return (keep_b[:, None, None, None] * S + dS, keep_b[:, None, None] * z + dz), state

    (S, z), (S_in, z_in) = lax.scan(carry, (S0_bhfe, z0_bhf), (through_nb, add_S, add_z))
    num = num + jnp.einsum("bnihf,nbhfe->bnihe", fq, S_in)
    den = den + jnp.einsum("bnihf,nbhf->bnih", fq, z_in)
    dv = v_bthe.shape[-1]
    return num.reshape(b, nc * chunk, h, dv)[:, :t], den.reshape(b, nc * chunk, h)[:, :t], S, z
