"""Based (pattern letter B; Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff"): a Taylor-feature linear attention beside a small sliding-window softmax attention.
Ops: scaling/ops/based.py and scaling/ops/attention.py; module: scaling/models/based.py.

The layer: the linear branch projects q and k to ``feature_dim`` per head (the paper's 16) and takes
phi(q.k) = 1 + s + s^2/2; the window branch is causal softmax attention over the last ``window`` tokens with its own
q and k (RoPE) and the linear branch's v; the two outputs are summed before the out-projection.
State per layer: the linear branch's heads x D x (head_dim + 1) float32, D = 1 + f + f (f + 1) / 2, plus the
window's KV cache 2 x min(T, window) x heads x head_dim (compute dtype), and the optional short conv's last
(conv - 1) inputs (``conv`` taps over the linear branch's q, k and the shared v, as power retention's; 0 = none).
"""

from __future__ import annotations

from scaling.fields import check_int, fail
from scaling.mixers.base import MixerSpec, check_conv, check_n_heads, chunk_pad, mean_keys, recurrent_state
from scaling.mixers.retention import sympow_dim


def defaults() -> dict:
    return {"n_heads": 4, "feature_dim": 16, "chunk_size": 64, "window": 64, "rope_theta": 10_000.0,
            "conv": 0}  # width of a short causal conv over the linear branch's q, k and the shared v (0 = none)


def validate(m, s, prefix: str) -> None:
    check_n_heads(m, s.n_heads, f"{prefix}.n_heads")
    if (m.d_model // s.n_heads) % 2:
        fail(f"{prefix}.n_heads", s.n_heads, "the window branch's RoPE needs an even head_dim = d_model / n_heads")
    check_int(f"{prefix}.feature_dim", s.feature_dim)
    check_int(f"{prefix}.chunk_size", s.chunk_size)
    check_int(f"{prefix}.window", s.window)
    check_conv(f"{prefix}.conv", s.conv)


def window_keys(context: int, window: int) -> int:
    """Keys each query's scores cover in the blocked window form (scaling/ops/window_attention.py):
    w = min(window, T) when T fits in one block, else 2w (its own block and the one before)."""
    w = min(window, context)
    return w if context <= window else 2 * w


def feature_dim(f: int) -> int:
    """D = 1 + f + f (f + 1) / 2: the Taylor features of a feature_dim-f key."""
    return 1 + f + sympow_dim(f, 2)


def dims(m) -> tuple[int, int, int]:
    """(heads, head_dim, feature_dim)."""
    s = m.based
    return s.n_heads, m.d_model // s.n_heads, s.feature_dim


def conv_channels(m) -> int:
    """Channels of the optional short conv over the linear branch's q, k and the shared v (0 without it)."""
    h, hd, f = dims(m)
    return h * (2 * f + hd) if m.based.conv else 0


def _projections(m) -> int:
    """Weights of the projections: q, k of the linear branch (f a head); q, k of the window (head_dim a head);
    the shared v; o."""
    h, hd, f = dims(m)
    return 2 * m.d_model * h * f + 2 * m.d_model * h * hd + m.d_model * h * hd + h * hd * m.d_model


def params(m) -> int:
    return _projections(m) + (m.based.conv + 1) * conv_channels(m)  # and the conv's taps and bias


def linear_flops(m, context: int, causal: bool = False) -> float:
    """Per token, the chunked linear branch alone (scaling.ops.based, as ``scaling bench ops`` times it)."""
    h, hd, f = dims(m)
    c, pad, _ = chunk_pad(context, m.based.chunk_size)
    keys = mean_keys(c, None, causal)
    D = feature_dim(f)
    return pad * 2.0 * h * (keys * (f + hd + 1) + 2 * D * (hd + 1) + 2 * D)


def flops(m, context: int, causal: bool = False) -> dict[str, float]:
    """Per token: the projections (weights); the chunked linear branch, chunk c = min(chunk_size, T), per head
    c (f + dv + 1) for the intra block, 2 D (dv + 1) for the state read-out and update and ~2 D to form the
    features (multiply-adds, scaling/ops/based.py); the window's scores and values over the keys its blocked form
    computes (``causal``: the keys in view, :func:`scaling.mixers.base.mean_keys`; the intra block likewise
    halved)."""
    h, hd, _ = dims(m)
    weights = 2.0 * _projections(m) + 2.0 * m.based.conv * conv_channels(m)
    linear = linear_flops(m, context, causal)
    # the blocked window form computes window_keys a query, padded to whole blocks; ``causal``: the keys in view
    if causal:
        window = 2.0 * 2 * mean_keys(context, m.based.window, True) * h * hd
    else:
        _, block_pad, _ = chunk_pad(context, m.based.window)
        window = block_pad * 2.0 * 2 * window_keys(context, m.based.window) * h * hd
    return {"weights": weights, "state": linear + window}


def state(m, context: int) -> dict[str, int]:
    h, hd, f = dims(m)
    window = 2 * min(context, m.based.window) * h * hd
    return recurrent_state(m, h * feature_dim(f) * (hd + 1), window + max(m.based.conv - 1, 0) * conv_channels(m))


SPEC = MixerSpec("B", "based", defaults, validate, params, flops, state,
                 summary="Based: Taylor linear attention plus a sliding-window attention; state both")
