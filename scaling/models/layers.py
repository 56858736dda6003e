"""Building blocks shared by every model: RMSNorm, SwiGLU MLP, rotary embeddings, projections."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.ops.segments import run_index

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtypes(m) -> tuple:
    """(compute dtype, param dtype) of a model config.

    Mixed precision (``model.dtype = "bfloat16"``, ``model.param_dtype = "float32"``, the only bf16 setting
    training accepts): parameters are stored (and updated by AdamW) in float32 and cast to bfloat16 by each
    projection for its matmul; the residual stream (the embedding lookup), the norms, gates, decays, recurrent
    states and the logits stay float32 (docs/architecture.md, "Precision")."""
    return DTYPES[m.dtype], DTYPES[m.param_dtype]


def dense(m, d_in: int, d_out: int, rngs: nnx.Rngs, *, std: float | None = None, use_bias: bool = False,
          dtype=None, out_float32: bool = False) -> nnx.Linear:
    """A bias-free projection initialised N(0, std^2) with std = model.init_std by default. It computes in the
    model's compute dtype unless ``dtype`` says otherwise; ``out_float32``: the matmul accumulates and returns
    float32 (its inputs still in the compute dtype), for outputs that feed float32 math (logits, Mamba's dt)."""
    compute, param_dtype = dtypes(m)
    return nnx.Linear(d_in, d_out, use_bias=use_bias, rngs=rngs, dtype=compute if dtype is None else dtype,
                      param_dtype=param_dtype, preferred_element_type=jnp.float32 if out_float32 else None,
                      kernel_init=nnx.initializers.normal(m.init_std if std is None else std))


def rms_norm(x, eps: float):
    """x / rms(x) over the last axis, computed in fp32."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """RMS norm with a learned scale (initialised to 1); computes in fp32, returns the input dtype."""

    def __init__(self, dim: int, eps: float, param_dtype=jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x):
        return (rms_norm(x, self.eps) * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class SwiGLU(nnx.Module):
    """MLP(x) = W_down (silu(W_gate x) * W_up x)."""

    def __init__(self, m, hidden: int, rngs: nnx.Rngs):
        # Output projection scaled down with depth, as in GPT-2, so the residual stream starts O(1).
        out_std = m.init_std / (2 * m.n_layers) ** 0.5
        self.gate = dense(m, m.d_model, hidden, rngs)
        self.up = dense(m, m.d_model, hidden, rngs)
        self.down = dense(m, hidden, m.d_model, rngs, std=out_std)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


def rope(x, positions, theta: float = 10_000.0):
    """Rotary position embedding (rotate-half convention).

    x: [batch, time, heads, head_dim] with even head_dim; positions: [time] or [batch, time] int.
    Returns x rotated, in x.dtype; the angles are computed in fp32.
    """
    d = x.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, d // 2, dtype=jnp.float32) * 2 / d)
    pos = positions.astype(jnp.float32)
    if pos.ndim == 1:
        pos = pos[None]
    ang = pos[..., None] * inv_freq  # [b|1, t, d/2]
    cos, sin = jnp.cos(ang)[:, :, None], jnp.sin(ang)[:, :, None]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : d // 2], x32[..., d // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def causal_conv(x, conv_state, w, b, segment_ids=None):
    """Causal depthwise conv over time: y[t] = sum_i w[i] * x[t - (d_conv - 1) + i] + b.

    x [batch, time, channels]; conv_state [batch, d_conv - 1, channels], the inputs before x (zeros at the
    start of a sequence); w [d_conv, channels]; b [channels]. Returns (y, the new conv state).
    segment_ids [batch, time] (packed rows, or None): an input from another document counts as zero, as at
    the start of a sequence; conv_state belongs to the call's first document, and the new conv state keeps
    only the last document's inputs (scaling.ops.segments).
    """
    full = jnp.concatenate([conv_state.astype(x.dtype), x], axis=1)
    t, w = x.shape[1], w.astype(x.dtype)
    if segment_ids is None:
        y = sum(full[:, i: i + t] * w[i] for i in range(w.shape[0])) + b.astype(x.dtype)
        return y, full[:, t:]
    run = run_index(segment_ids)
    run_full = jnp.pad(run, [(0, 0), (conv_state.shape[1], 0)])  # the conv state: the first document
    y = sum(jnp.where((run_full[:, i: i + t] == run)[..., None], full[:, i: i + t], 0) * w[i]
            for i in range(w.shape[0])) + b.astype(x.dtype)
    return y, jnp.where((run_full[:, t:] == run[:, -1:])[..., None], full[:, t:], 0)


def short_conv(parts, conv_state, w, b, segment_ids=None):
    """:func:`causal_conv` over the concatenation of projections ``parts`` (each [batch, time, c_i]), split back:
    (the convolved parts, the new conv state)."""
    h, new_state = causal_conv(jnp.concatenate(parts, axis=-1), conv_state, w, b, segment_ids)
    edges = [sum(p.shape[-1] for p in parts[: i + 1]) for i in range(len(parts) - 1)]
    return jnp.split(h, edges, axis=-1), new_state


def decay_params(n_heads: int, dt_min: float, dt_max: float, a_init_range, rngs: nnx.Rngs,
                 param_dtype) -> tuple[nnx.Param, nnx.Param]:
    """(dt_bias, A_log) [n_heads] of Mamba-2's decay -exp(A_log) softplus(. + dt_bias): dt starts log-uniform in
    [dt_min, dt_max] (dt_bias is its inverse softplus), A uniform in ``a_init_range``. Mamba-2 and Gated
    DeltaNet use it."""
    u = jax.random.uniform(rngs.params(), (n_heads,), jnp.float32)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt_bias = nnx.Param((dt + jnp.log(-jnp.expm1(-dt))).astype(param_dtype))
    lo, hi = a_init_range
    a = jax.random.uniform(rngs.params(), (n_heads,), jnp.float32, lo, hi)
    return dt_bias, nnx.Param(jnp.log(a).astype(param_dtype))


def gated_head_norm(o, gate, norm_w, eps: float, dtype):
    """o [b, t, heads, head_dim] RMS-normalised per head, times norm_w [head_dim] and SiLU(gate) (gate
    [b, t, heads * head_dim]), in ``dtype``: the output gate of GLA and Gated DeltaNet."""
    b, t, h, hd = o.shape
    o = rms_norm(o, eps) * norm_w.astype(jnp.float32)
    return (o * jax.nn.silu(gate.astype(jnp.float32)).reshape(b, t, h, hd)).astype(dtype)


def conv_params(d_conv: int, channels: int, rngs: nnx.Rngs, param_dtype) -> tuple[nnx.Param, nnx.Param]:
    """(weight [d_conv, channels] ~ U(-1/sqrt(d_conv), 1/sqrt(d_conv)), bias [channels] = 0) of a short conv."""
    bound = 1 / d_conv ** 0.5
    w = jax.random.uniform(rngs.params(), (d_conv, channels), param_dtype, -bound, bound)
    return nnx.Param(w), nnx.Param(jnp.zeros((channels,), param_dtype))


class QKVO(nnx.Module):
    """The q/k/v/o projections and RoPE shared by attention and power retention (so a transformer's
    weights fit a retention layer). q: n_heads x head_dim; k, v: n_kv_heads x head_dim."""

    def __init__(self, m, n_heads: int, n_kv_heads: int, rope_on: bool, rope_theta: float, rngs: nnx.Rngs):
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = m.d_model // n_heads
        self.rope_on, self.rope_theta = rope_on, rope_theta
        out_std = m.init_std / (2 * m.n_layers) ** 0.5
        self.q = dense(m, m.d_model, n_heads * self.head_dim, rngs)
        self.k = dense(m, m.d_model, n_kv_heads * self.head_dim, rngs)
        self.v = dense(m, m.d_model, n_kv_heads * self.head_dim, rngs)
        self.o = dense(m, n_heads * self.head_dim, m.d_model, rngs, std=out_std)

    def project(self, x):
        """x [b, t, d_model] -> the q, k, v projections [b, t, heads * head_dim] (before the head split)."""
        return self.q(x), self.k(x), self.v(x)

    def heads(self, q, k, v, positions):
        """Projections -> q [b, t, n_heads, head_dim], k and v [b, t, n_kv_heads, head_dim], RoPE on q and k."""
        b, t, _ = q.shape
        q = q.reshape(b, t, self.n_heads, self.head_dim)
        k = k.reshape(b, t, self.n_kv_heads, self.head_dim)
        v = v.reshape(b, t, self.n_kv_heads, self.head_dim)
        if self.rope_on:
            q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
        return q, k, v

    def qkv(self, x, positions):
        """x [b, t, d_model] -> q [b, t, n_heads, head_dim], k and v [b, t, n_kv_heads, head_dim]."""
        return self.heads(*self.project(x), positions)

    def out(self, y):
        """y [b, t, n_heads, head_dim] -> [b, t, d_model]."""
        b, t = y.shape[:2]
        return self.o(y.reshape(b, t, self.n_heads * self.head_dim))
