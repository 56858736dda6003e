"""Gated chunked linear attention with degree-p symmetric-power features: the Pallas kernels shared by
power retention (p = 1..4, GQA) and Mamba-2 SSD (p = 1, B/C shared by a group of heads).

One *state head* s owns a float32 state S [D, e] and a log gate; per token j it adds phi(k_j) v_j^T and
the output of a query i reads phi(q_i)^T S. In chunk n with local cumulative log gate b (b_i = sum of
log gates from the chunk start to i, a = b_{c-1}) and S_n the state before the chunk:

    o_i     = sum_{j <= i in chunk} (scale q_i . k_j)^p e^{b_i - b_j} v_j  +  phi(q~_i)^T S_n
    S_{n+1} = e^{a} S_n + sum_j phi(k~_j) v_j^T
    q~_i = scale e^{b_i / p} q_i,   k~_j = e^{(a - b_j) / p} k_j      (phi is homogeneous of degree p)

Layouts (head-major, time padded to the plan's length, dims padded by the plan):
    q   [batch, Hq, g, T, d_pad]   state head s reads head-block s // q_div (g = q heads per state)
    k   [batch, Hk, T, d_pad]      state head s reads k head s // k_div
    v   [batch, S, T, e_pad]
    lbc [batch, S, T, 1] float32   local cumulative log gate as a column; lbr [batch, S, 1, T] as a row
    S0  [batch, S, D_pad, e_pad] float32
    o   [batch, S, g, T, e_pad] float32

Pipeline (each step one pallas_call; steps 1-2 per segment of chunks, see _config.Plan):
  1. states:  grid (batch, S, D tiles); a loop over the segment's chunks carries one [block_d, e] tile
     of the state and writes the state before every chunk.                           (the inter-chunk scan)
  2. output:  grid (batch, S, chunks), independent: intra-chunk attention plus the query of the state
     before the chunk, looping over D tiles.
  Backward (custom_vjp), per segment in reverse:
  0. the segment's per-chunk states: read from the forward if they were kept, else recomputed by step 1
     from the segment's checkpoint.
  3. adjoint states: grid (batch, S, D tiles); a reverse loop over chunks carries dS (the cotangent of the
     state) and writes dS after every chunk.
  4. gradients: grid (batch, S, chunks), independent: dq, dk, dv and d(log gate) of one chunk from its
     inputs, S before it and dS after it.

Features phi(x) are formed in fast memory one D tile at a time as products of p one-hot "selection"
matmuls (sel_m [D_pad, d_pad] picks the m-th factor of each multi-index; sel_0 also carries the
sqrt-multinomial weight), so no gather is needed on any backend. Selections run at HIGHEST precision,
so they are exact copies in float32 (on TPU and GPU a default-precision matmul would round x).

The kernel bodies and their feature-tile helpers are in pallas_kernels/_chunked_kernels.py; this module holds the
pallas_calls (grids and block specs), the segments and the custom VJP.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._chunked_kernels import (
    _bwd_grads_kernel,
    _bwd_states_kernel,
    _fwd_out_kernel,
    _fwd_states_kernel,
)
from pallas_kernels._config import Plan

f32 = jnp.float32


# ------------------------------------------------------------------------------------- pallas_calls


def _head_of(div: int):
    """State head -> the q/k head it reads. lax.div (truncating) rather than //: grid indices are >= 0, and
    jnp's floor division adds a sign correction that Mosaic TPU lowers only with a device at hand."""
    if div == 1:
        return lambda s: s
    return lambda s: lax.div(s, jnp.int32(div))


def _specs_time_major(plan: Plan, block_time: int):
    """BlockSpecs for q, k, v, lbc, lbr, do blocks of `block_time` tokens at time-block index j."""
    g, dp, ep = plan.q_per_state, plan.d_pad, plan.e_pad
    qh, kh = _head_of(plan.q_div), _head_of(plan.k_div)
    return dict(
        q=lambda j: pl.BlockSpec((None, None, g, block_time, dp), lambda b, s, x: (b, qh(s), 0, j(x), 0)),
        k=lambda j: pl.BlockSpec((None, None, block_time, dp), lambda b, s, x: (b, kh(s), j(x), 0)),
        v=lambda j: pl.BlockSpec((None, None, block_time, ep), lambda b, s, x: (b, s, j(x), 0)),
        lbc=lambda j: pl.BlockSpec((None, None, block_time, 1), lambda b, s, x: (b, s, j(x), 0)),
        lbr=lambda j: pl.BlockSpec((None, None, 1, block_time), lambda b, s, x: (b, s, 0, j(x))),
        do=lambda j: pl.BlockSpec((None, None, g, block_time, ep), lambda b, s, x: (b, s, 0, j(x), 0)),
    )


