"""Accounting: parameter counts, FLOPs per token and state sizes, per mixer, from the config alone.

Each mixer's formulas live in its spec (scaling/mixers/, keyed by pattern letter); this module sums them over the
layers with the MLP, norms and LM head. ``state_size(cfg, context)`` is the only place state size is computed;
sweeps, plots and fits read it from here.

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

import numpy as np

from scaling import config as _config
from scaling.mixers import SPECS
from scaling.mixers.base import mean_keys  # noqa: F401 (re-exported: the keys in view of a causal query)

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


def _cfg_model(cfg):
    """Accept a run config (with .model) or a model config."""
    return cfg.model if "model" in cfg else cfg


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
    blocks = sum(_ffn_params(m) + m.d_model + SPECS[letter].params(m) for letter in _config.layer_pattern(m))
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
        f = SPECS[letter].flops(m, context, causal)
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
        for dtype, n in SPECS[letter].state(m, context).items():
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
    return np.array([sum(SPECS[x].state(m, context).values()) for x in _config.layer_pattern(m)])
from scaling.memory import HEADROOM, TrainMemory, train_memory  # noqa: E402, F401  (memory per device: scaling/memory.py)
