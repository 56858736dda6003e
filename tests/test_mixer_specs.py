"""The mixer specs (scaling/mixers/): one Flax-free spec per mixer that config validation, the accounting, the
analysis and the model registry all read."""

import subprocess
import sys

import pytest

from scaling import accounting, config
from scaling.analysis.load import FAMILIES
from scaling.mixers import SPECS


def test_validating_a_config_imports_no_flax():
    code = ("import sys; from scaling import config; cfg = config.load(None, ['model.pattern=ARM']); "
            "config.validate(cfg); print('flax' in sys.modules, 'scaling.models' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_one_table_of_mixers():
    assert FAMILIES == {letter: spec.key for letter, spec in SPECS.items()}
    defaults = config.default_model_config()
    for letter, spec in SPECS.items():
        assert spec.letter == letter and dict(defaults[spec.key]) == spec.defaults()
        cfg = config.load(None, [f"model.pattern={letter}"])
        m = cfg.model
        assert accounting.params(cfg)["non_embedding"] > spec.params(m) > 0
        f = spec.flops(m, 256)
        assert f["weights"] > 0 and f["state"] > 0 and sum(spec.state(m, 256).values()) > 0


@pytest.mark.parametrize("letter,override,match", [
    ("A", "model.attention.window=0", "model.attention.window = 0: must be a positive number of tokens"),
    ("R", "model.retention.p=5", "model.retention.p = 5: must be one of 1, 2, 3, 4"),
    ("M", "model.mamba.head_dim=7", "model.mamba.head_dim = 7: must divide expand \\* d_model"),
])
def test_each_spec_validates_its_section_naming_the_field(letter, override, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(None, [f"model.pattern={letter}", override])
