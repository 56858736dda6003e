"""Power retention, chunked form, as Pallas kernels: same signature and values as
``scaling.ops.power_retention(..., form="chunked")`` (see that module for the math).

The kernels (pallas_kernels/_chunked.py) see one kv head's state S' = [S, z] as a single [D, e + 1]
float32 matrix: the values get a column of ones, so the normaliser's state z and the denominator den ride
along as the last value column (one code path for num and den). q heads of a GQA group are processed by
the program of their kv head, so k, v and the state are read once per group.

Reference check: the tests in tests/pallas/test_power_retention_pallas.py hold values and every gradient to
the XLA chunked form; ``python -m pallas_kernels.power_retention`` runs a quick check of one case.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from pallas_kernels import _chunked
from pallas_kernels._config import BACKENDS, make_plan
from scaling.ops.power_retention import RetentionState, check_inputs, finish_output

__all__ = ["power_retention"]


def _check_int_or_none(fn: str, name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise ValueError(f"{fn}: {name} = {value!r}: must be an integer >= 1, or None for the backend default")


def check_kernel_options(fn: str, *, form, chunk_size, block_d, state_budget_bytes, interpret, target) -> None:
    """Validates the arguments the Pallas entry points add to (or restrict in) the ops' signatures."""
    if form != "chunked":
        raise ValueError(
            f"{fn}: form = {form!r}: the Pallas kernels implement only 'chunked'; use scaling.ops with "
            "backend='xla' for 'parallel' or 'recurrent'"
        )
    _check_int_or_none(fn, "chunk_size", chunk_size)
    _check_int_or_none(fn, "block_d", block_d)
    _check_int_or_none(fn, "state_budget_bytes", state_budget_bytes)
    if interpret is not None and not isinstance(interpret, bool):
        raise ValueError(f"{fn}: interpret = {interpret!r}: must be True, False or None (automatic)")
    if target is not None and target not in BACKENDS:
        raise ValueError(
            f"{fn}: target = {target!r}: must be one of {', '.join(map(repr, BACKENDS))}, or None for the "
            "default JAX backend"
        )


