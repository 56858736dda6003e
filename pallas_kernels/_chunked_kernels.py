"""The kernel bodies of pallas_kernels/_chunked.py (its docstring has the math, the layouts and the pipeline):
the forward states and output, the backward adjoint states and gradients, and the feature-tile helpers they share
(symmetric-power features formed one D tile at a time from one-hot selection matmuls)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._config import Plan

f32 = jnp.float32
_NN = (((1,), (0,)), ((), ()))  # a @ b
_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_EXACT = lax.Precision.HIGHEST


def _mm(a, b, dims, precision):
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=f32)


def _ipow(x, p: int):
    """x**p for a static int p >= 0 by multiplication (no integer_pow lowering needed)."""
    out = jnp.ones_like(x) if p == 0 else x
    for _ in range(p - 1):
        out = out * x
    return out


def _rowsum(x):
    return jnp.sum(x, axis=1, keepdims=True)


def _total(x):
    """Sum of a 2-D tile as a [1, 1] array (two keepdims reductions lower on every backend)."""
    return jnp.sum(jnp.sum(x, axis=1, keepdims=True), axis=0, keepdims=True)


def _last(col):
    """The last entry of a [c, 1] column as a [1, 1] array, by a masked sum: a dynamic one-row load at an
    unaligned sublane offset, or a value slice (no Triton lowering), is avoided."""
    c = col.shape[0]
    return _total(jnp.where(lax.broadcasted_iota(jnp.int32, (c, 1), 0) == c - 1, col, 0.0))


def _decay(lbc, lbr):
    """[c, c] intra-chunk weights e^{b_i - b_j} for j <= i, else 0 (masked before exp: never inf)."""
    c = lbc.shape[0]
    causal = lax.broadcasted_iota(jnp.int32, (c, c), 0) >= lax.broadcasted_iota(jnp.int32, (c, c), 1)
    return jnp.exp(jnp.where(causal, lbc - lbr, -jnp.inf))


# ------------------------------------------------------------------------------------ feature tiles


def _selections(sel_ref, plan: Plan, rows):
    """The p selection tiles [block_d, d_pad] for the feature rows `rows` (None: the whole block)."""
    if plan.p == 1:
        return None
    if rows is None:
        return [sel_ref[m] for m in range(plan.p)]
    return [sel_ref[m, rows, :] for m in range(plan.p)]


def _factors(x, sels, plan: Plan):
    """x [r, d_pad] -> the p factors [r, block_d] whose product is the feature tile."""
    if plan.p == 1:
        return [x]
    return [_mm(x, s, _NT, _EXACT) for s in sels]


def _product(factors, skip=None):
    out = None
    for m, f in enumerate(factors):
        if m != skip:
            out = f if out is None else out * f
    return out


def _features(x, sels, plan: Plan):
    return _product(_factors(x, sels, plan))


def _features_vjp(dphi, factors, sels, plan: Plan):
    """Cotangent of x from the cotangent dphi [r, block_d] of its feature tile: sum over the p factors of
    (dphi * the other factors) @ sel_m; the weights ride on sel_0 (and so on the factor it makes)."""
    if plan.p == 1:
        return dphi
    dx = None
    for m, s in enumerate(sels):
        term = _mm(dphi * _product(factors, skip=m), s, _NN, _EXACT)
        dx = term if dx is None else dx + term
    return dx


def _tile_rows(t, plan: Plan):
    if isinstance(t, int):  # the only tile: a static slice (Triton cannot take multiple_of of a constant)
        return pl.ds(t * plan.block_d, plan.block_d)
    return pl.ds(pl.multiple_of(t * plan.block_d, plan.block_d), plan.block_d)


def _over_tiles(plan: Plan, body, init):
    """fori_loop over the D tiles (a plain call when there is one tile)."""
    if plan.n_tiles == 1:
        return body(0, init)
    return lax.fori_loop(0, plan.n_tiles, body, init)


# ------------------------------------------------------------------------------------------ kernels


def _fwd_states_kernel(*refs, plan: Plan):
    """Step 1. Blocks: k [Tseg, d_pad], v [Tseg, e_pad], lbc [Tseg, 1], (sel [p, block_d, d_pad]),
    s0 [block_d, e_pad] -> states [K, block_d, e_pad] (before each chunk), s_end [block_d, e_pad]."""
    if plan.p == 1:
        k_ref, v_ref, lbc_ref, s0_ref, states_ref, send_ref = refs
        sel_ref = None
    else:
        k_ref, v_ref, lbc_ref, sel_ref, s0_ref, states_ref, send_ref = refs
    c, p = plan.chunk, plan.p
    sels = _selections(sel_ref, plan, None)

    def chunk(n, S):
        states_ref[n] = S
        start = pl.multiple_of(n * c, c)
        k = k_ref[pl.ds(start, c), :].astype(f32)
        v = v_ref[pl.ds(start, c), :].astype(f32)
        lbc = lbc_ref[pl.ds(start, c), :]
        a = _last(lbc)  # [1, 1]: the chunk's total log decay
        phi = _features(k * jnp.exp((a - lbc) / p), sels, plan)  # [c, block_d], decayed to the chunk end
        return jnp.exp(a) * S + _mm(phi, v, _TN, plan.precision)

    send_ref[...] = lax.fori_loop(0, plan.chunks_per_segment, chunk, s0_ref[...])


def _fwd_out_kernel(*refs, plan: Plan):
    """Step 2. Blocks: q [g, c, d_pad], k [c, d_pad], v [c, e_pad], lbc [c, 1], lbr [1, c],
    (sel [p, D_pad, d_pad]), state [D_pad, e_pad] -> o [g, c, e_pad]."""
    if plan.p == 1:
        q_ref, k_ref, v_ref, lbc_ref, lbr_ref, st_ref, o_ref = refs
        sel_ref = None
    else:
        q_ref, k_ref, v_ref, lbc_ref, lbr_ref, sel_ref, st_ref, o_ref = refs
    p, prec = plan.p, plan.precision
    k = k_ref[...].astype(f32)
    v = v_ref[...].astype(f32)
    lbc = lbc_ref[...]
    L = _decay(lbc, lbr_ref[...])
    q_decay = jnp.exp(lbc / p)
    for h in range(plan.q_per_state):
        q = q_ref[h].astype(f32) * plan.scale
        o = _mm(_ipow(_mm(q, k, _NT, prec), p) * L, v, _NN, prec)  # intra-chunk
        qt = q * q_decay

        def tile(t, o, qt=qt):
            rows = _tile_rows(t, plan)
            phi = _features(qt, _selections(sel_ref, plan, rows), plan)
            return o + _mm(phi, st_ref[rows, :], _NN, prec)  # inter-chunk: the state before the chunk

        o_ref[h] = _over_tiles(plan, tile, o)


def _bwd_states_kernel(*refs, plan: Plan):
    """Step 3. Blocks: q [g, Tseg, d_pad], lbc [Tseg, 1], do [g, Tseg, e_pad], (sel [p, block_d, d_pad]),
    ds_end [block_d, e_pad] -> ds_after [K, block_d, e_pad] (cotangent of the state after each chunk),
    ds_start [block_d, e_pad] (cotangent of the segment's initial state)."""
    if plan.p == 1:
        q_ref, lbc_ref, do_ref, dsend_ref, dsafter_ref, dsstart_ref = refs
        sel_ref = None
    else:
        q_ref, lbc_ref, do_ref, sel_ref, dsend_ref, dsafter_ref, dsstart_ref = refs
    c, p, K = plan.chunk, plan.p, plan.chunks_per_segment
    sels = _selections(sel_ref, plan, None)

    def chunk(i, dS):
        n = K - 1 - i
        dsafter_ref[n] = dS
        start = pl.multiple_of(n * c, c)
        lbc = lbc_ref[pl.ds(start, c), :]
        a = _last(lbc)
        dS = jnp.exp(a) * dS
        for h in range(plan.q_per_state):
            qt = q_ref[h, pl.ds(start, c), :].astype(f32) * (plan.scale * jnp.exp(lbc / p))
            do = do_ref[h, pl.ds(start, c), :].astype(f32)
            dS = dS + _mm(_features(qt, sels, plan), do, _TN, plan.precision)
        return dS

    dsstart_ref[...] = lax.fori_loop(0, K, chunk, dsend_ref[...])


def _bwd_grads_kernel(*refs, plan: Plan):
    """Step 4. Blocks: q [g, c, d_pad], k [c, d_pad], v [c, e_pad], lbc [c, 1], lbr [1, c], do [g, c, e_pad],
    (sel [p, D_pad, d_pad]), state [D_pad, e_pad] (before the chunk), ds [D_pad, e_pad] (after it)
    -> dq [g, c, d_pad], dk [c, d_pad], dv [c, e_pad], dbc [c, 1], dbr [1, c] (d/d local cumulative
    log gate, split into a column and a row part; the chunk total's gradient is added at row c - 1)."""
    if plan.p == 1:
        q_ref, k_ref, v_ref, lbc_ref, lbr_ref, do_ref, st_ref, ds_ref = refs[:8]
        sel_ref = None
        dq_ref, dk_ref, dv_ref, dbc_ref, dbr_ref = refs[8:]
    else:
        q_ref, k_ref, v_ref, lbc_ref, lbr_ref, do_ref, sel_ref, st_ref, ds_ref = refs[:9]
        dq_ref, dk_ref, dv_ref, dbc_ref, dbr_ref = refs[9:]
    c, p, prec = plan.chunk, plan.p, plan.precision
    k = k_ref[...].astype(f32)
    v = v_ref[...].astype(f32)
    lbc = lbc_ref[...]
    a = _last(lbc)
    L = _decay(lbc, lbr_ref[...])
    q_decay = jnp.exp(lbc / p)
    dk = jnp.zeros(k.shape, f32)
    dv = jnp.zeros(v.shape, f32)
    dbc = jnp.zeros((c, 1), f32)
    dbr = jnp.zeros((1, c), f32)
    for h in range(plan.q_per_state):
        q = q_ref[h].astype(f32) * plan.scale
        do = do_ref[h].astype(f32)
        s = _mm(q, k, _NT, prec)
        s_pm1 = _ipow(s, p - 1)
        w = s_pm1 * s * L  # the intra-chunk weights W
        dw = _mm(do, v, _NT, prec)  # the cotangent of W (unmasked; L zeroes the masked part)
        ds = (p * s_pm1) * (dw * L)
        dv = dv + _mm(w, do, _TN, prec)
        dk = dk + _mm(ds, q, _TN, prec)
        m = w * dw  # d/db_i of W_ij is +W_ij and d/db_j is -W_ij
        dbc = dbc + _rowsum(m)
        dbr = dbr - jnp.sum(m, axis=0, keepdims=True)
        qt = q * q_decay

        def q_tile(t, carry, qt=qt, do=do):
            dqt, inter = carry
            rows = _tile_rows(t, plan)
            sels = _selections(sel_ref, plan, rows)
            st = st_ref[rows, :]
            factors = _factors(qt, sels, plan)
            inter = inter + _mm(_product(factors), st, _NN, prec)
            return dqt + _features_vjp(_mm(do, st, _NT, prec), factors, sels, plan), inter

        dqt, inter = _over_tiles(plan, q_tile, (jnp.zeros(q.shape, f32), jnp.zeros(do.shape, f32)))
        # The state query e^{b_i} phi(q_i)^T S is its own derivative in b_i.
        dbc = dbc + _rowsum(do * inter)
        dq_ref[h] = (_mm(ds, k, _NN, prec) + dqt * q_decay) * plan.scale

    k_decay = jnp.exp((a - lbc) / p)
    kt = k * k_decay

    def k_tile(t, carry):
        dkt, dv, tk, da = carry
        rows = _tile_rows(t, plan)
        sels = _selections(sel_ref, plan, rows)
        st, dst = st_ref[rows, :], ds_ref[rows, :]
        factors = _factors(kt, sels, plan)
        phi = _product(factors)
        dphi = _mm(v, dst, _NT, prec)  # [c, block_d]: cotangent of phi(k~_j) through S_{n+1}
        return (dkt + _features_vjp(dphi, factors, sels, plan), dv + _mm(phi, dst, _NN, prec),
                tk + _rowsum(dphi * phi), da + _total(dst * st))

    init = (jnp.zeros(k.shape, f32), dv, jnp.zeros((c, 1), f32), jnp.zeros((1, 1), f32))
    dkt, dv, tk, da = _over_tiles(plan, k_tile, init)
    dk_ref[...] = dk + dkt * k_decay
    dv_ref[...] = dv
    # The update term e^{a - b_j} phi(k_j) v_j^T has derivative -term in b_j and +term in a; the decay
    # e^a S_n adds e^a <dS, S_n> to a. a is b_{c-1}, so its gradient lands on the last row.
    da = jnp.exp(a) * da + _total(tk)
    last = lax.broadcasted_iota(jnp.int32, (c, 1), 0) == c - 1
    dbc_ref[...] = dbc - tk + jnp.where(last, da, 0.0)
    dbr_ref[...] = dbr