def _whole(x):  # grid position x -> block 0 along time (the segment is one block)
    return 0


def _same(x):  # grid position x -> time block x (one chunk per grid step)
    return x


def _call(kernel, plan: Plan, grid, in_specs, out_specs, out_shape, name):
    return pl.pallas_call(
        functools.partial(kernel, plan=plan),
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=plan.interpret,
        compiler_params=plan.compiler_params(len(grid)),
        name=name,
    )


def _sel_spec_tiled(plan: Plan):
    return pl.BlockSpec((plan.p, plan.block_d, plan.d_pad), lambda b, s, t: (0, t, 0))


def _sel_spec_whole(plan: Plan):
    return pl.BlockSpec((plan.p, plan.D_pad, plan.d_pad), lambda b, s, n: (0, 0, 0))


def _state_tile_spec(plan: Plan):
    return pl.BlockSpec((None, None, plan.block_d, plan.e_pad), lambda b, s, t: (b, s, t, 0))


def _per_chunk_tiles_spec(plan: Plan):
    K = plan.chunks_per_segment
    return pl.BlockSpec((None, None, K, plan.block_d, plan.e_pad), lambda b, s, t: (b, s, 0, t, 0))


def _per_chunk_whole_spec(plan: Plan):
    return pl.BlockSpec((None, None, None, plan.D_pad, plan.e_pad), lambda b, s, n: (b, s, n, 0, 0))


def _fwd_states(k, v, lbc, sel, S0, plan: Plan):
    """Step 1 over one segment: k/v/lbc hold the segment's tokens. -> (states [b, S, K, D_pad, e_pad],
    S_end [b, S, D_pad, e_pad])."""
    b, S = v.shape[:2]
    spec = _specs_time_major(plan, plan.segment_time)
    ins = [spec["k"](_whole), spec["v"](_whole), spec["lbc"](_whole)]
    args = [k, v, lbc]
    if plan.p > 1:
        ins.append(_sel_spec_tiled(plan))
        args.append(sel)
    ins.append(_state_tile_spec(plan))
    args.append(S0)
    K = plan.chunks_per_segment
    return _call(
        _fwd_states_kernel, plan, (b, S, plan.n_tiles), ins,
        [_per_chunk_tiles_spec(plan), _state_tile_spec(plan)],
        [jax.ShapeDtypeStruct((b, S, K, plan.D_pad, plan.e_pad), f32),
         jax.ShapeDtypeStruct((b, S, plan.D_pad, plan.e_pad), f32)],
        "chunked_states",
    )(*args)


def _fwd_out(q, k, v, lbc, lbr, sel, states, plan: Plan):
    """Step 2 over one segment -> o [b, S, g, Tseg, e_pad] float32."""
    b, S, Tseg = v.shape[:3]
    spec = _specs_time_major(plan, plan.chunk)
    ins = [spec[n](_same) for n in ("q", "k", "v", "lbc", "lbr")]
    args = [q, k, v, lbc, lbr]
    if plan.p > 1:
        ins.append(_sel_spec_whole(plan))
        args.append(sel)
    ins.append(_per_chunk_whole_spec(plan))
    args.append(states)
    return _call(
        _fwd_out_kernel, plan, (b, S, plan.chunks_per_segment), ins, spec["do"](_same),
        jax.ShapeDtypeStruct((b, S, plan.q_per_state, Tseg, plan.e_pad), f32), "chunked_output",
    )(*args)


