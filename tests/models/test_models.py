"""Model zoo: presets build and run; decode equals the forward pass; accounting matches the modules."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import accounting, config
from scaling.mixers import SPECS
from scaling.models import MIXERS, build, count_params
from tests.helpers import rel_err

PRESETS = sorted(pathlib.Path(__file__).parents[2].joinpath("configs/models").glob("*.py"))
TINY = [p for p in PRESETS if p.stem.endswith("_tiny")]

# Small, fast variants of each mixer (chunk 8 so a 21-token prompt spans ragged chunks).
SHRINK = ["model.d_model=64", "model.n_layers=2", "model.retention.chunk_size=8", "model.mamba.chunk_size=8",
          "model.mamba.head_dim=16", "model.mamba.d_state=8", "model.gla.chunk_size=8",
          "model.gated_delta.chunk_size=8"]
VARIANTS = {
    "attention": ["model.pattern='A'", "model.attention.n_heads=4", "model.attention.n_kv_heads=2"],
    "attention_window": ["model.pattern='A'", "model.attention.window=5"],
    "retention_p2": ["model.pattern='R'", "model.retention.n_heads=8", "model.retention.n_kv_heads=4"],
    "retention_p3_rmsnorm": ["model.pattern='R'", "model.retention.p=3", "model.retention.normalize='rmsnorm'",
                             "model.retention.n_heads=8"],
    "retention_conv": ["model.pattern='R'", "model.retention.conv=4", "model.retention.n_heads=8",
                       "model.retention.n_kv_heads=4"],
    "mamba": ["model.pattern='M'", "model.mamba.n_groups=2"],
    "hybrid": ["model.pattern='MRA'", "model.n_layers=3", "model.retention.n_heads=8"],
    "gla": ["model.pattern='G'", "model.gla.gate_rank=4", "model.gla.conv=4"],
    "based": ["model.pattern='B'", "model.based.feature_dim=4", "model.based.window=5", "model.based.chunk_size=8"],
    "gated_delta": ["model.pattern='D'", "model.gated_delta.n_heads=2"],
    "untied": ["model.pattern='RA'", "model.tie_embeddings=False", "model.retention.n_heads=8"],
}


def _tokens(b, t, vocab, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, vocab)


# the model's forward jitted: one compile, where an eager call compiles each of its ops (gated_delta_tiny: 3.7 -> 1.0 s)
_forward = nnx.jit(lambda model, tokens: model(tokens))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_validate_and_count(path):
    cfg = config.load(path)
    assert cfg.model.name == path.stem
    n = accounting.params(cfg)
    assert n["total"] == n["embedding"] + n["non_embedding"] > 0
    assert accounting.state_size(cfg, 1024) > 0


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_presets_forward(path):
    cfg = config.load(path)
    model = build(cfg.model)
    logits = _forward(model, _tokens(2, 40, cfg.model.vocab_size))
    assert logits.shape == (2, 40, cfg.model.vocab_size) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    assert count_params(model) == accounting.params(cfg)["total"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_decode_matches_forward(name):
    """prefill(prompt) then step token by token gives the forward pass's logits (fp32, 1e-4)."""
    cfg = config.load(None, SHRINK + VARIANTS[name])
    model = build(cfg.model, seed=1)
    b, t, split = 2, 29, 21
    tokens = _tokens(b, t, cfg.model.vocab_size, seed=2)
    full = nnx.jit(lambda mdl, tok: mdl(tok))(model, tokens)
    state = model.init_state(b, max_len=32)
    logits, state = nnx.jit(lambda mdl, tok, st: mdl.prefill(tok, st))(model, tokens[:, :split], state)
    steps = [logits]
    step = nnx.jit(lambda mdl, tok, st: mdl.step(tok, st))
    for i in range(split, t):
        lg, state = step(model, tokens[:, i], state)
        steps.append(lg[:, None])
    assert int(state["pos"]) == t
    assert rel_err(jnp.concatenate(steps, axis=1), full) < 1e-4
    # the accounting's state size is what the decode state holds (attention: the cache at max_len)
    elems = sum(x.size for x in jax.tree.leaves(state["layers"]) if x.ndim) // b
    assert elems == accounting.state_size(cfg, 32)


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_presets_decode_token_by_token(path):
    """Each tiny preset decodes token by token (step only) identically to its forward pass."""
    cfg = config.load(path)
    model = build(cfg.model)
    tokens = _tokens(1, 12, cfg.model.vocab_size, seed=3)
    full = _forward(model, tokens)
    step = nnx.jit(lambda mdl, tok, st: mdl.step(tok, st))
    state = model.init_state(1, max_len=12)
    outs = []
    for i in range(tokens.shape[1]):
        lg, state = step(model, tokens[:, i], state)
        outs.append(lg)
    assert rel_err(jnp.stack(outs, axis=1), full) < 1e-4


