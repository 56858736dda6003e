"""Flax NNX models of the zoo. ``build(cfg.model)`` makes a LanguageModel from a config."""

from scaling.models.lm import LanguageModel, build, count_params
from scaling.models.registry import MIXERS

__all__ = ["LanguageModel", "MIXERS", "build", "count_params"]
