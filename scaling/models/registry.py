"""The one table of mixers: pattern letter -> config key, module, validation.

The accounting formulas (parameters, state size, FLOPs) live in scaling.accounting in a table keyed by
the same letters; a test holds the two tables to the same keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from scaling import config as _config
from scaling.models.attention import Attention
from scaling.models.mamba import Mamba2
from scaling.models.retention import PowerRetention


@dataclass(frozen=True)
class MixerSpec:
    letter: str
    key: str  # the section of the model config that configures it
    module: type
    validate: Callable  # (model_cfg, section_cfg, field_prefix) -> None, raises ConfigError


MIXERS: dict[str, MixerSpec] = {
    "A": MixerSpec("A", "attention", Attention, _config.validate_attention),
    "R": MixerSpec("R", "retention", PowerRetention, _config.validate_retention),
    "M": MixerSpec("M", "mamba", Mamba2, _config.validate_mamba),
}
