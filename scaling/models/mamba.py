"""Mamba-2 mixer (Dao & Gu 2024) over the SSD op in scaling.ops.ssd.

in_proj -> (z, x, B, C, dt); a short causal depthwise conv + SiLU on (x, B, C); dt = softplus(dt + dt_bias);
A = -exp(A_log); y = ssd(x, dt, A, B, C, D); y = RMSNorm(y * silu(z)); out_proj.
Decode state: the conv's last (d_conv - 1) inputs and the SSD state [heads, head_dim, d_state].
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.models.kernels import ssd
from scaling.models.layers import causal_conv, conv_params, decay_params, dense, dtypes, rms_norm


class MambaState(NamedTuple):
    conv: jax.Array  # [batch, d_conv - 1, conv_dim]: the last inputs of the causal conv
    ssm: jax.Array  # [batch, heads, head_dim, d_state] float32


class Mamba2(nnx.Module):
    """Config: model.mamba.{d_state, expand, head_dim, n_groups, d_conv, chunk_size, dt_min, dt_max,
    a_init_range}; d_inner = expand * d_model, heads = d_inner / head_dim."""

    state_types = (MambaState,)  # the decode states it returns (scaling.inference saves them by name)

    def __init__(self, m, rngs: nnx.Rngs):
        s = m.mamba
        self.d_inner = s.expand * m.d_model
        self.head_dim, self.d_state, self.n_groups = s.head_dim, s.d_state, s.n_groups
        self.n_heads = self.d_inner // s.head_dim
        self.d_conv, self.chunk_size = s.d_conv, s.chunk_size
        self.conv_dim = self.d_inner + 2 * s.n_groups * s.d_state
        self.eps = m.norm_eps
        self.backend = m.kernel
        self.dtype, param_dtype = dtypes(m)
        out_std = m.init_std / (2 * m.n_layers) ** 0.5
        # accumulated and returned in float32 (dt feeds the float32 decay); z and x, B, C go back to the compute dtype
        self.in_proj = dense(m, m.d_model, self.d_inner + self.conv_dim + self.n_heads, rngs, out_float32=True)
        self.out_proj = dense(m, self.d_inner, m.d_model, rngs, std=out_std)
        self.conv_w, self.conv_b = conv_params(s.d_conv, self.conv_dim, rngs, param_dtype)
        self.dt_bias, self.A_log = decay_params(self.n_heads, s.dt_min, s.dt_max, s.a_init_range, rngs, param_dtype)
        self.D = nnx.Param(jnp.ones((self.n_heads,), param_dtype))
        self.norm_w = nnx.Param(jnp.ones((self.d_inner,), param_dtype))

    def init_state(self, batch: int, max_len: int):
        del max_len
        return MambaState(
            conv=jnp.zeros((batch, self.d_conv - 1, self.conv_dim), self.dtype),
            ssm=jnp.zeros((batch, self.n_heads, self.head_dim, self.d_state), jnp.float32),
        )

    def __call__(self, x, positions, state=None, *, decode: bool = False, segment_ids=None):
        """x [batch, time, d_model] -> y [batch, time, d_model] (and the new state if state is given).

        segment_ids [batch, time] (packed rows): each document restarts from a zero state, conv included."""
        del positions  # the recurrence carries position
        b, t, _ = x.shape
        zxbcdt = self.in_proj(x)
        z, xbc, dt = jnp.split(zxbcdt, [self.d_inner, self.d_inner + self.conv_dim], axis=-1)
        z, xbc = z.astype(self.dtype), xbc.astype(self.dtype)
        conv_state = self.init_state(b, 0).conv if state is None else state.conv
        xbc, new_conv = causal_conv(xbc, conv_state, self.conv_w[...], self.conv_b[...], segment_ids)
        xbc = jax.nn.silu(xbc)
        gn = self.n_groups * self.d_state
        xs, B, C = jnp.split(xbc, [self.d_inner, self.d_inner + gn], axis=-1)
        xs = xs.reshape(b, t, self.n_heads, self.head_dim)
        B = B.reshape(b, t, self.n_groups, self.d_state)
        C = C.reshape(b, t, self.n_groups, self.d_state)
        dt = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32))
        A = -jnp.exp(self.A_log[...].astype(jnp.float32))
        out = ssd(xs, dt, A, B, C, D=self.D[...].astype(jnp.float32), chunk_size=self.chunk_size,
                  form="recurrent" if decode else "chunked",
                  initial_state=None if state is None else state.ssm, return_state=state is not None,
                  backend=self.backend, segment_ids=segment_ids)
        y, ssm = out if state is not None else (out, None)
        y = y.reshape(b, t, self.d_inner)
        y = rms_norm(y * jax.nn.silu(z.astype(jnp.float32)), self.eps) * self.norm_w[...].astype(jnp.float32)
        y = self.out_proj(y.astype(self.dtype))
        return y if state is None else (y, MambaState(new_conv, ssm))
