"""Gated DeltaNet (pattern letter D; Yang, Kautz, Hatamizadeh 2024): the delta rule with a scalar gate per head,
a one-step online regression of v on k (the linear case of Titans' memory). Ops: scaling/ops/gated_delta.py;
module: scaling/models/gated_delta.py.

The layer (as the Gated DeltaNet paper's): q, k, v projections through a short causal conv and SiLU, q and k
L2-normalised per head; beta = sigmoid(x W_beta) per head; the log gate -exp(A_log) softplus(x W_a + dt_bias)
per head (Mamba-2's parametrisation); the output RMS-normalised per head and multiplied by SiLU(x W_g) before the
out-projection. State: n_heads * head_dim^2 float32 plus the conv's (conv - 1) * 3 * n_heads * head_dim.
"""

from __future__ import annotations

from scaling.fields import check_int, fail
from scaling.mixers.base import MixerSpec, check_n_heads, chunk_pad, mean_keys, recurrent_state


def defaults() -> dict:
    return {"n_heads": 4, "chunk_size": 64, "conv": 4, "dt_min": 1e-3, "dt_max": 1e-1, "a_init_range": (1.0, 16.0)}


def validate(m, s, prefix: str) -> None:
    check_n_heads(m, s.n_heads, f"{prefix}.n_heads")
    check_int(f"{prefix}.chunk_size", s.chunk_size)
    check_int(f"{prefix}.conv", s.conv)
    if not 0 < s.dt_min <= s.dt_max:
        fail(f"{prefix}.dt_min", s.dt_min, f"must satisfy 0 < dt_min <= dt_max = {s.dt_max}")
    lo, hi = s.a_init_range
    if not 0 < lo <= hi:
        fail(f"{prefix}.a_init_range", tuple(s.a_init_range), "must satisfy 0 < low <= high")


def dims(m) -> tuple[int, int]:
    """(heads, head_dim): dk = dv = head_dim."""
    return m.gated_delta.n_heads, m.d_model // m.gated_delta.n_heads


def _conv_channels(m) -> int:
    h, hd = dims(m)
    return 3 * h * hd


def params(m) -> int:
    h, hd = dims(m)
    inner = h * hd
    # q, k, v, o; beta and the gate's projections (d x h each) with A_log and dt_bias; the output gate; the norm's
    # weight; the conv's weights and bias
    return 4 * m.d_model * inner + 2 * m.d_model * h + 2 * h + m.d_model * inner + hd \
        + (m.gated_delta.conv + 1) * _conv_channels(m)


def flops(m, context: int, causal: bool = False) -> dict[str, float]:
    """Per token: projections, beta, gate, output gate and the conv (weights); the chunked WY form (state), chunk
    c = min(chunk_size, T), per head (multiply-adds, scaling/ops/gated_delta.py): K K^T and Q K^T c*dk each, the
    block inverse of I + L n (n^2 - 1) / (3c) (n: c rounded up to a power of two) and its product with
    both right-hand sides c*(dk + dv), the intra-chunk output c*dv, three dk*dv products (K_end^T U~, W S, Q S), the
    chunk's K_end^T W dk^2 and its product with S dk^2 dv / c. ``causal``: the c x c terms count (c + 1) / 2."""
    h, hd = dims(m)
    inner = h * hd
    weights = 2.0 * (4 * m.d_model * inner + 2 * m.d_model * h + m.d_model * inner) \
        + 2.0 * m.gated_delta.conv * _conv_channels(m)
    c, pad, _ = chunk_pad(context, m.gated_delta.chunk_size)
    keys = mean_keys(c, None, causal)
    n = 1 << max(c - 1, 0).bit_length()  # the block inverse pads the chunk to a power of two
    mac = keys * (2 * hd + hd) + n * (n * n - 1) / (3 * c) + c * (hd + hd) + 3 * hd * hd + hd * hd + hd * hd * hd / c
    return {"weights": weights, "state": pad * 2.0 * h * mac}


def state(m, context: int) -> dict[str, int]:
    del context
    h, hd = dims(m)
    return recurrent_state(m, h * hd * hd, (m.gated_delta.conv - 1) * _conv_channels(m))


SPEC = MixerSpec("D", "gated_delta", defaults, validate, params, flops, state,
                 summary="Gated DeltaNet: the gated delta rule with a short conv; state heads x head_dim^2 + conv")
