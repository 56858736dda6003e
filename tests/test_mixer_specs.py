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


# ----------------------------------------------------------------------------------------------------
# chunk sizes per backend (scaling/mixers/chunks.py)

def test_fastest_chunk_table_names_chunked_sections_and_falls_back_to_the_default():
    from scaling.mixers import chunks

    sections = {spec.key: spec.defaults() for spec in SPECS.values()}
    for table in chunks.FASTEST.values():
        for section, chunk in table.items():
            assert "chunk_size" in sections[section] and chunk in (16, 32, 64, 128, 256)
    for section, d in sections.items():
        if "chunk_size" in d:
            assert d["chunk_size"] == chunks.DEFAULT_CHUNK
            assert chunks.fastest_chunk(section, "tpu") == chunks.DEFAULT_CHUNK  # not measured there
    assert chunks.fastest_chunk("retention", "cpu") == chunks.FASTEST["cpu"]["retention"]


@pytest.mark.parametrize("env,expected", [({"STATESCALE_BACKEND": "tpu"}, "tpu"),
                                          ({"JAX_PLATFORMS": "cuda,cpu"}, "gpu"), ({"JAX_PLATFORMS": "cpu"}, "cpu")])
def test_backend_from_the_environment(monkeypatch, env, expected):
    from scaling.mixers import chunks

    monkeypatch.delenv("STATESCALE_BACKEND", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert chunks.backend() == expected


def test_backend_looks_for_plugins_without_starting_jax(monkeypatch):
    code = ("import sys; from scaling.mixers import chunks; print(chunks.backend(), 'jax' in sys.modules)")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("JAX_PLATFORMS", "STATESCALE_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["cpu", "False"]  # no accelerator plugin is installed on the CPU machines that run this
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object() if name == "jax_cuda12_plugin" else None)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv("STATESCALE_BACKEND", raising=False)
    from scaling.mixers import chunks

    assert chunks.backend() == "gpu"


def test_bad_backend_is_one_clear_error(monkeypatch):
    from scaling.mixers import chunks

    monkeypatch.setenv("STATESCALE_BACKEND", "npu")
    with pytest.raises(config.ConfigError, match="STATESCALE_BACKEND='npu': must be one of cpu, gpu, tpu"):
        chunks.backend()


@pytest.mark.parametrize("preset,section", [("power_retention_small", "retention"), ("mamba2_small", "mamba"),
                                            ("hybrid_small", "mamba"), ("gla_small", "gla"),
                                            ("gated_delta_small", "gated_delta"), ("based_small", "based")])
@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_small_presets_take_the_backends_fastest_chunk(monkeypatch, preset, section, backend):
    from pathlib import Path

    from scaling.mixers import chunks

    monkeypatch.setenv("STATESCALE_BACKEND", backend)
    cfg = config.load(Path(__file__).parents[1] / "configs/models" / f"{preset}.py")
    assert cfg.model[section].chunk_size == chunks.fastest_chunk(section, backend)
