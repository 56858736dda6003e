"""Power retention: symmetric-power linear attention with a per-head gate.

Power retention (Gelada, Buckman et al., "Scaling Context Requires Rethinking Attention", Manifest AI, 2025)
replaces the softmax weight of attention by an even power of the scaled dot product, times a decay:

    s_ij = scale * <q_i, k_j>,        G_t = sum_{u<=t} log g_u     (per kv head, log g_u <= 0)
    w_ij = s_ij^p * e^{G_i - G_j}     for j <= i, else 0
    y_i  = sum_j w_ij v_j / sum_j w_ij                            (normalize="sum")

Because s_ij^p = <phi(scale q_i), phi(k_j)> for the symmetric power feature map phi (one feature per
multi-index i_1 <= ... <= i_p, weighted by sqrt(multinomial coefficient), D = C(d+p-1, p) features),
the same output is a linear recurrence over a fixed-size state per kv head:

    S_t = g_t S_{t-1} + phi(k_t) v_t^T    [D, e]        z_t = g_t z_{t-1} + phi(k_t)    [D]
    num_t = phi(scale q_t)^T S_t          den_t = phi(scale q_t)^T z_t

The state is independent of ``scale`` (it is applied on the query side only). With an initial state
(S_0, z_0) from an earlier call, every output gains e^{G_i} phi(scale q_i)^T S_0 (resp. z_0), where G
restarts at 0 at the start of the call; so a call over the first half, whose final state is handed to a
call over the second half, equals one call over the whole.

Chunked form (the default). Split time into chunks of c tokens. In chunk n (tokens nc .. nc+c-1) let
b_t = sum_{u=nc}^{t} log g_u be the *local* cumulative log gate (<= 0, non-increasing) and a_n = b_{nc+c-1}
the chunk's total log decay. For token i of chunk n, with (S_n, z_n) the state before the chunk:

    num_i = sum_{nc <= j <= i} s_ij^p e^{b_i - b_j} v_j        intra-chunk, attention-like (masked c x c)
          + e^{b_i} phi(scale q_i)^T S_n                         inter-chunk, query the carried state
    den_i = sum_{nc <= j <= i} s_ij^p e^{b_i - b_j}  +  e^{b_i} phi(scale q_i)^T z_n
    S_{n+1} = e^{a_n} S_n + sum_{j in chunk n} e^{a_n - b_j} phi(k_j) v_j^T
    z_{n+1} = e^{a_n} z_n + sum_{j in chunk n} e^{a_n - b_j} phi(k_j)

and lax.scan carries (S, z) across chunks. The gate stays in log space: every exponent above is a sum of
log gates over a stretch of at most c tokens, so it lies in [c * min(log g), 0] and nothing can overflow
whatever the sequence length; the global cumulative sum G (which reaches -600 and below at long T) and
e^{-G_j} are never formed. Masked (j > i) entries are set to -inf *before* the exponential, so neither
values nor gradients see an overflow. T need not be a multiple of c: time is padded with k = v = q = 0 and
log g = 0, so padded tokens add phi(0) = 0 to the state and do not decay it, and are sliced off.

Cost per chunk, counted in multiply-adds (2 FLOPs each), per batch element; c = chunk length, d = head_dim,
e = value head_dim, D = C(d+p-1, p), hq query heads, hk kv heads:

    scores      q k^T                      c^2 d   per q head   (dense c x c; half of it is masked)
    weights     s^p * decay                ~ (p+1) c^2 elementwise per q head
    values      w v   (+ row sums for den) c^2 e   (+ c^2)  per q head
    features    phi(q), phi(k)             p c D multiplies per q head and per kv head (incl. decay/weight)
    state query phi(q)^T S  (+ phi(q)^T z) c D e   (+ c D)  per q head
    state update phi(k)^T v (+ sum phi(k)) c D e   (+ c D)  per kv head, plus D e for decaying S

so per token, leading terms: c (d + e) + D e per q head plus D e per kv head, linear in T for fixed c.
The parallel form costs T^2 (d + e) per q head for the whole call (T^2 / 2 useful). The recurrent form
costs, per token, D e (+ D) per q head for the query, D e (+ D) per kv head for the update and d per q
head for the token's own score (see _recurrent), but runs sequentially over tokens.

All forms compute in float32 (inputs are upcast) and return y in q.dtype; the state is float32.

Packed rows: with ``segment_ids [batch, time]`` (scaling.ops.segments) every form restarts from a zero state
at each document's first token, gate or no gate (the initial state belongs to the call's first document). Weights
w_ij across documents are masked to -inf before the exp, like the causal mask; the chunked form's finite factors
e^{b_i/p}, e^{(a - b_j)/p} and e^{a} are zeroed where a document starts between the token and the chunk's edge.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scaling.ops.segments import ChunkMasks, check_segment_ids, chunk_masks, resets, run_index
from scaling.ops.sympow import _sympow_rows, sympow_dim, sympow_features, sympow_table  # noqa: F401 (re-exported)

__all__ = [
    "RetentionState",
    "check_inputs",
    "finish_output",
    "power_retention",
    "power_retention_reference",
    "sympow_dim",
    "sympow_features",
]

_PS = (1, 2, 3, 4)
_FORMS = ("parallel", "chunked", "recurrent")
_NORMALIZE = ("sum", "rmsnorm")


class RetentionState(NamedTuple):
    """Recurrent state of power retention, per sequence and kv head (a pytree), always float32.

    S: [batch, kv_heads, D, e]  sum_j e^{G_t - G_j} phi(k_j) v_j^T, D = sympow_dim(head_dim, p).
    z: [batch, kv_heads, D]     sum_j e^{G_t - G_j} phi(k_j), the normaliser's state.

    G_t - G_j is the summed log gate over tokens j+1..t, so S and z are exact (no hidden log-scale).
    """

    S: jax.Array
    z: jax.Array


# lax.scan unroll of the chunked form's loop over chunks. XLA's cost analysis counts a loop body once, so
# tests/test_accounting.py unrolls it fully (True) to compare the accounting with every chunk's FLOPs.
SCAN_UNROLL: int | bool = 1


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def _check_choice(fn: str, name: str, value, accepted: tuple) -> None:
    kind = (int, np.integer) if isinstance(accepted[0], int) else str  # 2.0 or True is not a valid p
    if isinstance(value, bool) or not isinstance(value, kind) or value not in accepted:
        raise ValueError(f"{fn}: {name} = {value!r}: must be one of {', '.join(repr(a) for a in accepted)}")


def check_inputs(q, k, v, log_g, *, p, normalize, eps, scale, initial_state, fn: str):
    """Checks everything that does not depend on the form; returns (b, T, hq, hk, d, e, D)."""
    _check_choice(fn, "p", p, _PS)
    _check_choice(fn, "normalize", normalize, _NORMALIZE)
    if normalize == "sum" and p % 2 == 1:
        raise ValueError(
            f"{fn}: p = {p} with normalize='sum': an odd power makes the weights s^p negative, so the "
            "denominator can vanish or change sign; use an even p (2 or 4) or normalize='rmsnorm'"
        )
    for name, x in (("q", q), ("k", k), ("v", v)):
        if jnp.ndim(x) != 4:
            raise ValueError(
                f"{fn}: {name} must be [batch, time, heads, head_dim] (rank 4), got shape {jnp.shape(x)}"
            )
    b, T, hq, d = q.shape
    bk, Tk, hk, dk = k.shape
    bv, Tv, hv, e = v.shape
    if not (b == bk == bv):
        raise ValueError(f"{fn}: batch sizes differ: q {b}, k {bk}, v {bv}")
    if not (T == Tk == Tv):
        raise ValueError(f"{fn}: time lengths differ: q {T}, k {Tk}, v {Tv}")
    if dk != d:
        raise ValueError(f"{fn}: q and k head_dim differ: q {d}, k {dk}")
    if hv != hk:
        raise ValueError(f"{fn}: k and v must have the same number of kv heads, got k {hk}, v {hv}")
    if hk < 1 or d < 1 or e < 1:
        raise ValueError(f"{fn}: heads and head dims must be >= 1, got q {q.shape}, k {k.shape}, v {v.shape}")
    if hq % hk != 0:
        raise ValueError(
            f"{fn}: q heads ({hq}) must be a multiple of kv heads ({hk}) for grouped-query attention"
        )
    if log_g is not None and tuple(jnp.shape(log_g)) != (b, T, hk):
        raise ValueError(
            f"{fn}: log_g must be [batch, time, kv_heads] = {(b, T, hk)}, got shape {tuple(jnp.shape(log_g))}"
        )
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"{fn}: eps = {eps!r}: must be a float >= 0")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise ValueError(f"{fn}: scale = {scale!r}: must be a Python float, or None for 1/sqrt(head_dim)")
    D = sympow_dim(d, p)
    if initial_state is not None:
        if not (isinstance(initial_state, tuple) and len(initial_state) == 2):
            raise ValueError(
                f"{fn}: initial_state must be a RetentionState(S, z), got {type(initial_state).__name__}"
            )
        S0, z0 = initial_state
        if tuple(jnp.shape(S0)) != (b, hk, D, e) or tuple(jnp.shape(z0)) != (b, hk, D):
            raise ValueError(
                f"{fn}: initial_state must have S [batch, kv_heads, D, e] = {(b, hk, D, e)} and "
                f"z [batch, kv_heads, D] = {(b, hk, D)} (D = sympow_dim({d}, {p})), got S "
                f"{tuple(jnp.shape(S0))} and z {tuple(jnp.shape(z0))}"
            )
    return b, T, hq, hk, d, e, D


def _prepare(q, k, v, log_g, initial_state, *, scale, hk, D, e):
    """Upcasts to float32, folds the scale into q, splits q heads into [kv_heads, group]."""
    b, T, hq, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    q_bthgd = (q.astype(jnp.float32) * scale).reshape(b, T, hk, hq // hk, d)
    k_bthd = k.astype(jnp.float32)
    v_bthe = v.astype(jnp.float32)
    lg_bth = jnp.zeros((b, T, hk), jnp.float32) if log_g is None else jnp.asarray(log_g, jnp.float32)
    if initial_state is None:
        S0 = jnp.zeros((b, hk, D, e), jnp.float32)
        z0 = jnp.zeros((b, hk, D), jnp.float32)
    else:
        S0 = jnp.asarray(initial_state[0], jnp.float32)
        z0 = jnp.asarray(initial_state[1], jnp.float32)
    return q_bthgd, k_bthd, v_bthe, lg_bth, S0, z0


def finish_output(num_bthge, den_bthg, *, normalize, eps, out_dtype):
    """Normalises and merges [kv_heads, group] back into q heads: -> [b, T, hq, e] in out_dtype."""
    if normalize == "sum":
        y = num_bthge / (den_bthg[..., None] + eps)
    else:
        y = num_bthge / jnp.sqrt(jnp.mean(jnp.square(num_bthge), axis=-1, keepdims=True) + eps)
    b, T, hk, g, e = y.shape
    return y.reshape(b, T, hk * g, e).astype(out_dtype)


# ---------------------------------------------------------------------------------------------------------
# Forms
# ---------------------------------------------------------------------------------------------------------


def _parallel(q_bthgd, k_bthd, v_bthe, lg_bth, S0, z0, *, p, has_state, return_state, run_bt=None):
    """Quadratic form: the definition with an explicit causal mask over the whole call (and, packed rows, a
    mask of pairs in one document: ``run_bt`` [b, T], each token's document index, segments.run_index)."""
    T = q_bthgd.shape[1]
    G_bth = jnp.cumsum(lg_bth, axis=1)
    s_bhgij = jnp.einsum("bihgd,bjhd->bhgij", q_bthgd, k_bthd)
    causal = jnp.tril(jnp.ones((T, T), bool))
    if run_bt is not None:
        causal = causal & (run_bt[:, None, :, None] == run_bt[:, None, None, :])  # [b, 1, i, j]
    # Differences of cumulative log gates, masked before exp: e^{G_i - G_j} <= 1 where kept.
    dG_bhij = G_bth.transpose(0, 2, 1)[:, :, :, None] - G_bth.transpose(0, 2, 1)[:, :, None, :]
    decay_bhij = jnp.exp(jnp.where(causal, dG_bhij, -jnp.inf))
    w_bhgij = s_bhgij**p * decay_bhij[:, :, None]
    num = jnp.einsum("bhgij,bjhe->bihge", w_bhgij, v_bthe)
    den = jnp.einsum("bhgij->bihg", w_bhgij)
    if has_state:
        # e^{G_i} <= 1 (it may underflow to 0, which is the right answer); S0 was built before this call.
        from_start_bth = jnp.exp(G_bth)
        if run_bt is not None:  # only the call's first document continues S0
            from_start_bth = jnp.where((run_bt == 0)[..., None], from_start_bth, 0.0)
        fq_bthgD = sympow_features(q_bthgd, p) * from_start_bth[..., None, None]
        num = num + jnp.einsum("bthgD,bhDe->bthge", fq_bthgD, S0)
        den = den + jnp.einsum("bthgD,bhD->bthg", fq_bthgD, z0)
    state = None
    if return_state:
        G_T = G_bth[:, -1]  # [b, h]
        to_end_bth, through_bh = jnp.exp(G_T[:, None] - G_bth), jnp.exp(G_T)
        if run_bt is not None:  # the state leaving the call holds its last document only
            to_end_bth = jnp.where((run_bt == run_bt[:, -1:])[..., None], to_end_bth, 0.0)
            through_bh = jnp.where((run_bt[:, -1] == 0)[:, None], through_bh, 0.0)
        fk_bthD = sympow_features(k_bthd, p) * to_end_bth[..., None]
        S = through_bh[..., None, None] * S0 + jnp.einsum("bthD,bthe->bhDe", fk_bthD, v_bthe)
        z = through_bh[..., None] * z0 + jnp.sum(fk_bthD, axis=1)
        state = RetentionState(S, z)
    return num, den, state


def _recurrent(q_bthgd, k_bthd, v_bthe, lg_bth, S0, z0, *, p, reset_bt=None):
    """Token-by-token form: lax.scan over time; the output at t reads the state including token t (dropping the
    state before it where ``reset_bt`` [b, T], packed rows, marks a document's first token).

    phi(q_t)^T S_t is evaluated as g_t phi(q_t)^T S_{t-1} + s_tt^p v_t: the same number, but the token's
    own term comes from its score, so it does not carry the feature map's cancellation round-off (which is
    relative to (|q||k| scale)^p rather than to s^p). This is the chunked form with one-token chunks.
    """

    def step(carry, xs):
        S, z = carry
        q_bhgd, k_bhd, v_bhe, lg_bh = xs[:4]
        g_bh = jnp.exp(lg_bh)
        if reset_bt is not None:
            g_bh = jnp.where(xs[4][:, None], 0.0, g_bh)
        fq_bhgD = sympow_features(q_bhgd, p)
        w_bhg = jnp.einsum("bhgd,bhd->bhg", q_bhgd, k_bhd) ** p
        num = g_bh[..., None, None] * jnp.einsum("bhgD,bhDe->bhge", fq_bhgD, S)
        num = num + w_bhg[..., None] * v_bhe[:, :, None]
        den = g_bh[..., None] * jnp.einsum("bhgD,bhD->bhg", fq_bhgD, z) + w_bhg
        fk_bhD = sympow_features(k_bhd, p)
        S = g_bh[..., None, None] * S + fk_bhD[..., :, None] * v_bhe[..., None, :]
        z = g_bh[..., None] * z + fk_bhD
        return (S, z), (num, den)

    inputs = (q_bthgd, k_bthd, v_bthe, lg_bth) + (() if reset_bt is None else (reset_bt,))
    xs = tuple(jnp.moveaxis(x, 1, 0) for x in inputs)
    (S, z), (num_t, den_t) = jax.lax.scan(step, (S0, z0), xs)
    return jnp.moveaxis(num_t, 0, 1), jnp.moveaxis(den_t, 0, 1), RetentionState(S, z)


def _chunked(q_bthgd, k_bthd, v_bthe, lg_bth, S0, z0, *, p, chunk_size, segment_ids=None):
    """Chunked form: intra-chunk attention for all chunks at once (batched matmuls), then one lax.scan
    over chunks in which each chunk queries the state it starts from and then adds its own keys to it.

    The scan keeps the state [S, z] of one chunk step in cache ([batch, kv_heads, D, e + 1], z as the
    last column so the value and normaliser matmuls are one), and builds each chunk's features inside
    the step, feature-major ([D, tokens]: rows of q^T and k^T multiplied together, a contiguous gather).
    Neither the features of the whole sequence nor the state before every chunk is ever materialised:
    at T = 4096 those would be ~140 MB each, and streaming them through memory made the op
    memory-bound. Under autodiff the step is rematerialised (jax.checkpoint), so the backward pass
    recomputes the cheap features instead of saving them for every chunk. ``segment_ids`` [b, T] (packed
    rows, or None) masks the flow of state across document starts.
    """
    b, T, hk, g, d = q_bthgd.shape
    e = v_bthe.shape[-1]
    c = min(chunk_size, T)  # a chunk longer than the call only adds padding
    n = -(-T // c)
    pad = n * c - T
    if pad:
        # Zero k and zero log-gate: padded tokens add phi(0) = 0 to the state and leave its decay alone.
        def pad_t(x):
            return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))

        q_bthgd, k_bthd, v_bthe, lg_bth = map(pad_t, (q_bthgd, k_bthd, v_bthe, lg_bth))
    q_bncgd = q_bthgd.reshape(b, n, c, hk, g, d)
    k_bnchd = k_bthd.reshape(b, n, c, hk, d)
    v_bnche = v_bthe.reshape(b, n, c, hk, e)
    lb_bnch = jnp.cumsum(lg_bth.reshape(b, n, c, hk), axis=2)  # local cumulative log gate, <= 0
    a_bnh = lb_bnch[:, :, -1]  # each chunk's total log decay
    masks: ChunkMasks | None = None if segment_ids is None else chunk_masks(segment_ids, n, c)

    # 1. Intra-chunk: all chunks at once, attention-like.
    s_bnhgij = jnp.einsum("bnihgd,bnjhd->bnhgij", q_bncgd, k_bnchd)
    lb_bnhc = lb_bnch.transpose(0, 1, 3, 2)
    causal = jnp.tril(jnp.ones((c, c), bool))
    if masks is not None:
        causal = causal & masks.same[:, :, None]  # [b, n, 1, i, j]
    dlb_bnhij = lb_bnhc[..., :, None] - lb_bnhc[..., None, :]
    decay_bnhij = jnp.exp(jnp.where(causal, dlb_bnhij, -jnp.inf))
    w_bnhgij = s_bnhgij**p * decay_bnhij[:, :, :, None]
    num = jnp.einsum("bnhgij,bnjhe->bnihge", w_bnhgij, v_bnche)
    den = jnp.einsum("bnhgij->bnihg", w_bnhgij)

    # 2. Across chunks. phi is homogeneous of degree p, so the decays e^{b_i} (query side) and
    # e^{a - b_j} <= 1 (key side) are applied to the d-vectors as e^{b_i/p}, e^{(a - b_j)/p}.
    # Per chunk, time-minor: q^T [n, b, hk, d, g*c] (columns ordered g, c), k^T [n, b, hk, d, c].
    # With segments the masks zero these factors (phi(0) = 0) where a document starts in between.
    from_start_bnch = jnp.exp(lb_bnch / p)
    to_end_bnch = jnp.exp((a_bnh[:, :, None] - lb_bnch) / p)
    through_bnh = jnp.exp(a_bnh)
    if masks is not None:
        from_start_bnch = jnp.where(masks.from_start[..., None], from_start_bnch, 0.0)
        to_end_bnch = jnp.where(masks.to_end[..., None], to_end_bnch, 0.0)
        through_bnh = jnp.where(masks.through[..., None], through_bnh, 0.0)
    qT_nbhdr = (q_bncgd * from_start_bnch[..., None, None]).transpose(1, 0, 3, 5, 4, 2)
    qT_nbhdr = qT_nbhdr.reshape(n, b, hk, d, g * c)
    kT_nbhdc = (k_bnchd * to_end_bnch[..., None]).transpose(1, 0, 3, 4, 2)
    v1_nbhce = jnp.concatenate([v_bnche, jnp.ones_like(v_bnche[..., :1])], -1).transpose(1, 0, 3, 2, 4)
    decay_nbh = through_bnh.transpose(1, 0, 2)
    Sz0_bhDe = jnp.concatenate([S0, z0[..., None]], -1)  # [b, hk, D, e + 1]

    @jax.checkpoint
    def step(Sz_bhDe, xs):
        qT_bhdr, kT_bhdc, v1_bhce, decay_bh = xs
        out_bher = jnp.einsum("bhDe,bhDr->bher", Sz_bhDe, _sympow_rows(qT_bhdr, p))
        dSz_bhDe = jnp.einsum("bhDc,bhce->bhDe", _sympow_rows(kT_bhdc, p), v1_bhce)
        return decay_bh[..., None, None] * Sz_bhDe + dSz_bhDe, out_bher

    Sz_bhDe, out_nbher = jax.lax.scan(step, Sz0_bhDe, (qT_nbhdr, kT_nbhdc, v1_nbhce, decay_nbh),
                                      unroll=SCAN_UNROLL)
    out_bncghe = out_nbher.reshape(n, b, hk, e + 1, g, c).transpose(1, 0, 5, 2, 4, 3)
    num = (num + out_bncghe[..., :e]).reshape(b, n * c, hk, g, e)[:, :T]
    den = (den + out_bncghe[..., e]).reshape(b, n * c, hk, g)[:, :T]
    return num, den, RetentionState(Sz_bhDe[..., :e], Sz_bhDe[..., e])


