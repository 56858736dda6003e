"""The exact symmetric power feature map of power retention: phi(x) with <phi(x), phi(y)> = <x, y>^p.

One feature per multi-index i_1 <= ... <= i_p of a d-vector, weighted by sqrt(multinomial coefficient):
D = C(d+p-1, p) features. Both maps here have a custom backward that gathers instead of scatter-adding.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from scaling.mixers.retention import sympow_dim

__all__ = ["sympow_dim", "sympow_features", "sympow_table"]


@functools.lru_cache(maxsize=64)
def sympow_table(d: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Static index table: idx [D, p] int32 (sorted multi-indices), weight [D] float64.

    weight = sqrt(p! / prod_m count_m!), so sum over multi-indices of weight^2 * prod x_i * prod y_i
    equals the sum over all d^p ordered index tuples, i.e. <x, y>^p.
    """
    idx = np.array(list(itertools.combinations_with_replacement(range(d), p)), dtype=np.int32)
    idx = idx.reshape(-1, p)
    weight = np.empty(idx.shape[0], dtype=np.float64)
    for r, row in enumerate(idx):
        _, counts = np.unique(row, return_counts=True)
        weight[r] = math.factorial(p) / math.prod(math.factorial(int(c)) for c in counts)
    return idx, np.sqrt(weight)


def sympow_features(x: jax.Array, p: int) -> jax.Array:
    """Exact symmetric power feature map: x [..., d] -> phi(x) [..., D], D = sympow_dim(d, p).

    <phi(x), phi(y)> = <x, y>^p exactly (up to round-off). Computed in x.dtype by gathering the p factors
    of each multi-index and multiplying them (no [..., D, p] intermediate). phi is homogeneous of degree
    p: phi(a x) = a^p phi(x), which the chunked form uses to apply decays to d-vectors instead of D-vectors.
    """
    if not isinstance(p, int | np.integer) or isinstance(p, bool) or p < 1:
        raise ValueError(f"sympow_features: p = {p!r}: must be an integer >= 1")
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"sympow_features: x must have a feature axis (rank >= 1), got shape {x.shape}")
    return _sympow(x, int(p))


@functools.lru_cache(maxsize=64)
def _sympow_full_index(d: int, p: int) -> np.ndarray:
    """[d]*p int32: the feature index of each ordered index tuple (its sorted multi-index)."""
    idx, _ = sympow_table(d, p)
    lut = {tuple(row): i for i, row in enumerate(idx.tolist())}
    full = [lut[tuple(sorted(t))] for t in itertools.product(range(d), repeat=p)]
    return np.asarray(full, np.int32).reshape((d,) * p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _sympow(x, p):
    idx, weight = sympow_table(int(x.shape[-1]), p)
    out = x[..., idx[:, 0]]
    for m in range(1, p):
        out = out * x[..., idx[:, m]]
    return out * jnp.asarray(weight, dtype=x.dtype)


def _sympow_fwd(x, p):
    return _sympow(x, p), x


def _sympow_bwd(p, x, g):
    # sum_a g_a phi_a(x) = sum over ordered tuples t of T[t] x_t1...x_tp with T[t] = g_a(t) / w_a(t) (each
    # multi-index a has w_a^2 orderings). Its gradient is p * T contracted with x on p - 1 axes. Gathering
    # g into T avoids the scatter-add that autodiff of the forward gather makes (slow on CPU).
    d = x.shape[-1]
    _, weight = sympow_table(d, p)
    t = (g / jnp.asarray(weight, g.dtype))[..., _sympow_full_index(d, p)]  # [..., d, ..., d]
    for _ in range(p - 1):
        t = jnp.einsum("...ij,...j->...i", t, x.reshape(x.shape[:-1] + (1,) * (t.ndim - x.ndim - 1) + (d,)))
    return (p * t,)


_sympow.defvjp(_sympow_fwd, _sympow_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _sympow_rows(xT, p):
    """phi over the second-to-last axis: xT [..., d, r] -> phi(x)^T [..., D, r], D = sympow_dim(d, p).

    The feature-major layout the chunked form's matmuls want: each feature is a product of whole rows of
    xT, so the gather copies contiguous rows (vectorised) instead of single elements of the last axis.
    """
    idx, weight = sympow_table(int(xT.shape[-2]), p)
    out = xT[..., idx[:, 0], :]
    for m in range(1, p):
        out = out * xT[..., idx[:, m], :]
    return out * jnp.asarray(weight, dtype=xT.dtype)[:, None]


def _sympow_rows_fwd(xT, p):
    return _sympow_rows(xT, p), xT


def _sympow_rows_bwd(p, xT, g):
    # As _sympow_bwd, with the feature axis second to last: gather g into the ordered-tuple tensor T and
    # contract it with x on p - 1 axes (no scatter-add).
    d = xT.shape[-2]
    _, weight = sympow_table(d, p)
    full = _sympow_full_index(d, p).reshape(-1)
    t = (g / jnp.asarray(weight, g.dtype)[:, None])[..., full, :]  # [..., d^p, r]
    t = t.reshape(g.shape[:-2] + (d,) * p + g.shape[-1:])
    for _ in range(p - 1):
        x_b = xT.reshape(xT.shape[:-2] + (1,) * (t.ndim - xT.ndim - 1) + xT.shape[-2:])
        t = jnp.einsum("...ijr,...jr->...ir", t, x_b)
    return (p * t,)


_sympow_rows.defvjp(_sympow_rows_fwd, _sympow_rows_bwd)
