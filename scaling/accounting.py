"""Accounting: parameter counts, FLOPs per token and state sizes, per mixer, from the config alone.

One table keyed like the model registry (pattern letters). ``state_size(cfg, context)`` is the only place
state size is computed; sweeps, plots and fits read it from here.

State size is counted per sequence, in elements, summed over layers:
- attention (A): the KV cache, 2 * T * kv_heads * head_dim, with T bounded by the window if there is one;
- power retention (R): kv_heads * (D * head_dim + D), D = C(head_dim + p - 1, p): the state S [D, head_dim]
  and the normaliser z [D] of each kv head (the gate is per kv head, so query heads of a group share it);
- Mamba-2 (M): heads * head_dim * d_state (the SSD state) plus the conv state (d_conv - 1) * conv_dim.
  Power retention with its optional short conv (retention.conv = d_conv > 0) adds that conv's state too:
  (d_conv - 1) * (n_heads + 2 n_kv_heads) * head_dim.

FLOPs are the forward pass per token at a given context T, 2 FLOPs per multiply-add, over every matmul plus
each mixer's context-dependent term, split into "weights" (matmuls with parameters: projections, MLP, LM
head) and "state" (the mixer's work on its sequence state: attention scores, retention's intra-chunk
attention and feature-map state, SSD's chunk terms). Training counts 3x forward. Tests hold the total
within 10% of XLA's cost analysis of the compiled forward pass for every mixer and context
(``scaling flops CONFIG --xla`` prints that ratio: scaling/accounting_xla.py).

Two conventions for the causally masked blocks (``attention_flops``, :data:`ATTENTION_FLOPS`):
- "full" (the default): the whole T x T block of causal attention (and the c x c block of a chunk) is counted,
  as the parallel form computes it and as Chinchilla's appendix F counts it;
- "causal": only the unmasked half, the mean keys in view of a query, (T + 1) / 2 (with a window w,
  the mean of min(i, w) over positions i), as "Scaling Context Requires Rethinking Attention" (Table 2) counts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scaling import config as _config
from scaling.ops.power_retention import sympow_dim

_BYTES = {"float32": 4, "bfloat16": 2}
ATTENTION_FLOPS = ("full", "causal")  # conventions for causal blocks: see the module docstring
CONVENTION_NOTE = {
    "full": "causal attention counted as the whole T x T block (Chinchilla's convention; --attention-flops causal "
            "counts the unmasked half)",
    "causal": "causal attention counted as the unmasked half of the T x T block, mean keys in view (T + 1) / 2 "
              "(the convention of Gelada et al. 2025, Table 2)",
}


def check_convention(attention_flops: str) -> str:
    if attention_flops not in ATTENTION_FLOPS:
        raise ValueError(f"attention_flops = {attention_flops!r}: must be one of {', '.join(ATTENTION_FLOPS)}")
    return attention_flops


def mean_keys(context: int, window: int | None, causal: bool) -> float:
    """Keys a query's scores cover, per query: the whole block (``context``, or ``window``) when not ``causal``;
    else the mean over positions i = 1 .. T of min(i, window), the keys the mask leaves in view."""
    w = min(context, window) if window else context
    if not causal:
        return float(w)
    return (w * (w + 1) / 2 + (context - w) * w) / context


def _cfg_model(cfg):
    """Accept a run config (with .model) or a model config."""
    return cfg.model if "model" in cfg else cfg


# --- attention ----------------------------------------------------------------------------------------

def _attention_dims(m):
    a = m.attention
    return a.n_heads, a.n_kv_heads, m.d_model // a.n_heads


def attention_params(m) -> int:
    hq, hk, hd = _attention_dims(m)
    return m.d_model * hd * (2 * hq + 2 * hk)  # q, o: d x hq hd; k, v: d x hk hd


def attention_flops(m, context: int, causal: bool = False) -> dict[str, float]:
    """Per token: q/k/v/o projections; scores QK^T and the weighted sum AV over the keys in view.

    The parallel form computes every key of the context (the causal mask zeroes half, the work stays),
    as the Chinchilla appendix F count does; a window bounds the keys to ``window``. ``causal``: only the keys
    the mask leaves in view (:func:`mean_keys`).
    """
    hq, hk, hd = _attention_dims(m)
    keys = mean_keys(context, m.attention.window, causal)
    return {"weights": 2.0 * m.d_model * hd * (2 * hq + 2 * hk), "state": 2.0 * 2 * keys * hq * hd}


def attention_state(m, context: int) -> dict[str, int]:
    _, hk, hd = _attention_dims(m)
    t = min(context, m.attention.window) if m.attention.window else context
    return {m.dtype: 2 * t * hk * hd}


def _recurrent_state(m, recurrent: int, conv: int) -> dict[str, int]:
    """{dtype: elements} of a recurrent mixer: its float32 state plus a conv state kept in the compute dtype."""
    if not conv or m.dtype == "float32":
        return {"float32": recurrent + conv}
    return {"float32": recurrent, m.dtype: conv}


# --- power retention ------------------------------------------------------------------------------------

def _retention_dims(m):
    r = m.retention
    return r.n_heads, r.n_kv_heads, m.d_model // r.n_heads


def _retention_conv_channels(m) -> int:
    """Channels of the optional short conv over q/k/v: (n_heads + 2 n_kv_heads) * head_dim (0 without it)."""
    hq, hk, hd = _retention_dims(m)
    return (hq + 2 * hk) * hd if m.retention.conv else 0


def retention_params(m) -> int:
    hq, hk, hd = _retention_dims(m)
    gate = (m.d_model + 1) * hk if m.retention.gate else 0
    conv = (m.retention.conv + 1) * _retention_conv_channels(m)  # weights and bias
    return m.d_model * hd * (2 * hq + 2 * hk) + gate + conv


def retention_flops(m, context: int, causal: bool = False) -> dict[str, float]:
    """Per token of the chunked form, chunk c = min(chunk_size, T) (a ragged tail is padded to c):

    - intra-chunk attention: scores c*d and values c*e per query head (the full c x c block is computed);
    - feature map: p multiplies per feature, for phi(q) per query head and phi(k) per kv head;
    - state query phi(q)^T [S, z]: D*(e + 1) per query head (none when T fits in one chunk: a fresh call
      has no state to query); state update phi(k) v^T and sum phi(k): D*(e + 1) per kv head; decaying S
      once per chunk: D*e/c per kv head.
    D = C(head_dim + p - 1, p) makes the state term tunable independently of the parameters.
    ``retention.form = "parallel"`` (the attention form): scores and values over the keys, as attention's.
    ``causal``: the intra-chunk block counts (c + 1) / 2 keys a query, its unmasked half.
    """
    hq, hk, hd = _retention_dims(m)
    r = m.retention
    gate = 2.0 * m.d_model * hk if r.gate else 0.0
    conv = 2.0 * r.conv * _retention_conv_channels(m)  # the depthwise conv, counted with the weights as Mamba's
    weights = 2.0 * m.d_model * hd * (2 * hq + 2 * hk) + gate + conv
    if r.get("form", "chunked") == "parallel":  # the attention form: scores and values over the keys, no features
        return {"weights": weights, "state": 2.0 * 2 * mean_keys(context, None, causal) * hq * hd}
    dim = sympow_dim(hd, r.p)
    c = min(r.chunk_size, context)
    pad = (-(-context // c) * c) / context  # padded tokens per real token
    n_chunks = -(-context // c)
    keys = mean_keys(c, None, causal)
    intra = 2.0 * keys * hd * hq + 2.0 * keys * hd * hq
    # a call that fits in one chunk (and starts from no state) never queries the state
    queried = hq if n_chunks > 1 else 0
    features = r.p * dim * (queried + hk)
    state = 2.0 * dim * (hd + 1) * (queried + hk) + dim * hd * hk / c
    return {"weights": weights, "state": pad * (intra + features + state)}


def retention_state(m, context: int) -> dict[str, int]:
    del context  # constant in context: that is the point
    _, hk, hd = _retention_dims(m)
    dim = sympow_dim(hd, m.retention.p)
    return _recurrent_state(m, hk * (dim * hd + dim), max(m.retention.conv - 1, 0) * _retention_conv_channels(m))


# --- Mamba-2 -----------------------------------------------------------------------------------------------

def mamba_dims(m):
    """(d_inner, heads, conv_dim) of the Mamba-2 mixer."""
    s = m.mamba
    d_inner = s.expand * m.d_model
    return d_inner, d_inner // s.head_dim, d_inner + 2 * s.n_groups * s.d_state


def mamba_params(m) -> int:
    s = m.mamba
    d_inner, nh, conv_dim = mamba_dims(m)
    in_proj = m.d_model * (d_inner + conv_dim + nh)
    conv = (s.d_conv + 1) * conv_dim
    return in_proj + conv + 3 * nh + d_inner + d_inner * m.d_model  # dt_bias, A_log, D; norm; out_proj


def mamba_flops(m, context: int, causal: bool = False) -> dict[str, float]:
    """Per token: in/out projections and the depthwise conv (weights); the chunked SSD (state), chunk
    c = min(chunk_size, T): scores C B^T c*N per group, masked scores times dt x c*P per head, chunk state
    and state readout P*N each per head, the inter-chunk recurrence P*N/c per head. ``causal``: the intra-chunk
    terms count (c + 1) / 2 keys a query."""
    s = m.mamba
    d_inner, nh, conv_dim = mamba_dims(m)
    c = min(s.chunk_size, context)
    pad = (-(-context // c) * c) / context
    weights = 2.0 * m.d_model * (d_inner + conv_dim + nh) + 2.0 * s.d_conv * conv_dim + 2.0 * d_inner * m.d_model
    keys = mean_keys(c, None, causal)
    ssd = 2.0 * (s.n_groups * keys * s.d_state + nh * (keys * s.head_dim + 2 * s.head_dim * s.d_state))
    ssd += nh * s.head_dim * s.d_state / c
    return {"weights": weights, "state": pad * ssd}


def mamba_state(m, context: int) -> dict[str, int]:
    del context
    s = m.mamba
    _, nh, conv_dim = mamba_dims(m)
    return _recurrent_state(m, nh * s.head_dim * s.d_state, (s.d_conv - 1) * conv_dim)


@dataclass(frozen=True)
class MixerAccounting:
    params: Callable  # model_cfg -> int
    state: Callable  # (model_cfg, context) -> {dtype name: elements}
    flops: Callable  # (model_cfg, context, causal=False) -> {"weights": FLOPs/token, "state": FLOPs/token}


ACCOUNTING: dict[str, MixerAccounting] = {
    "A": MixerAccounting(attention_params, attention_state, attention_flops),
    "R": MixerAccounting(retention_params, retention_state, retention_flops),
    "M": MixerAccounting(mamba_params, mamba_state, mamba_flops),
}


def _ffn_params(m) -> int:
    """The MLP of a block and its norm: SwiGLU's three matrices (none with model.mlp = False)."""
    return m.d_model + 3 * m.d_model * _config.d_ff(m) if m.get("mlp", True) else 0


