"""Sequence mixers as pure functions of arrays, each with parallel / chunked / recurrent forms and a
``*_reference`` twin. Layout: [batch, time, heads, head_dim]; gates [batch, time, heads] float32 (log).
Every op takes ``segment_ids=`` [batch, time] for packed rows: documents are independent (scaling.ops.segments)."""

from scaling.ops.attention import KVCache, attention, attention_reference, init_kv_cache
from scaling.ops.based import BasedState, based, based_reference, based_state_shape, based_state_size
from scaling.ops.gated_delta import (
    gated_delta_rule,
    gated_delta_rule_reference,
    gated_delta_state_shape,
    gated_delta_state_size,
)
from scaling.ops.gla import gla, gla_reference, gla_state_shape, gla_state_size
from scaling.ops.power_retention import (
    RetentionState,
    power_retention,
    power_retention_reference,
    sympow_dim,
    sympow_features,
)
from scaling.ops.ssd import ssd, ssd_reference

__all__ = [
    "BasedState",
    "KVCache",
    "RetentionState",
    "attention",
    "attention_reference",
    "based",
    "based_reference",
    "based_state_shape",
    "based_state_size",
    "gated_delta_rule",
    "gated_delta_rule_reference",
    "gated_delta_state_shape",
    "gated_delta_state_size",
    "gla",
    "gla_reference",
    "gla_state_shape",
    "gla_state_size",
    "init_kv_cache",
    "power_retention",
    "power_retention_reference",
    "ssd",
    "ssd_reference",
    "sympow_dim",
    "sympow_features",
]
