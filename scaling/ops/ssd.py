"""Mamba-2 state space duality (SSD), Dao & Gu 2024: chunked, recurrent and parallel forms.

The mixer is a selective linear recurrence with a scalar decay per head and time step::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        h_t: [heads, P, N]  (float32)
    y_t = h_t C_t + D * x_t                                  y_t: [heads, P]

with ``x [batch, time, heads, P]``, ``dt [batch, time, heads]`` (positive step sizes, e.g. after
softplus), ``A [heads]`` (negative), ``B, C [batch, time, groups, N]`` shared by the ``heads // groups``
heads of a group (head ``i`` reads group ``i // (heads // groups)``) and ``D [heads]`` an optional skip.
``a_t = dt_t * A <= 0`` is the per-step log decay. Unrolled, the map from inputs to outputs is a masked,
attention-like matrix (the "duality")::

    y_i = sum_{j <= i} (C_i . B_j) * L_ij * dt_j x_j + D x_i,   L_ij = exp(a_{j+1} + ... + a_i),

so the same op can be run three ways, all exposed through ``ssd(form=...)``:

* ``"parallel"``: the quadratic form above over the whole sequence (O(T^2) time and memory).
* ``"recurrent"``: the recurrence, one token per ``lax.scan`` step (O(T) time, state-sized memory);
  the decode path.
* ``"chunked"`` (default, training): split time into chunks of ``c = chunk_size`` tokens and use the
  quadratic form inside a chunk and the recurrence between chunks. Per chunk ``n``:

  1. intra-chunk (diagonal blocks): ``y_diag = (C B^T o L) (dt x)`` over the chunk's c x c block;
  2. chunk state: what the chunk adds to the state by its end,
     ``S_n = sum_j exp(a_{j+1} + ... + a_{c-1}) dt_j x_j B_j^T``;
  3. inter-chunk recurrence (``lax.scan`` over chunks): ``h_n = exp(a_0 + ... + a_{c-1}) h_{n-1} + S_n``;
  4. state to output: ``y_off_i = exp(a_0 + ... + a_i) h_{n-1} C_i``, then ``y = y_diag + y_off + D x``.

Numerics. Everything runs in float32 whatever the input dtype; ``y`` is cast back to ``x.dtype`` and the
state stays float32. Log decays are only ever summed within a chunk (never a running sum over the whole
sequence) and only ``exp`` of non-positive sums is taken, so long contexts (T = 65,536 and beyond) neither
overflow nor lose the small differences that a global cumulative sum would. The within-chunk segment
sums ``a_{j+1} + ... + a_i`` come from a masked cumulative sum (no difference of two large cumsums).
A ragged last chunk is padded with ``dt = 0`` (no decay, no input), so padding leaves the state unchanged.

Packed rows. With ``segment_ids [batch, time]`` (scaling.ops.segments) the state restarts from zero at the
first token of every document, as if that token's decay were exp(-inf) = 0; the initial state belongs to the
call's first document. No -inf is formed: the decay factors of step 1 (L), 2 (to the chunk end), 3 (the chunk's
total) and 4 (from the chunk start) are set to 0 by masks wherever a document starts in between, after
the exp of the finite log decays, so values and gradients stay finite.

Cost of the chunked form (multiply-adds; one FLOP-counting convention is 2 FLOPs each). Per chunk of c
tokens, with G groups and H heads:

* intra-chunk scores ``C B^T``: ``c^2 * N`` per group (computed once per group, shared by its heads);
* masked ``scores o L`` times ``dt x``: ``c^2 * P`` per head (the full c x c block is computed; the
  causal mask is applied by multiplication, not by skipping work);
* chunk state ``S_n``: ``c * P * N`` per head;
* state to output ``h_{n-1} C``: ``c * P * N`` per head;
* inter-chunk recurrence: ``P * N`` per head (one scale and one add per state element);
* elementwise, not matmul: the decay matrix ``L`` (masked cumsum + exp, ``~c^2`` per head) and its
  product with the scores (``c^2`` per head).

So per token the matmul work is ``G*c*N + H*(c*P + 2*P*N + P*N/c)``: linear in T overall, with the
chunk size trading the quadratic intra-chunk term against the per-chunk state work. The recurrent form
costs ``2*P*N`` per head per token (update + readout); the parallel form ``T*(G*N + H*P)`` per token.

Shapes inside this module keep heads split as ``[groups, heads_per_group]`` (axes ``g, r``) so B and C
are never repeated per head. Axis letters: b batch, t time, n chunk, i/j position in a chunk (query /
key), g group, r head within group, p head_dim (P), s d_state (N).
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
from jax import lax

from scaling.ops.segments import ChunkMasks, check_segment_ids, chunk_masks, resets

FORMS = ("chunked", "recurrent", "parallel")

__all__ = ["ssd", "ssd_reference", "FORMS", "as_arrays", "check_inputs"]


# --------------------------------------------------------------------------------------------- validation


def check_inputs(x, dt, A, B, C, D, initial_state):
    """Checks ranks and shapes; returns (batch, time, heads, P, groups, N). Raises ValueError."""
    if x.ndim != 4:
        raise ValueError(f"x must have rank 4 [batch, time, heads, head_dim]; got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating dtype (y is returned in x.dtype); got {x.dtype}")
    b, t, h, p = x.shape
    if dt.shape != (b, t, h):
        raise ValueError(
            f"dt must have shape [batch, time, heads] = {(b, t, h)} to match x {tuple(x.shape)}; "
            f"got {tuple(dt.shape)}"
        )
    if A.shape != (h,):
        raise ValueError(f"A must have shape [heads] = {(h,)}; got {tuple(A.shape)}")
    if B.ndim != 4:
        raise ValueError(f"B must have rank 4 [batch, time, groups, d_state]; got shape {tuple(B.shape)}")
    g, n = B.shape[2], B.shape[3]
    if B.shape[:2] != (b, t):
        raise ValueError(
            f"B must have shape [batch, time, groups, d_state] with batch, time = {(b, t)} from x; "
            f"got {tuple(B.shape)}"
        )
    if C.shape != B.shape:
        raise ValueError(f"C must have the same shape as B, {tuple(B.shape)}; got {tuple(C.shape)}")
    if g < 1 or h % g != 0:
        raise ValueError(
            f"groups (B.shape[2] = {g}) must divide heads (x.shape[2] = {h}); accepted: divisors of {h}"
        )
    if D is not None and D.shape != (h,):
        raise ValueError(f"D must be None or have shape [heads] = {(h,)}; got {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (b, h, p, n):
        raise ValueError(
            f"initial_state must be None or have shape [batch, heads, head_dim, d_state] = {(b, h, p, n)}; "
            f"got {tuple(initial_state.shape)}"
        )
    return b, t, h, p, g, n


def _check_options(form, chunk_size):
    if form not in FORMS:
        raise ValueError(f"form = {form!r}: must be one of {', '.join(map(repr, FORMS))}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size = {chunk_size!r}: must be an int >= 1")


def as_arrays(*arrays):
    return tuple(None if a is None else jnp.asarray(a) for a in arrays)


# ------------------------------------------------------------------------------------------- public API


def ssd(
    x,
    dt,
    A,
    B,
    C,
    *,
    D=None,
    chunk_size: int = 64,
    form: str = "chunked",
    initial_state=None,
    return_state: bool = False,
    segment_ids=None,
):
    """Mamba-2 SSD scan (see the module docstring for the math and costs).

    Args:
      x: [batch, time, heads, head_dim] inputs (any float dtype; y comes back in this dtype).
      dt: [batch, time, heads] positive step sizes (already softplus'd).
      A: [heads] negative decay rates; the per-step log decay is ``dt * A`` (must be <= 0).
      B: [batch, time, groups, d_state] input projections; groups must divide heads.
      C: [batch, time, groups, d_state] output projections.
      D: optional [heads] skip, ``y += D * x``.
      chunk_size: tokens per chunk for ``form="chunked"`` (>= 1; clipped to time). Ignored otherwise.
      form: "chunked" (default), "recurrent" or "parallel" (one chunk spanning all of time, so the
        masked (C B^T o L)(dt x) matrix over the whole sequence); all compute the same function.
      initial_state: optional [batch, heads, head_dim, d_state] state entering the sequence (zeros if None).
      return_state: also return the final state.
      segment_ids: optional [batch, time] int document ids of a packed row: the state restarts from zero at
        every document start (scaling.ops.segments).

    Returns:
      y [batch, time, heads, head_dim] in x.dtype; with return_state, ``(y, state)`` where state is the
      float32 [batch, heads, head_dim, d_state] state after the last token, ready to pass back as
      ``initial_state`` (so two calls over the halves of a sequence equal one call over the whole).

    Not jitted here: wrap in ``jax.jit`` with form, chunk_size and return_state static. The Pallas kernel of the
    chunked form (pallas_kernels.ssd, same signature) is chosen by the model: scaling.models.kernels.
    """
    _check_options(form, chunk_size)
    x, dt, A, B, C, D, initial_state = as_arrays(x, dt, A, B, C, D, initial_state)
    b, t, _, _, _, _ = check_inputs(x, dt, A, B, C, D, initial_state)
    segment_ids = check_segment_ids(segment_ids, b, t, "ssd")
    a, xdt, x32, B32, C32, h0 = _prepare(x, dt, A, B, C, initial_state)
    if t == 0:
        y, h = jnp.zeros_like(x32), h0
    elif form == "recurrent":
        y, h = _recurrent(a, xdt, B32, C32, h0, None if segment_ids is None else resets(segment_ids))
    else:
        chunk = t if form == "parallel" else min(int(chunk_size), t)
        masks = None if segment_ids is None else chunk_masks(segment_ids, -(-t // chunk), chunk)
        y, h = _chunked(a, xdt, B32, C32, h0, chunk=chunk, masks=masks)
    return _finish(y, h, x32, x, D, return_state)


def ssd_reference(x, dt, A, B, C, *, D=None, initial_state=None, return_state=False):
    """The SSD recurrence as a plain Python loop over time, written for clarity, not speed.

    Same arguments, shapes and return values as :func:`ssd`. Float32 throughout; y in x.dtype.
    """
    x, dt, A, B, C, D, initial_state = as_arrays(x, dt, A, B, C, D, initial_state)
    b, t, h, p, g, n = check_inputs(x, dt, A, B, C, D, initial_state)
    f32 = jnp.float32
    group_of_head = jnp.arange(h) // (h // g)
    A_h = A.astype(f32)
    D_h = None if D is None else D.astype(f32)
    state = jnp.zeros((b, h, p, n), f32) if initial_state is None else initial_state.astype(f32)
    x_bthp, dt_bth = x.astype(f32), dt.astype(f32)
    B_bthn, C_bthn = B.astype(f32)[:, :, group_of_head], C.astype(f32)[:, :, group_of_head]

    def at(v, step):
        # A dynamic index keeps one compiled slice for all steps when run eagerly (static ones recompile).
        return lax.dynamic_index_in_dim(v, jnp.int32(step), axis=1, keepdims=False)

    ys = []
    for step in range(t):
        x_bhp, dt_bh, B_bhn, C_bhn = (at(v, step) for v in (x_bthp, dt_bth, B_bthn, C_bthn))
        decay_bh = jnp.exp(dt_bh * A_h)
        state = (
            decay_bh[:, :, None, None] * state + (dt_bh[:, :, None] * x_bhp)[..., None] * B_bhn[:, :, None, :]
        )
        y_bhp = jnp.einsum("bhpn,bhn->bhp", state, C_bhn)
        if D_h is not None:
            y_bhp = y_bhp + D_h[None, :, None] * x_bhp
        ys.append(y_bhp)
    y = jnp.stack(ys, axis=1) if ys else jnp.zeros(x.shape, f32)
    y = y.astype(x.dtype)
    return (y, state) if return_state else y


# ------------------------------------------------------------------------------------------- internals


def _prepare(x, dt, A, B, C, initial_state):
    """Casts to float32 and splits heads into [groups, heads_per_group]."""
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    f32 = jnp.float32
    x_btgrp = x.astype(f32).reshape(b, t, g, r, p)
    dt_btgr = dt.astype(f32).reshape(b, t, g, r)
    a_btgr = dt_btgr * A.astype(f32).reshape(g, r)
    xdt_btgrp = x_btgrp * dt_btgr[..., None]
    if initial_state is None:
        h0 = jnp.zeros((b, g, r, p, n), f32)
    else:
        h0 = initial_state.astype(f32).reshape(b, g, r, p, n)
    return a_btgr, xdt_btgrp, x_btgrp, B.astype(f32), C.astype(f32), h0


def _finish(y_btgrp, h_bgrps, x_btgrp, x, D, return_state):
    b, t, h, p = x.shape
    if D is not None:
        g, r = y_btgrp.shape[2:4]
        y_btgrp = y_btgrp + D.astype(jnp.float32).reshape(g, r)[:, :, None] * x_btgrp
    y = y_btgrp.reshape(b, t, h, p).astype(x.dtype)
    if not return_state:
        return y
    return y, h_bgrps.reshape(b, h, p, h_bgrps.shape[-1])


def _recurrent(a_btgr, xdt_btgrp, B_btgs, C_btgs, h0_bgrps, reset_bt=None):
    """Token-by-token scan. Returns y [b, t, g, r, p] and the final state [b, g, r, p, s].

    ``reset_bt`` [b, t] bool (or None): the token starts a document, so the state before it is dropped."""

    def step(h_bgrps, inputs):
        a_bgr, xdt_bgrp, B_bgs, C_bgs = inputs[:4]
        decay_bgr = jnp.exp(a_bgr)
        if reset_bt is not None:
            decay_bgr = jnp.where(inputs[4][:, None, None], 0.0, decay_bgr)
        h_bgrps = decay_bgr[..., None, None] * h_bgrps + xdt_bgrp[..., None] * B_bgs[:, :, None, None, :]
        y_bgrp = jnp.einsum("bgrps,bgs->bgrp", h_bgrps, C_bgs)
        return h_bgrps, y_bgrp

    inputs = (a_btgr, xdt_btgrp, B_btgs, C_btgs) + (() if reset_bt is None else (reset_bt,))
    time_major = tuple(jnp.moveaxis(v, 1, 0) for v in inputs)
    h_final, y_tbgrp = lax.scan(step, h0_bgrps, time_major)
    return jnp.moveaxis(y_tbgrp, 0, 1), h_final


def _segsum(a_c):
    """Segment sums of log decays inside a chunk: a [..., c] -> s [..., c(i), c(j)].

    ``s[i, j] = a_{j+1} + ... + a_i`` for ``j <= i`` (0 on the diagonal) and 0 above it. A masked
    cumulative sum rather than ``cumsum_i - cumsum_j``, so no two large partial sums are subtracted.
    """
    c = a_c.shape[-1]
    strictly_lower_ij = jnp.tril(jnp.ones((c, c), dtype=bool), k=-1)
    a_ij = jnp.where(strictly_lower_ij, a_c[..., :, None], 0.0)
    return jnp.cumsum(a_ij, axis=-2)


def _chunked(a_btgr, xdt_btgrp, B_btgs, C_btgs, h0_bgrps, *, chunk, masks: ChunkMasks | None = None):
    """Chunked SSD (module docstring, steps 1-4). ``chunk = time`` is the parallel (quadratic) form.

    ``masks`` (packed rows, scaling.ops.segments.chunk_masks) zero each decay factor that crosses a document
    start. Returns y [b, t, g, r, p] and the final state [b, g, r, p, s].
    """
    b, t, g, r, p = xdt_btgrp.shape
    nc = -(-t // chunk)
    pad = nc * chunk - t
    if pad:
        # dt = 0 in the padding: log decay 0 (state carried unchanged) and no input.
        def pad_time(v):
            return jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))

        a_btgr, xdt_btgrp, B_btgs, C_btgs = map(pad_time, (a_btgr, xdt_btgrp, B_btgs, C_btgs))

    def split(v):
        return v.reshape(b, nc, chunk, *v.shape[2:])

    xdt_bnjgrp = split(xdt_btgrp)
    B_bnjgs = split(B_btgs)
    C_bnigs = split(C_btgs)
    a_bngrc = jnp.moveaxis(split(a_btgr), 2, -1)

    # 1. Intra-chunk: masked attention-like block per chunk.
    keep_ij = jnp.tril(jnp.ones((chunk, chunk), dtype=bool))
    if masks is not None:
        keep_ij = keep_ij & masks.same[:, :, None, None]  # [b, n, 1, 1, i, j]
    L_bngrij = jnp.where(keep_ij, jnp.exp(_segsum(a_bngrc)), 0.0)
    scores_bngij = jnp.einsum("bnigs,bnjgs->bngij", C_bnigs, B_bnjgs)
    y_diag = jnp.einsum("bngrij,bnjgrp->bnigrp", scores_bngij[:, :, :, None] * L_bngrij, xdt_bnjgrp)

    # 2. Chunk states. Decay from token j to the chunk end is a_{j+1} + ... + a_{c-1}: a reverse cumsum
    # of the log decays shifted by one, non-positive by construction.
    a_shift_bngrc = jnp.concatenate([a_bngrc[..., 1:], jnp.zeros_like(a_bngrc[..., :1])], axis=-1)
    to_end_bnjgr = jnp.moveaxis(
        jnp.exp(lax.cumsum(a_shift_bngrc, axis=a_bngrc.ndim - 1, reverse=True)), -1, 2
    )
    if masks is not None:
        to_end_bnjgr = jnp.where(masks.to_end[..., None, None], to_end_bnjgr, 0.0)
    S_nbgrps = jnp.einsum("bnjgs,bnjgrp->nbgrps", B_bnjgs, xdt_bnjgrp * to_end_bnjgr[..., None])

    # 3. Inter-chunk recurrence; emits the state entering each chunk. O(nc) sequential steps of P*N work.
    a_cum_bngrc = jnp.cumsum(a_bngrc, axis=-1)
    chunk_decay_nbgr = jnp.exp(jnp.moveaxis(a_cum_bngrc[..., -1], 1, 0))
    if masks is not None:
        chunk_decay_nbgr = jnp.where(jnp.moveaxis(masks.through, 1, 0)[..., None, None], chunk_decay_nbgr, 0.0)

    def carry_state(h_bgrps, inputs):
        decay_bgr, S_bgrps = inputs
        return decay_bgr[..., None, None] * h_bgrps + S_bgrps, h_bgrps

    h_final, h_in_nbgrps = lax.scan(carry_state, h0_bgrps, (chunk_decay_nbgr, S_nbgrps))

    # 4. State to output: the entering state, decayed to token i, read out by C_i.
    from_start_bnigr = jnp.moveaxis(jnp.exp(a_cum_bngrc), -1, 2)
    if masks is not None:
        from_start_bnigr = jnp.where(masks.from_start[..., None, None], from_start_bnigr, 0.0)
    y_off = jnp.einsum("bnigs,nbgrps->bnigrp", C_bnigs, h_in_nbgrps) * from_start_bnigr[..., None]

    y = (y_diag + y_off).reshape(b, nc * chunk, g, r, p)[:, :t]
    return y, h_final
