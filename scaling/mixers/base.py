"""The shape of a mixer spec, and the pieces the specs share.

A :class:`MixerSpec` is everything statescale knows about a sequence mixer without Flax or JAX: its pattern letter,
the model-config section that configures it (its defaults and its validation, errors naming the field), and its
accounting (parameters, forward FLOPs per token at a context, decode state by dtype). The module that runs it
lives in scaling/models and is paired with the spec by scaling.models.registry.

Accounting conventions (the one definition; docs/architecture.md): FLOPs are 2 per multiply-add, split into
"weights" (matmuls with parameters) and "state" (the mixer's work on its sequence state); ``causal`` counts only
the unmasked half of a causally masked block (:func:`mean_keys`). State is elements per sequence, by the dtype it
is kept in: recurrent states float32, caches and conv states the compute dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from scaling.fields import check_int, fail


@dataclass(frozen=True)
class MixerSpec:
    letter: str  # its letter in model.pattern
    key: str  # the section of the model config that configures it (and its family name in the analysis)
    defaults: Callable[[], dict]  # the section's defaults
    validate: Callable  # (model_cfg, section_cfg, field_prefix) -> None; raises ConfigError naming the field
    params: Callable  # model_cfg -> parameters of one layer's mixer
    flops: Callable  # (model_cfg, context, causal=False) -> {"weights": FLOPs/token, "state": FLOPs/token}
    state: Callable  # (model_cfg, context) -> {dtype name: elements per sequence}
    summary: str = ""  # one line for docs and error messages


def mean_keys(context: int, window: int | None, causal: bool) -> float:
    """Keys a query's scores cover, per query: the whole block (``context``, or ``window``) when not ``causal``;
    else the mean over positions i = 1 .. T of min(i, window), the keys the mask leaves in view."""
    w = min(context, window) if window else context
    if not causal:
        return float(w)
    return (w * (w + 1) / 2 + (context - w) * w) / context


def recurrent_state(m, recurrent: int, in_dtype: int) -> dict[str, int]:
    """{dtype: elements} of a mixer's state: its float32 recurrent state plus what it keeps in the compute dtype
    (a short conv's last inputs, a window's KV cache)."""
    if not in_dtype or m.dtype == "float32":
        return {"float32": recurrent + in_dtype}
    return {"float32": recurrent, m.dtype: in_dtype}


def chunk_pad(context: int, chunk_size: int) -> tuple[int, float, int]:
    """(chunk c = min(chunk_size, T), padded tokens per real token, number of chunks) of a chunked form."""
    c = min(chunk_size, context)
    n = -(-context // c)
    return c, n * c / context, n


def check_n_heads(m, n_heads, field: str) -> None:
    """A head count that divides d_model (heads of d_model / n_heads)."""
    check_int(field, n_heads)
    if m.d_model % n_heads:
        fail(field, n_heads, f"must divide model.d_model = {m.d_model}")


def validate_heads(m, section, prefix: str, rope: bool | None = None) -> None:
    """n_heads divides d_model, n_kv_heads divides n_heads, and RoPE (``section.rope`` unless given) gets an even
    head_dim."""
    check_n_heads(m, section.n_heads, f"{prefix}.n_heads")
    check_int(f"{prefix}.n_kv_heads", section.n_kv_heads)
    if section.n_heads % section.n_kv_heads:
        fail(f"{prefix}.n_kv_heads", section.n_kv_heads, f"must divide {prefix}.n_heads = {section.n_heads}")
    if (section.get("rope") if rope is None else rope) and (m.d_model // section.n_heads) % 2:
        fail(f"{prefix}.n_heads", section.n_heads, "RoPE needs an even head_dim = d_model / n_heads")


def check_conv(field: str, value) -> None:
    """A short causal conv's width: 0 (none) or more taps."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        fail(field, value, "must be an integer >= 0: 0 for no conv, else its width in tokens (e.g. 4)")