def pad_axis(x, axis: int, size: int):
    """Zero-pads axis `axis` of x up to `size`."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def local_cumsum(lg_bst, chunk: int):
    """[b, S, T_pad] log gates -> cumulative sums restarting at every chunk (each <= 0, never below
    chunk * min(log g)), as the column [b, S, T_pad, 1] and row [b, S, 1, T_pad] the kernels read."""
    b, S, T = lg_bst.shape
    lb = jnp.cumsum(lg_bst.reshape(b, S, T // chunk, chunk), axis=-1).reshape(b, S, T)
    return lb[..., None], lb[:, :, None, :]


def power_retention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_g: jax.Array | None = None,
    *,
    p: int = 2,
    scale: float | None = None,
    chunk_size: int | None = None,
    form: str = "chunked",
    normalize: str = "sum",
    eps: float = 1e-6,
    initial_state: RetentionState | None = None,
    return_state: bool = False,
    block_d: int | None = None,
    state_budget_bytes: int | None = None,
    interpret: bool | None = None,
    target: str | None = None,
):
    """Causal power retention, chunked, with Pallas kernels for the forward and the backward pass.

    Args (as scaling.ops.power_retention):
      q: [batch, time, hq, d] queries (any float dtype; computed in float32 inside the kernels).
      k: [batch, time, hk, d] keys; hq a multiple of hk (q head i reads kv head i // (hq // hk)).
      v: [batch, time, hk, e] values.
      log_g: [batch, time, hk] float32 log gate (<= 0), or None for no decay.
      p: 1, 2, 3 or 4 (odd p needs normalize="rmsnorm").
      scale: multiplies <q, k> before the power; None means 1/sqrt(d).
      chunk_size: tokens per chunk, or None for the backend's default (cpu 64, gpu 64, tpu 128). Rounded up
        to the backend's granularity (gpu: a power of two >= 16; tpu: a multiple of 128), which changes
        round-off only: every chunk size computes the same function.
      form: only "chunked".
      normalize, eps: "sum" -> num / (den + eps); "rmsnorm" -> num / sqrt(mean(num^2) + eps).
      initial_state: RetentionState (S [batch, hk, D, e], z [batch, hk, D], float32) or None.
      return_state: also return the RetentionState after the last token.
    Kernel options:
      block_d: feature rows per state tile (None: backend default; rounded like chunk_size).
      state_budget_bytes: most bytes of per-chunk states held at once. Within it the forward keeps every
        chunk's state for the backward; beyond it time is cut into segments, only each segment's initial
        state is kept, and the backward recomputes a segment's states. None: env
        STATESCALE_PALLAS_STATE_BUDGET_MB or the backend default (cpu 256 MiB, gpu/tpu 1 GiB).
      interpret: force Pallas interpret mode; None means on exactly when running on CPU.
      target: apply "cpu", "gpu" or "tpu" block rules (None: the default JAX backend). With
        interpret=True this checks another backend's padding and tiling on CPU.

    Returns:
      y [batch, time, hq, e] in q.dtype, or (y, RetentionState) when return_state is True.
    """
    fn = "pallas_kernels.power_retention"
    check_kernel_options(fn, form=form, chunk_size=chunk_size, block_d=block_d,
                         state_budget_bytes=state_budget_bytes, interpret=interpret, target=target)
    b, T, hq, hk, d, e, D = check_inputs(
        q, k, v, log_g, p=p, normalize=normalize, eps=eps, scale=scale, initial_state=initial_state, fn=fn
    )
    p, g = int(p), hq // hk
    f32 = jnp.float32
    if initial_state is None:
        S0, z0 = jnp.zeros((b, hk, D, e), f32), jnp.zeros((b, hk, D), f32)
    else:
        S0, z0 = (jnp.asarray(x, f32) for x in initial_state)
    if T == 0:
        y = jnp.zeros((b, 0, hq, e), q.dtype)
        return (y, RetentionState(S0, z0)) if return_state else y

    plan = make_plan(
        p=p, scale=1.0 / math.sqrt(d) if scale is None else float(scale), batch=b, time=T, state_heads=hk,
        q_per_state=g, q_div=1, k_div=1, d=d, e=e + 1, D=D, chunk_size=chunk_size, block_d=block_d,
        state_budget_bytes=state_budget_bytes, interpret=interpret, backend=target,
    )
    Tp, dp, ep = plan.padded_time, plan.d_pad, plan.e_pad
    # Head-major layouts so that every block's last two dims are (time, feature). Padded tokens have
    # q = k = v = 0 and log g = 0: they add phi(0) = 0 to the state and leave its decay alone.
    q_bhgtd = jnp.asarray(q).reshape(b, T, hk, g, d).transpose(0, 2, 3, 1, 4)
    q_bhgtd = pad_axis(pad_axis(q_bhgtd, 3, Tp), 4, dp)
    k_bhtd = pad_axis(pad_axis(jnp.asarray(k).transpose(0, 2, 1, 3), 2, Tp), 3, dp)
    v = jnp.asarray(v)
    v1 = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)  # den rides as a column
    v_bhte = pad_axis(pad_axis(v1.transpose(0, 2, 1, 3), 2, Tp), 3, ep)
    lg = jnp.zeros((b, T, hk), f32) if log_g is None else jnp.asarray(log_g, f32)
    lbc, lbr = local_cumsum(pad_axis(lg.transpose(0, 2, 1), 2, Tp), plan.chunk)
    S0_aug = pad_axis(pad_axis(jnp.concatenate([S0, z0[..., None]], axis=-1), 2, plan.D_pad), 3, ep)

    o, S_end = _chunked.chunked(q_bhgtd, k_bhtd, v_bhte, lbc, lbr, S0_aug, plan)
    o = o[:, :, :, :T, : e + 1].transpose(0, 3, 1, 2, 4)  # [b, T, hk, g, e + 1]
    y = finish_output(o[..., :e], o[..., e], normalize=normalize, eps=eps, out_dtype=q.dtype)
    if not return_state:
        return y
    return y, RetentionState(S_end[:, :, :D, :e], S_end[:, :, :D, e])


def reference_check(chunk_size: int = 16) -> dict[str, float]:
    """This file's reference check: relative error of y against scaling.ops' XLA chunked form for p = 1..4
    on a small ragged GQA case (run by ``python -m pallas_kernels``)."""
    import numpy as np

    from scaling.ops.power_retention import power_retention as xla_power_retention

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((2, 37, 4, 8), (2, 37, 2, 8), (2, 37, 2, 8)))
    log_g = jnp.asarray(rng.uniform(-0.3, -0.01, (2, 37, 2)), jnp.float32)
    errors = {}
    with jax.default_matmul_precision("highest"):
        for p in (1, 2, 3, 4):
            normalize = "sum" if p % 2 == 0 else "rmsnorm"
            y_ref = xla_power_retention(q, k, v, log_g, p=p, normalize=normalize, chunk_size=chunk_size)
            y = power_retention(q, k, v, log_g, p=p, normalize=normalize, chunk_size=chunk_size)
            errors[f"power_retention p={p} normalize={normalize}"] = float(
                jnp.linalg.norm(y - y_ref) / jnp.linalg.norm(y_ref)
            )
    return errors
