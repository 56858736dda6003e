"""Power retention mixer (Manifest AI's symmetric-power linear attention) over scaling.ops.

The projections match attention's (q/k/v/o), so a transformer's weights fit it, plus a per-kv-head
gate log_g = logsigmoid(W_g x + b) whose bias starts the gate at ``gate_init`` (near 1: long memory).
The state per sequence is n_kv_heads x (D x head_dim + D) with D = C(head_dim + p - 1, p): it is tuned by
p and by the head split at fixed parameters.

``retention.conv = d_conv > 0`` adds a short causal depthwise conv over the q/k/v projections before RoPE
(as Based, Mamba and the flash-linear-attention layers do): it lets a key at token t depend on token t - 1,
which associative recall needs and which a linear attention cannot otherwise focus on sharply. Its decode
state, the last d_conv - 1 projections, adds (d_conv - 1) x (n_heads + 2 n_kv_heads) x head_dim to the state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.mixers.retention import sympow_dim
from scaling.models.kernels import power_retention
from scaling.models.layers import QKVO, causal_conv, conv_params, dense, dtypes
from scaling.ops.attention import attention
from scaling.ops.power_retention import RetentionState


class ConvRetentionState(NamedTuple):
    """Decode state of a power retention layer with a short conv: the op's state (S, z) and the conv's."""

    S: jax.Array  # [batch, kv_heads, D, head_dim] float32
    z: jax.Array  # [batch, kv_heads, D] float32
    conv: jax.Array  # [batch, d_conv - 1, (n_heads + 2 n_kv_heads) * head_dim]: the last projections


class PowerRetention(nnx.Module):
    """Config: model.retention.{n_heads, n_kv_heads, p, chunk_size, rope, rope_theta, normalize, gate,
    gate_init, conv}; head_dim = d_model / n_heads."""

    state_types = (RetentionState, ConvRetentionState)  # the decode states it returns (scaling.inference saves them)

    def __init__(self, m, rngs: nnx.Rngs):
        r = m.retention
        self.p, self.chunk_size, self.normalize = r.p, r.chunk_size, r.normalize
        self.form = r.get("form", "chunked")  # of the training / prefill forward
        self.backend = m.kernel
        self.proj = QKVO(m, r.n_heads, r.n_kv_heads, r.rope, r.rope_theta, rngs)
        self.gate = nnx.data(None)
        if r.gate:
            # float32 whatever the compute dtype: a gate near 1 (logit ~7) needs more than bf16's 8 bits
            self.gate = dense(m, m.d_model, r.n_kv_heads, rngs, use_bias=True, dtype=jnp.float32)
            logit = math.log(r.gate_init / (1 - r.gate_init))
            self.gate.bias[...] = jnp.full_like(self.gate.bias[...], logit)
        self.d_conv = r.conv
        self.dtype, param_dtype = dtypes(m)
        if r.conv:
            channels = (r.n_heads + 2 * r.n_kv_heads) * self.proj.head_dim
            self.conv_w, self.conv_b = conv_params(r.conv, channels, rngs, param_dtype)

    def init_state(self, batch: int, max_len: int):
        del max_len  # the state does not grow with context
        hk, hd = self.proj.n_kv_heads, self.proj.head_dim
        dim = sympow_dim(hd, self.p)
        ret = RetentionState(S=jnp.zeros((batch, hk, dim, hd), jnp.float32),
                             z=jnp.zeros((batch, hk, dim), jnp.float32))
        if not self.d_conv:
            return ret
        return ConvRetentionState(*ret, conv=self._conv_zeros(batch))

    def _conv_zeros(self, batch: int):
        return jnp.zeros((batch, self.d_conv - 1, self.conv_w.shape[1]), self.dtype)

    def __call__(self, x, positions, state=None, *, decode: bool = False, segment_ids=None, blend=None):
        """x [batch, time, d_model] -> y [batch, time, d_model] (and the new state if state is given).

        segment_ids [batch, time] (packed rows): each document restarts from a zero state, conv included.
        blend [batch] (training a converted model, train.blend_steps): the output is (1 - blend) x causal softmax
        attention + blend x retention, both of the same q, k, v, before the out-projection."""
        q, k, v = self.proj.project(x)
        if self.d_conv:  # the short conv over the concatenated projections, carrying its own state
            conv_state = self._conv_zeros(x.shape[0]) if state is None else state.conv
            h, new_conv = causal_conv(jnp.concatenate([q, k, v], axis=-1), conv_state, self.conv_w[...],
                                      self.conv_b[...], segment_ids)
            q, k, v = jnp.split(h, [q.shape[-1], q.shape[-1] + k.shape[-1]], axis=-1)
            state = None if state is None else RetentionState(state.S, state.z)
        q, k, v = self.proj.heads(q, k, v, positions)
        log_g = None if self.gate is None else jax.nn.log_sigmoid(self.gate(x).astype(jnp.float32))
        out = power_retention(
            q, k, v, log_g, p=self.p, chunk_size=self.chunk_size, normalize=self.normalize,
            form="recurrent" if decode else self.form, initial_state=state,
            return_state=state is not None, backend=self.backend, segment_ids=segment_ids)
        y, new_state = out if state is not None else (out, None)
        if blend is not None:
            a = attention(q, k, v, causal=True, segment_ids=segment_ids).astype(jnp.float32)
            w = jnp.asarray(blend, jnp.float32).reshape(-1, 1, 1, 1)
            y = ((1 - w) * a + w * y.astype(jnp.float32)).astype(y.dtype)
        y = self.proj.out(y)
        if state is None:
            return y
        return y, (ConvRetentionState(*new_state, conv=new_conv) if self.d_conv else new_state)