# ---------------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------------


def power_retention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_g: jax.Array | None = None,
    *,
    p: int = 2,
    scale: float | None = None,
    chunk_size: int = 64,
    form: str = "chunked",
    normalize: str = "sum",
    eps: float = 1e-6,
    initial_state: RetentionState | None = None,
    return_state: bool = False,
    segment_ids: jax.Array | None = None,
):
    """Causal power retention (gated symmetric-power linear attention).

    Args:
      q: [batch, time, hq, d] queries.
      k: [batch, time, hk, d] keys; hq must be a multiple of hk (q head i reads kv head i // (hq // hk)).
      v: [batch, time, hk, e] values (e may differ from d).
      log_g: [batch, time, hk] float32 log of the per-kv-head gate, <= 0 (not checked: traced values);
        None means no decay (g = 1).
      p: power, one of 1, 2, 3, 4. Odd p requires normalize="rmsnorm".
      scale: multiplies <q, k> before the power; None means 1/sqrt(d).
      chunk_size: tokens per chunk for form="chunked" (>= 1; capped at the call's length).
      form: "chunked" (O(T), default), "parallel" (O(T^2), masked) or "recurrent" (token by token).
      normalize: "sum" -> y = num / (den + eps); "rmsnorm" -> y = num / sqrt(mean_e(num^2) + eps).
      eps: see normalize.
      initial_state: RetentionState from an earlier call (float32), or None for an empty state.
      return_state: also return the RetentionState after the last token.
      segment_ids: optional [batch, time] int document ids of a packed row: each document runs as if alone
        (scaling.ops.segments).

    The Pallas kernel of the chunked form (pallas_kernels.power_retention, same signature) is chosen by the
    model, not here: scaling.models.kernels looks the function up by backend.

    Returns:
      y [batch, time, hq, e] in q.dtype, or (y, RetentionState) when return_state is True.
    """
    fn = "power_retention"
    _check_choice(fn, "form", form, _FORMS)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size = {chunk_size!r}: must be an integer >= 1")
    b, T, hq, hk, d, e, D = check_inputs(
        q, k, v, log_g, p=p, normalize=normalize, eps=eps, scale=scale, initial_state=initial_state, fn=fn
    )
    segment_ids = check_segment_ids(segment_ids, b, T, fn)
    q_bthgd, k_bthd, v_bthe, lg_bth, S0, z0 = _prepare(
        q, k, v, log_g, initial_state, scale=scale, hk=hk, D=D, e=e
    )
    if T == 0:
        y = jnp.zeros((b, 0, hq, e), q.dtype)
        return (y, RetentionState(S0, z0)) if return_state else y
    p = int(p)
    if form == "parallel":
        num, den, state = _parallel(
            q_bthgd, k_bthd, v_bthe, lg_bth, S0, z0, p=p,
            has_state=initial_state is not None, return_state=return_state,
            run_bt=None if segment_ids is None else run_index(segment_ids),
        )
    elif form == "recurrent":
        num, den, state = _recurrent(q_bthgd, k_bthd, v_bthe, lg_bth, S0, z0, p=p,
                                     reset_bt=None if segment_ids is None else resets(segment_ids))
    else:
        num, den, state = _chunked(q_bthgd, k_bthd, v_bthe, lg_bth, S0, z0, p=p, chunk_size=int(chunk_size),
                                   segment_ids=segment_ids)
    y = finish_output(num, den, normalize=normalize, eps=eps, out_dtype=q.dtype)
    return (y, state) if return_state else y


