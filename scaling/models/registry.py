"""The one table of mixers the model builds: pattern letter -> (spec, module).

The spec (scaling/mixers/: defaults, validation, accounting) is Flax-free; the module (here in scaling/models)
runs it. Adding a mixer is one ops file, one module, one spec, and a line here (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from scaling.mixers import SPECS, MixerSpec
from scaling.models.attention import Attention
from scaling.models.based import Based
from scaling.models.gated_delta import GatedDeltaNet
from scaling.models.gla import GLA
from scaling.models.mamba import Mamba2
from scaling.models.retention import PowerRetention


@dataclass(frozen=True)
class Mixer:
    spec: MixerSpec
    module: type  # nnx.Module class: Module(model_cfg, rngs); __call__(x, ...) as scaling.models.lm calls it

    @property
    def key(self) -> str:
        return self.spec.key


MIXERS: dict[str, Mixer] = {
    "A": Mixer(SPECS["A"], Attention),
    "R": Mixer(SPECS["R"], PowerRetention),
    "M": Mixer(SPECS["M"], Mamba2),
    "G": Mixer(SPECS["G"], GLA),
    "D": Mixer(SPECS["D"], GatedDeltaNet),
    "B": Mixer(SPECS["B"], Based),
}
if set(MIXERS) != set(SPECS):  # pragma: no cover - a mixer added to one table and not the other
    raise ImportError(f"scaling.models.registry: mixers {sorted(set(SPECS) ^ set(MIXERS))} lack a spec or a module")
