"""Argument checks shared by the linear-state ops (gla, gated_delta, based): one-line ValueErrors that name the
function, the argument and what it accepts."""

from __future__ import annotations

import numbers

import jax.numpy as jnp


def check_qkv(q, k, v, fn: str) -> tuple[int, int, int, int, int]:
    """q, k [batch, time, heads, dk] of one shape (q floating), v [batch, time, heads, dv]; returns
    (b, t, h, dk, dv)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{fn}: {name} must have rank 4 [batch, time, heads, dim]; got shape {tuple(x.shape)}")
    if not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(f"{fn}: q must be a floating dtype (o is returned in q.dtype); got {q.dtype}")
    b, t, h, dk = q.shape
    if k.shape != q.shape:
        raise ValueError(f"{fn}: k must have the shape of q, {tuple(q.shape)}; got {tuple(k.shape)}")
    if v.shape[:3] != (b, t, h) or v.shape[3] < 1:
        raise ValueError(f"{fn}: v must have shape [batch, time, heads, dv] with {(b, t, h)} from q; "
                         f"got {tuple(v.shape)}")
    return b, t, h, dk, v.shape[3]


def check_scale(scale, fn: str) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise ValueError(f"{fn}: scale = {scale!r}: must be a Python float, or None for dk^-1/2")


def check_state_matrix(initial_state, shape: tuple[int, ...], fn: str) -> None:
    """A [batch, heads, dk, dv] state matrix (GLA, Gated DeltaNet), or None."""
    if initial_state is not None and tuple(initial_state.shape) != tuple(shape):
        raise ValueError(f"{fn}: initial_state must be None or have shape [batch, heads, dk, dv] = "
                         f"{tuple(shape)}; got {tuple(initial_state.shape)}")


def check_form_and_chunk(form, chunk_size, forms: tuple[str, ...], fn: str) -> None:
    if form not in forms:
        raise ValueError(f"{fn}: form = {form!r}: must be one of {', '.join(map(repr, forms))}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size = {chunk_size!r}: must be an int >= 1")