def power_retention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_g: jax.Array | None = None,
    *,
    p: int = 2,
    scale: float | None = None,
    normalize: str = "sum",
    eps: float = 1e-6,
    initial_state: RetentionState | None = None,
    return_state: bool = False,
):
    """The definition, one output token at a time (for tests; slow: O(T^2), a sequential loop over tokens).

    Same arguments, shapes and return values as ``power_retention``. For each i:
        w_ij  = (scale <q_i, k_j>)^p * exp(G_i - G_j),  j = 0..i,  G = cumsum(log_g) over this call
        num_i = sum_j w_ij v_j + exp(G_i) phi(scale q_i)^T S0
        den_i = sum_j w_ij     + exp(G_i) phi(scale q_i)^T z0
    and the final state is S_T = exp(G_T) S0 + sum_j exp(G_T - G_j) phi(k_j) v_j^T (z_T likewise).
    """
    fn = "power_retention_reference"
    b, T, hq, hk, d, e, D = check_inputs(
        q, k, v, log_g, p=p, normalize=normalize, eps=eps, scale=scale, initial_state=initial_state, fn=fn
    )
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    p, group = int(p), hq // hk
    f32 = jnp.float32
    q32, k32, v32 = q.astype(f32), k.astype(f32), v.astype(f32)
    lg = jnp.zeros((b, T, hk), f32) if log_g is None else jnp.asarray(log_g, f32)
    G = jnp.cumsum(lg, axis=1)  # [b, T, hk]
    kv_of_q = np.arange(hq) // group  # q head -> its kv head
    k_q, v_q, G_q = k32[:, :, kv_of_q], v32[:, :, kv_of_q], G[:, :, kv_of_q]  # per q head
    if initial_state is not None:
        S0 = jnp.asarray(initial_state[0], f32)
        z0 = jnp.asarray(initial_state[1], f32)
    def one_token(i):
        # Weights over every key j, kept only for j <= i (masked before exp: G_i - G_j > 0 for j > i).
        keep_j = (jnp.arange(T) <= i)[None, :, None]
        s = scale * jnp.einsum("bhd,bjhd->bjh", q32[:, i], k_q)  # [b, T, hq]
        w = jnp.where(keep_j, s**p * jnp.exp(jnp.where(keep_j, G_q[:, i][:, None] - G_q, 0.0)), 0.0)
        num = jnp.einsum("bjh,bjhe->bhe", w, v_q)
        den = jnp.sum(w, axis=1)
        if initial_state is not None:
            fq = sympow_features(scale * q32[:, i], p)  # [b, hq, D]
            decay = jnp.exp(G_q[:, i])  # [b, hq]
            num = num + decay[..., None] * jnp.einsum("bhD,bhDe->bhe", fq, S0[:, kv_of_q])
            den = den + decay * jnp.einsum("bhD,bhD->bh", fq, z0[:, kv_of_q])
        if normalize == "sum":
            return num / (den[..., None] + eps)
        return num / jnp.sqrt(jnp.mean(num**2, axis=-1, keepdims=True) + eps)

    # A loop over output tokens (lax.map, not a Python loop, so that compile time does not grow with T).
    y_tbhe = jax.lax.map(one_token, jnp.arange(T)) if T else jnp.zeros((0, b, hq, e), f32)
    y = jnp.moveaxis(y_tbhe, 0, 1).astype(q.dtype)
    if not return_state:
        return y
    fk = sympow_features(k32, p)  # [b, T, hk, D]
    G_T = G[:, -1] if T else jnp.zeros((b, hk), f32)
    wT = jnp.exp(G_T[:, None] - G)  # [b, T, hk]
    S = jnp.einsum("bjh,bjhD,bjhe->bhDe", wT, fk, v32)
    z = jnp.einsum("bjh,bjhD->bhD", wT, fk)
    if initial_state is not None:
        S = S + jnp.exp(G_T)[..., None, None] * S0
        z = z + jnp.exp(G_T)[..., None] * z0
    return y, RetentionState(S, z)