def test_state_is_a_savable_pytree(tmp_path):
    cfg = config.load(None, SHRINK + VARIANTS["hybrid"])
    model = build(cfg.model)
    tokens = _tokens(1, 20, cfg.model.vocab_size)
    prefill = nnx.jit(lambda mdl, tok, st: mdl.prefill(tok, st))
    _, state = prefill(model, tokens[:, :12], model.init_state(1, 20))
    leaves, treedef = jax.tree.flatten(state)
    np.savez(tmp_path / "state.npz", *[np.asarray(x) for x in leaves])
    with np.load(tmp_path / "state.npz") as f:
        restored = jax.tree.unflatten(treedef, [jnp.asarray(f[f"arr_{i}"]) for i in range(len(leaves))])
    a, _ = prefill(model, tokens[:, 12:], state)
    b, _ = prefill(model, tokens[:, 12:], restored)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pattern_repeats_to_n_layers():
    cfg = config.load(None, ["model.pattern='MMMA'", "model.n_layers=8"] + SHRINK[2:])
    assert config.layer_pattern(cfg.model) == "MMMAMMMA"
    model = build(cfg.model)
    assert [blk.letter for blk in model.blocks] == list("MMMAMMMA")


def test_scan_layers_gives_the_same_model():
    """model.scan_layers: the same parameters (stacked over the pattern's repeats; a cut pattern's last layer
    unstacked), the same logits, and decoding that matches; parameter paths differ (["stack"][j])."""
    over = SHRINK + ["model.pattern='RA'", "model.n_layers=5", "model.retention.n_heads=8"]
    plain = build(config.load(None, over).model)
    scanned = build(config.load(None, over + ["model.scan_layers=True"]).model)
    assert [b.letter for b in scanned.layers()] == list("RARAR") and scanned.repeats == 2
    assert count_params(scanned) == count_params(plain)
    for a, b in zip(plain.blocks, scanned.layers(), strict=True):
        for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b)), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    tokens = _tokens(2, 21, plain.embed.num_embeddings)
    assert rel_err(_forward(scanned, tokens), _forward(plain, tokens)) < 1e-5
    prefill = nnx.jit(lambda mdl, tok, st: mdl.prefill(tok, st))
    la, _ = prefill(plain, tokens, plain.init_state(2, 32))
    lb, sb = prefill(scanned, tokens, scanned.init_state(2, 32))
    assert rel_err(lb, la) < 1e-5 and len(sb["layers"]) == 5


def test_accounting_covers_every_mixer():
    assert set(SPECS) == set(MIXERS) and all(MIXERS[k].spec is SPECS[k] for k in SPECS)


def test_state_size_formulas():
    m = config.load(None, ["model.d_model=256", "model.n_layers=1"]).model
    m.pattern = "A"
    m.attention.n_heads, m.attention.n_kv_heads = 4, 2
    assert accounting.state_size(m, 1000) == 2 * 1000 * 2 * 64
    m.attention.window = 128
    assert accounting.state_size(m, 1000) == 2 * 128 * 2 * 64
    m.pattern = "R"
    m.retention.n_heads, m.retention.n_kv_heads, m.retention.p = 4, 4, 2
    d = 64 * 65 // 2
    assert accounting.state_size(m, 1) == accounting.state_size(m, 10**6) == 4 * (d * 64 + d)
    # at fixed parameters, more heads of smaller head_dim shrink the state
    m.retention.gate = False  # (the gate's width is per kv head)
    n0 = accounting.params(m)["total"]
    m.retention.n_heads = m.retention.n_kv_heads = 8
    assert accounting.params(m)["total"] == n0 and accounting.state_size(m, 1) < 4 * (d * 64 + d)
    m.pattern = "M"
    m.mamba.expand, m.mamba.head_dim, m.mamba.d_state, m.mamba.n_groups, m.mamba.d_conv = 2, 64, 16, 1, 4
    assert accounting.state_size(m, 1) == 8 * 64 * 16 + 3 * (512 + 2 * 16)
    assert accounting.state_bytes(m, 1) == 4 * accounting.state_size(m, 1)


@pytest.mark.parametrize("override, field", [
    ("model.pattern='AXA'", "model.pattern"),
    ("model.attention.n_heads=3", "model.attention.n_heads"),
    ("model.retention.p=7", "model.retention.p"),
    ("model.attention.window=0", "model.attention.window"),
    ("model.attention.window=-4", "model.attention.window"),
    ("model.attention.n_kv_heads=3", "model.attention.n_kv_heads"),
    ("model.retention.p=3", "model.retention.normalize"),
    ("model.retention.conv=-1", "model.retention.conv"),
    ("model.mamba.head_dim=48", "model.mamba.head_dim"),
    ("model.mamba.n_groups=3", "model.mamba.n_groups"),
    ("model.dtype='float16'", "model.dtype"),
    ("model.kernel='cuda'", "model.kernel"),
    ("model.d_model=0", "model.d_model"),
    ("model.bogus=1", "model.bogus"),
])
def test_bad_config_names_the_field(override, field):
    pattern = {"retention": "R", "mamba": "M"}.get(field.split(".")[1], "A")
    with pytest.raises(config.ConfigError, match=field.replace(".", r"\.")) as e:
        config.load(None, [f"model.pattern='{pattern}'", override] if "pattern" not in override else [override])
    assert "\n" not in str(e.value)


def test_p_error_lists_accepted_values():
    with pytest.raises(config.ConfigError, match=r"model\.retention\.p = 7: must be one of 1, 2, 3, 4"):
        config.load(None, ["model.pattern='R'", "model.retention.p=7"])
