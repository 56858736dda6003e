"""The mixer specs, one module each (Flax- and JAX-free): defaults and validation of the model-config section,
parameters, FLOPs per token and state size. :data:`SPECS` maps a pattern letter to its spec; scaling.config
validates through it, scaling.accounting counts through it, scaling.models.registry pairs each with its module.

Adding a mixer (docs/architecture.md, "Adding a mixer"): an ops file (scaling/ops/), a module
(scaling/models/), a spec here (and its line in :data:`SPECS` and in scaling.models.registry), and their tests.
"""

from __future__ import annotations

from scaling.mixers import attention, based, gated_delta, gla, mamba, retention
from scaling.mixers.base import MixerSpec

SPECS: dict[str, MixerSpec] = {
    s.letter: s for s in (attention.SPEC, retention.SPEC, mamba.SPEC, gla.SPEC, gated_delta.SPEC, based.SPEC)}

__all__ = ["SPECS", "MixerSpec"]