def _ffn_flops(m) -> float:
    return 2.0 * 3 * m.d_model * _config.d_ff(m) if m.get("mlp", True) else 0.0


def params(cfg) -> dict[str, int]:
    """Parameter counts: {"total", "embedding", "non_embedding"}.

    Embedding counts the token table and, when untied, the output head.
    """
    m = _cfg_model(cfg)
    blocks = sum(_ffn_params(m) + m.d_model + ACCOUNTING[letter].params(m) for letter in _config.layer_pattern(m))
    embedding = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
    non_embedding = blocks + m.d_model * (2 if m.get("embed_norm") else 1)  # + final norm (+ embedding norm)
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def flops_breakdown(cfg, context: int, attention_flops: str = "full") -> dict[str, float]:
    """Forward FLOPs per token at ``context``: {"weights", "state", "head", "total"}.

    weights: every matmul with parameters in the blocks (mixer projections, SwiGLU MLP);
    state: the mixers' context-dependent work; head: the LM head (logits), 2 * d_model * vocab.
    Embedding lookups are gathers (no FLOPs); norms and activations are elementwise and not counted.
    ``attention_flops``: "full" or "causal", the count of causally masked blocks (module docstring).
    """
    causal = check_convention(attention_flops) == "causal"
    m = _cfg_model(cfg)
    context = int(context)
    if context < 1:
        raise ValueError(f"context = {context}: must be >= 1")
    weights = state = 0.0
    for letter in _config.layer_pattern(m):
        f = ACCOUNTING[letter].flops(m, context, causal)
        weights += f["weights"] + _ffn_flops(m)
        state += f["state"]
    head = 2.0 * m.d_model * m.vocab_size
    return {"weights": weights, "state": state, "head": head, "total": weights + state + head}