def _bwd_states(q, lbc, do, sel, dS_end, plan: Plan):
    """Step 3 over one segment -> (ds_after [b, S, K, D_pad, e_pad], ds_start [b, S, D_pad, e_pad])."""
    b, S = lbc.shape[:2]
    spec = _specs_time_major(plan, plan.segment_time)
    ins = [spec["q"](_whole), spec["lbc"](_whole), spec["do"](_whole)]
    args = [q, lbc, do]
    if plan.p > 1:
        ins.append(_sel_spec_tiled(plan))
        args.append(sel)
    ins.append(_state_tile_spec(plan))
    args.append(dS_end)
    K = plan.chunks_per_segment
    return _call(
        _bwd_states_kernel, plan, (b, S, plan.n_tiles), ins,
        [_per_chunk_tiles_spec(plan), _state_tile_spec(plan)],
        [jax.ShapeDtypeStruct((b, S, K, plan.D_pad, plan.e_pad), f32),
         jax.ShapeDtypeStruct((b, S, plan.D_pad, plan.e_pad), f32)],
        "chunked_adjoint_states",
    )(*args)


def _bwd_grads(q, k, v, lbc, lbr, do, sel, states, ds_after, plan: Plan):
    """Step 4 over one segment -> dq [b, S, g, Tseg, d_pad], dk [b, S, Tseg, d_pad], dv [b, S, Tseg, e_pad],
    dbc [b, S, Tseg, 1], dbr [b, S, 1, Tseg] (float32, per state head)."""
    b, S, Tseg = v.shape[:3]
    g, dp, ep = plan.q_per_state, plan.d_pad, plan.e_pad
    spec = _specs_time_major(plan, plan.chunk)
    ins = [spec[n](_same) for n in ("q", "k", "v", "lbc", "lbr", "do")]
    args = [q, k, v, lbc, lbr, do]
    if plan.p > 1:
        ins.append(_sel_spec_whole(plan))
        args.append(sel)
    ins += [_per_chunk_whole_spec(plan), _per_chunk_whole_spec(plan)]
    args += [states, ds_after]
    c = plan.chunk
    outs = [
        pl.BlockSpec((None, None, g, c, dp), lambda b, s, n: (b, s, 0, n, 0)),
        pl.BlockSpec((None, None, c, dp), lambda b, s, n: (b, s, n, 0)),
        spec["v"](_same),
        spec["lbc"](_same),
        pl.BlockSpec((None, None, 1, c), lambda b, s, n: (b, s, 0, n)),
    ]
    shapes = [
        jax.ShapeDtypeStruct((b, S, g, Tseg, dp), f32),
        jax.ShapeDtypeStruct((b, S, Tseg, dp), f32),
        jax.ShapeDtypeStruct((b, S, Tseg, ep), f32),
        jax.ShapeDtypeStruct((b, S, Tseg, 1), f32),
        jax.ShapeDtypeStruct((b, S, 1, Tseg), f32),
    ]
    return _call(_bwd_grads_kernel, plan, (b, S, plan.chunks_per_segment), ins, outs, shapes,
                 "chunked_gradients")(*args)


# ----------------------------------------------------------------------------- segments and the VJP


def _segment(x, i, plan: Plan, axis: int):
    """Tokens of segment i (traced) along `axis`."""
    return lax.dynamic_slice_in_dim(x, i * plan.segment_time, plan.segment_time, axis=axis)


def _join_segments(ys, axis: int):
    """[n_seg, ...] stacked per-segment outputs -> the time axis `axis` (of one segment) concatenated."""
    ys = jnp.moveaxis(ys, 0, axis)
    shape = ys.shape[:axis] + (ys.shape[axis] * ys.shape[axis + 1],) + ys.shape[axis + 2:]
    return ys.reshape(shape)


_TIME_AXIS = {"q": 3, "k": 2, "v": 2, "lbc": 2, "lbr": 3, "do": 3}


def _forward(q, k, v, lbc, lbr, S0, plan: Plan, sel):
    """-> (o, S_end, residual states): all per-chunk states when they fit the budget (one segment),
    else the state at the start of each segment [n_seg, b, S, D_pad, e_pad]."""
    if plan.n_segments == 1:
        states, S_end = _fwd_states(k, v, lbc, sel, S0, plan)
        return _fwd_out(q, k, v, lbc, lbr, sel, states, plan), S_end, states

    def segment(S, i):
        qs, ks, vs, lcs, lrs = (_segment(x, i, plan, _TIME_AXIS[n])
                                for x, n in ((q, "q"), (k, "k"), (v, "v"), (lbc, "lbc"), (lbr, "lbr")))
        states, S_end = _fwd_states(ks, vs, lcs, sel, S, plan)
        return S_end, (_fwd_out(qs, ks, vs, lcs, lrs, sel, states, plan), S)

    S_end, (o, starts) = lax.scan(segment, S0, jnp.arange(plan.n_segments))
    return _join_segments(o, _TIME_AXIS["do"]), S_end, starts


