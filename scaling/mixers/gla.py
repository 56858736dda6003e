"""Gated linear attention (pattern letter G; Yang, Wang, Shen, Panda, Kim 2024): a linear attention whose state
decays by a gate per key channel. Ops: scaling/ops/gla.py; module: scaling/models/gla.py.

The layer (as the GLA paper's): q, k, v, o projections (heads of head_dim = d_model / n_heads, no RoPE); the
log gate per key channel logsigmoid(x W_1 W_2 + b) / gate_normalizer through a rank-``gate_rank`` projection;
the output RMS-normalised per head and multiplied by swish(x W_r) before the out-projection.
Optionally a short causal conv over q, k and v (``conv`` taps, as power retention's; 0 = none, the paper's layer).
State: n_heads * head_dim * head_dim float32 per layer (S [dk, dv] per head), constant in context, plus the conv's
last (conv - 1) inputs of q, k and v.
"""

from __future__ import annotations

from scaling.fields import check_int, fail
from scaling.mixers.base import MixerSpec, check_conv, check_n_heads, chunk_pad, mean_keys, recurrent_state


def defaults() -> dict:
    return {"n_heads": 4, "chunk_size": 64, "gate_rank": 16, "gate_normalizer": 16.0,
            "conv": 0}  # width of a short causal conv over q/k/v (0 = none, the GLA paper's layer)


def validate(m, g, prefix: str) -> None:
    check_n_heads(m, g.n_heads, f"{prefix}.n_heads")
    check_int(f"{prefix}.chunk_size", g.chunk_size)
    check_int(f"{prefix}.gate_rank", g.gate_rank)
    check_conv(f"{prefix}.conv", g.conv)
    if not isinstance(g.gate_normalizer, int | float) or isinstance(g.gate_normalizer, bool) or g.gate_normalizer < 1:
        fail(f"{prefix}.gate_normalizer", g.gate_normalizer, "must be a number >= 1 (log gates are divided by it)")


def dims(m) -> tuple[int, int]:
    """(heads, head_dim): q, k and v heads alike."""
    return m.gla.n_heads, m.d_model // m.gla.n_heads


def conv_channels(m) -> int:
    """Channels of the optional short conv over q/k/v: 3 * n_heads * head_dim (0 without it)."""
    h, hd = dims(m)
    return 3 * h * hd if m.gla.conv else 0


def params(m) -> int:
    h, hd = dims(m)
    r = m.gla.gate_rank
    # q, k, v, o; the low-rank gate (d x r, r x d with bias); the output gate; the per-head norm's weight; the conv
    return 4 * m.d_model * h * hd + m.d_model * r + r * h * hd + h * hd + m.d_model * h * hd + hd \
        + (m.gla.conv + 1) * conv_channels(m)


def flops(m, context: int, causal: bool = False) -> dict[str, float]:
    """Per token: projections and both gates (weights); the chunked form (state), chunk c = min(chunk_size, T):
    intra-chunk scores and values c*dk + c*dv, what the chunk adds to the state and the state read out
    dk*dv each, the state's decay dk*dv / c, per head. ``causal``: the intra-chunk block counts (c + 1) / 2."""
    h, hd = dims(m)
    r = m.gla.gate_rank
    weights = 2.0 * (4 * m.d_model * h * hd + m.d_model * r + r * h * hd + m.d_model * h * hd) \
        + 2.0 * m.gla.conv * conv_channels(m)
    c, pad, _ = chunk_pad(context, m.gla.chunk_size)
    keys = mean_keys(c, None, causal)
    state = h * (2.0 * keys * (hd + hd) + 2 * 2.0 * hd * hd + hd * hd / c)
    return {"weights": weights, "state": pad * state}


def state(m, context: int) -> dict[str, int]:
    del context
    h, hd = dims(m)
    return recurrent_state(m, h * hd * hd, max(m.gla.conv - 1, 0) * conv_channels(m))


SPEC = MixerSpec("G", "gla", defaults, validate, params, flops, state,
                 summary="gated linear attention: a gate per key channel; state heads x head_dim^2")
