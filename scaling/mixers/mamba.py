"""Mamba-2 (pattern letter M): the SSD mixer with its short conv. Ops: scaling/ops/ssd.py; module:
scaling/models/mamba.py.

State: heads * head_dim * d_state (the SSD state) plus the conv state (d_conv - 1) * conv_dim per layer.
"""

from __future__ import annotations

from scaling.fields import check_int, fail
from scaling.mixers.base import MixerSpec, chunk_pad, mean_keys, recurrent_state


def defaults() -> dict:
    return {
        "d_state": 64, "expand": 2, "head_dim": 32, "n_groups": 1, "d_conv": 4, "chunk_size": 64,
        "dt_min": 1e-3, "dt_max": 1e-1, "a_init_range": (1.0, 16.0),
    }


def validate(m, s, prefix: str) -> None:
    for name in ("d_state", "expand", "head_dim", "n_groups", "d_conv", "chunk_size"):
        check_int(f"{prefix}.{name}", s[name])
    d_inner = s.expand * m.d_model
    if d_inner % s.head_dim:
        fail(f"{prefix}.head_dim", s.head_dim, f"must divide expand * d_model = {d_inner}")
    n_heads = d_inner // s.head_dim
    if n_heads % s.n_groups:
        fail(f"{prefix}.n_groups", s.n_groups, f"must divide the number of heads = {n_heads}")
    if not 0 < s.dt_min <= s.dt_max:
        fail(f"{prefix}.dt_min", s.dt_min, f"must satisfy 0 < dt_min <= dt_max = {s.dt_max}")
    lo, hi = s.a_init_range
    if not 0 < lo <= hi:
        fail(f"{prefix}.a_init_range", tuple(s.a_init_range), "must satisfy 0 < low <= high")


def dims(m) -> tuple[int, int, int]:
    """(d_inner, heads, conv_dim) of the Mamba-2 mixer."""
    s = m.mamba
    d_inner = s.expand * m.d_model
    return d_inner, d_inner // s.head_dim, d_inner + 2 * s.n_groups * s.d_state


def params(m) -> int:
    s = m.mamba
    d_inner, nh, conv_dim = dims(m)
    in_proj = m.d_model * (d_inner + conv_dim + nh)
    conv = (s.d_conv + 1) * conv_dim
    return in_proj + conv + 3 * nh + d_inner + d_inner * m.d_model  # dt_bias, A_log, D; norm; out_proj


def flops(m, context: int, causal: bool = False) -> dict[str, float]:
    """Per token: in/out projections and the depthwise conv (weights); the chunked SSD (state), chunk
    c = min(chunk_size, T): scores C B^T c*N per group, masked scores times dt x c*P per head, chunk state
    and state readout P*N each per head, the inter-chunk recurrence P*N/c per head. ``causal``: the intra-chunk
    terms count (c + 1) / 2 keys a query."""
    s = m.mamba
    d_inner, nh, conv_dim = dims(m)
    c, pad, _ = chunk_pad(context, s.chunk_size)
    weights = 2.0 * m.d_model * (d_inner + conv_dim + nh) + 2.0 * s.d_conv * conv_dim + 2.0 * d_inner * m.d_model
    keys = mean_keys(c, None, causal)
    ssd = 2.0 * (s.n_groups * keys * s.d_state + nh * (keys * s.head_dim + 2 * s.head_dim * s.d_state))
    ssd += nh * s.head_dim * s.d_state / c
    return {"weights": weights, "state": pad * ssd}


def state(m, context: int) -> dict[str, int]:
    del context
    s = m.mamba
    _, nh, conv_dim = dims(m)
    return recurrent_state(m, nh * s.head_dim * s.d_state, (s.d_conv - 1) * conv_dim)


SPEC = MixerSpec("M", "mamba", defaults, validate, params, flops, state,
                 summary="Mamba-2 (SSD with a short conv); state: heads x head_dim x d_state plus the conv")