def _backward(q, k, v, lbc, lbr, do, dS_end, saved, plan: Plan, sel):
    def grads(qs, ks, vs, lcs, lrs, dos, states, dS):
        ds_after, dS_start = _bwd_states(qs, lcs, dos, sel, dS, plan)
        return dS_start, _bwd_grads(qs, ks, vs, lcs, lrs, dos, sel, states, ds_after, plan)

    if plan.n_segments == 1:
        return grads(q, k, v, lbc, lbr, do, saved, dS_end)

    def segment(dS, i):
        qs, ks, vs, lcs, lrs, dos = (
            _segment(x, i, plan, _TIME_AXIS[n])
            for x, n in ((q, "q"), (k, "k"), (v, "v"), (lbc, "lbc"), (lbr, "lbr"), (do, "do"))
        )
        states, _ = _fwd_states(ks, vs, lcs, sel, saved[i], plan)  # recompute from the checkpoint
        return grads(qs, ks, vs, lcs, lrs, dos, states, dS)

    dS0, per_segment = lax.scan(segment, dS_end, jnp.arange(plan.n_segments), reverse=True)
    axes = (3, 2, 2, 2, 3)  # dq, dk, dv, dbc, dbr
    return dS0, tuple(_join_segments(x, a) for x, a in zip(per_segment, axes, strict=True))


@functools.lru_cache(maxsize=64)
def _selection_table(d: int, p: int, d_pad: int, D_pad: int) -> np.ndarray:
    """[p, D_pad, d_pad] float32: sel[m, f, i] = 1 if the m-th index of multi-index f is i (times the
    feature's sqrt-multinomial weight for m = 0); rows >= D and columns >= d are zero (padding)."""
    from scaling.ops.sympow import sympow_table

    idx, weight = sympow_table(d, p)
    sel = np.zeros((p, D_pad, d_pad), np.float32)
    rows = np.arange(idx.shape[0])
    for m in range(p):
        sel[m, rows, idx[:, m]] = 1.0
    sel[0, rows, idx[:, 0]] = weight
    return sel


def _sel(plan: Plan):
    if plan.p == 1:
        return None
    return jnp.asarray(_selection_table(plan.d, plan.p, plan.d_pad, plan.D_pad))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def chunked(q, k, v, lbc, lbr, S0, plan: Plan):
    """The pipeline above: -> (o [b, S, g, T_pad, e_pad] float32, S_end [b, S, D_pad, e_pad] float32).

    Inputs are in the kernel layout (see the module docstring); time already padded to plan.padded_time.
    """
    o, S_end, _ = _forward(q, k, v, lbc, lbr, S0, plan, _sel(plan))
    return o, S_end


def _chunked_fwd(q, k, v, lbc, lbr, S0, plan: Plan):
    o, S_end, saved = _forward(q, k, v, lbc, lbr, S0, plan, _sel(plan))
    return (o, S_end), (q, k, v, lbc, lbr, saved)


def _chunked_bwd(plan: Plan, res, cts):
    q, k, v, lbc, lbr, saved = res
    do, dS_end = cts
    dS0, (dq, dk, dv, dbc, dbr) = _backward(q, k, v, lbc, lbr, do, dS_end, saved, plan, _sel(plan))
    b, S = v.shape[:2]
    # Several state heads read one q/k head when q_div/k_div > 1 (SSD groups): sum their gradients.
    dq = dq.reshape(b, S // plan.q_div, plan.q_div, *dq.shape[2:]).sum(axis=2)
    dk = dk.reshape(b, S // plan.k_div, plan.k_div, *dk.shape[2:]).sum(axis=2)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbc, dbr, dS0


chunked.defvjp(_chunked_fwd, _chunked_bwd)