def blend_flops_per_token(cfg, context: int) -> float:
    """Training FLOPs per token that a blended step (``train.blend_steps``) adds: every power retention layer also
    runs softmax attention's scores and weighted sum over its q, k, v (3 x forward, the full convention)."""
    m = _cfg_model(cfg)
    n = _config.layer_pattern(m).count("R")
    r = m.retention
    return 3.0 * n * 2.0 * 2 * int(context) * r.n_heads * (m.d_model // r.n_heads)


def flops_per_token(cfg, context: int, attention_flops: str = "full") -> float:
    """Forward FLOPs per token at ``context`` (training costs 3x this)."""
    return flops_breakdown(cfg, context, attention_flops)["total"]


def train_flops_per_token(cfg, context: int, attention_flops: str = "full") -> float:
    """Training FLOPs per token: forward + backward = 3 x forward."""
    return 3.0 * flops_per_token(cfg, context, attention_flops)


def _state_by_dtype(m, context: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for letter in _config.layer_pattern(m):
        for dtype, n in ACCOUNTING[letter].state(m, context).items():
            out[dtype] = out.get(dtype, 0) + n
    return out


def state_size(cfg, context: int) -> int:
    """Decode state per sequence at ``context`` tokens, in elements, summed over layers."""
    return int(sum(_state_by_dtype(_cfg_model(cfg), int(context)).values()))


def state_bytes(cfg, context: int) -> int:
    """The same state in bytes: recurrent states are float32, caches use the compute dtype."""
    by = _state_by_dtype(_cfg_model(cfg), int(context))
    return int(sum(n * _BYTES[dtype] for dtype, n in by.items()))


def state_size_per_layer(cfg, context: int) -> np.ndarray:
    m = _cfg_model(cfg)
    return np.array([sum(ACCOUNTING[x].state(m, context).values()) for x in _config.layer_pattern(m)])
from scaling.memory import HEADROOM, TrainMemory, train_memory  # noqa: E402, F401  (memory per device: scaling/memory.py)
