"""Softmax attention (pattern letter A): GQA with RoPE and an optional sliding window. Ops:
scaling/ops/attention.py; module: scaling/models/attention.py.

State: the KV cache, 2 * T * kv_heads * head_dim per layer, T bounded by the window if there is one.
"""

from __future__ import annotations

from scaling.fields import fail
from scaling.mixers.base import MixerSpec, mean_keys, validate_heads

IMPLS = ("auto", "parallel", "blockwise")


def defaults() -> dict:
    return {
        "n_heads": 4, "n_kv_heads": 4, "window": None, "rope": True, "rope_theta": 10_000.0,
        # the form of the training forward (scaling/ops/attention.py): "auto" (blockwise, never holding the
        # [T, T] scores, from 1,024 tokens; parallel below), "parallel" or "blockwise"
        "impl": "auto",
    }


def validate(m, a, prefix: str) -> None:
    validate_heads(m, a, prefix)
    if a.get("impl", "auto") not in IMPLS:
        fail(f"{prefix}.impl", a.impl, f"must be one of {', '.join(IMPLS)}")
    if a.window is not None and (not isinstance(a.window, int) or isinstance(a.window, bool) or a.window <= 0):
        fail(f"{prefix}.window", a.window, "must be a positive number of tokens, or None for no window")


def dims(m) -> tuple[int, int, int]:
    """(query heads, kv heads, head_dim)."""
    a = m.attention
    return a.n_heads, a.n_kv_heads, m.d_model // a.n_heads


def params(m) -> int:
    hq, hk, hd = dims(m)
    return m.d_model * hd * (2 * hq + 2 * hk)  # q, o: d x hq hd; k, v: d x hk hd


def flops(m, context: int, causal: bool = False) -> dict[str, float]:
    """Per token: q/k/v/o projections; scores QK^T and the weighted sum AV over the keys in view.

    The parallel form computes every key of the context (the causal mask zeroes half, the work stays),
    as the Chinchilla appendix F count does; a window bounds the keys to ``window``. ``causal``: only the keys
    the mask leaves in view (:func:`scaling.mixers.base.mean_keys`).
    """
    hq, hk, hd = dims(m)
    keys = mean_keys(context, m.attention.window, causal)
    return {"weights": 2.0 * m.d_model * hd * (2 * hq + 2 * hk), "state": 2.0 * 2 * keys * hq * hd}


def state(m, context: int) -> dict[str, int]:
    _, hk, hd = dims(m)
    t = min(context, m.attention.window) if m.attention.window else context
    return {m.dtype: 2 * t * hk * hd}


SPEC = MixerSpec("A", "attention", defaults, validate, params, flops, state,
                 summary="softmax attention (GQA, RoPE, optional window); state: the KV cache")
