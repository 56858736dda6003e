"""Mamba-2 SSD, chunked form, as Pallas kernels: same signature and values as
``scaling.ops.ssd(..., form="chunked")`` (see that module for the math).

SSD is the degree-1 case of the shared chunked kernels (pallas_kernels/_chunked.py) with a state per
head: C plays the query, B the key, dt * x the value and dt * A the log gate, and the state is h^T
[d_state, head_dim]. B and C are read per group (head i reads group i // (heads // groups)) through the
kernels' index maps, so they are never repeated per head in memory; their gradients are summed over the
heads of a group after the kernels.

Reference check: tests/pallas/test_ssd_pallas.py holds values and every gradient to the XLA chunked form;
``python -m pallas_kernels.ssd`` runs a quick check of one case.
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels import _chunked
from pallas_kernels._config import make_plan
from pallas_kernels.power_retention import check_kernel_options, local_cumsum, pad_axis
from scaling.ops.ssd import as_arrays, check_inputs

__all__ = ["ssd"]


def ssd(
    x,
    dt,
    A,
    B,
    C,
    *,
    D=None,
    chunk_size: int | None = None,
    form: str = "chunked",
    initial_state=None,
    return_state: bool = False,
    state_budget_bytes: int | None = None,
    interpret: bool | None = None,
    target: str | None = None,
):
    """Mamba-2 SSD scan, chunked, with Pallas kernels for the forward and the backward pass.

    Args (as scaling.ops.ssd):
      x: [batch, time, heads, head_dim] inputs (y comes back in this dtype).
      dt: [batch, time, heads] positive step sizes.
      A: [heads] negative decay rates (log decay per step dt * A <= 0).
      B, C: [batch, time, groups, d_state]; groups divides heads.
      D: optional [heads] skip, y += D * x.
      chunk_size: tokens per chunk, or None for the backend default (rounded as in
        pallas_kernels.power_retention; only round-off depends on it).
      form: only "chunked".
      initial_state: optional float32 [batch, heads, head_dim, d_state].
      return_state: also return the final state.
    Kernel options: state_budget_bytes, interpret, target as in pallas_kernels.power_retention (the state
    has d_state rows, so there is no block_d).

    Returns:
      y [batch, time, heads, head_dim] in x.dtype; with return_state, (y, state float32
      [batch, heads, head_dim, d_state]).
    """
    fn = "pallas_kernels.ssd"
    check_kernel_options(fn, form=form, chunk_size=chunk_size, block_d=None,
                         state_budget_bytes=state_budget_bytes, interpret=interpret, target=target)
    x, dt, A, B, C, D, initial_state = as_arrays(x, dt, A, B, C, D, initial_state)
    b, t, h, P, G, N = check_inputs(x, dt, A, B, C, D, initial_state)
    f32 = jnp.float32
    h0 = jnp.zeros((b, h, P, N), f32) if initial_state is None else initial_state.astype(f32)
    if t == 0:
        y = jnp.zeros(x.shape, x.dtype)
        return (y, h0) if return_state else y

    r = h // G
    plan = make_plan(
        p=1, scale=1.0, batch=b, time=t, state_heads=h, q_per_state=1, q_div=r, k_div=r, d=N, e=P, D=N,
        chunk_size=chunk_size, block_d=None, state_budget_bytes=state_budget_bytes, interpret=interpret,
        backend=target,
    )
    Tp, dp, ep = plan.padded_time, plan.d_pad, plan.e_pad
    dt32 = dt.astype(f32)
    a_bht = (dt32 * A.astype(f32)).transpose(0, 2, 1)
    xdt = x.astype(f32) * dt32[..., None]
    # Padding with dt = 0 (log decay 0, no input) leaves the state unchanged, as in the XLA form.
    q_bg1tn = pad_axis(pad_axis(C.transpose(0, 2, 1, 3)[:, :, None], 3, Tp), 4, dp)
    k_bgtn = pad_axis(pad_axis(B.transpose(0, 2, 1, 3), 2, Tp), 3, dp)
    v_bhtp = pad_axis(pad_axis(xdt.transpose(0, 2, 1, 3), 2, Tp), 3, ep)
    lbc, lbr = local_cumsum(pad_axis(a_bht, 2, Tp), plan.chunk)
    S0 = pad_axis(pad_axis(h0.transpose(0, 1, 3, 2), 2, plan.D_pad), 3, ep)  # h^T: [b, h, N, P]

    o, S_end = _chunked.chunked(q_bg1tn, k_bgtn, v_bhtp, lbc, lbr, S0, plan)
    y = o[:, :, 0, :t, :P].transpose(0, 2, 1, 3)  # [b, t, h, P]
    if D is not None:
        y = y + D.astype(f32)[:, None] * x.astype(f32)
    y = y.astype(x.dtype)
    if not return_state:
        return y
    return y, S_end[:, :, :N, :P].transpose(0, 1, 3, 2)


def reference_check(chunk_size: int = 16) -> dict[str, float]:
    """This file's reference check: relative error of y and the final state against scaling.ops' XLA
    chunked form on a small ragged grouped case (run by ``python -m pallas_kernels``)."""
    import jax
    import numpy as np

    from scaling.ops.ssd import ssd as xla_ssd

    rng = np.random.default_rng(0)
    b, t, h, p, g, n = 2, 37, 4, 8, 2, 6
    args = (
        jnp.asarray(rng.standard_normal((b, t, h, p)), jnp.float32),
        jnp.asarray(rng.uniform(0.05, 1.0, (b, t, h)), jnp.float32),
        -jnp.asarray(rng.uniform(0.1, 2.0, (h,)), jnp.float32),
        jnp.asarray(rng.standard_normal((b, t, g, n)), jnp.float32),
        jnp.asarray(rng.standard_normal((b, t, g, n)), jnp.float32),
    )
    with jax.default_matmul_precision("highest"):
        y_ref, h_ref = xla_ssd(*args, chunk_size=chunk_size, return_state=True)
        y, h_end = ssd(*args, chunk_size=chunk_size, return_state=True)
    return {
        "ssd y": float(jnp.linalg.norm(y - y_ref) / jnp.linalg.norm(y_ref)),
        "ssd state": float(jnp.linalg.norm(h_end - h_ref) / jnp.linalg.norm(h_ref)),
    }
