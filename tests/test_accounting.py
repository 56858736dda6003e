"""FLOP accounting against XLA's compiled cost, the Chinchilla appendix F count, and 6N."""

import pathlib

import pytest

from scaling import accounting, config
from scaling.accounting_xla import xla_flops_per_token  # unrolls the chunk scans while compiling

ROOT = pathlib.Path(__file__).parents[1]
TINY = sorted((ROOT / "configs/models").glob("*_tiny.py"))

VARIANTS = {  # small models that exercise each mixer's options
    "attention_gqa": ["model.pattern='A'", "model.attention.n_heads=8", "model.attention.n_kv_heads=2"],
    "retention_p1": ["model.pattern='R'", "model.retention.p=1", "model.retention.normalize='rmsnorm'"],
    "retention_p3_gqa": ["model.pattern='R'", "model.retention.p=3", "model.retention.normalize='rmsnorm'",
                         "model.retention.n_heads=8", "model.retention.n_kv_heads=4"],
    "retention_p4_nogate": ["model.pattern='R'", "model.retention.p=4", "model.retention.n_heads=16",
                            "model.retention.n_kv_heads=16", "model.retention.gate=False"],
    "retention_conv_gqa": ["model.pattern='R'", "model.retention.conv=4", "model.retention.n_heads=8",
                           "model.retention.n_kv_heads=2"],
    "mamba_groups": ["model.pattern='M'", "model.mamba.n_groups=2", "model.mamba.d_state=32",
                     "model.mamba.head_dim=16"],
    "hybrid_untied": ["model.pattern='MRA'", "model.n_layers=3", "model.tie_embeddings=False"],
    "gla_heads2": ["model.pattern='G'", "model.gla.n_heads=2", "model.gla.chunk_size=32", "model.gla.conv=4"],
    "based_f8": ["model.pattern='B'", "model.based.feature_dim=8", "model.based.window=16", "model.based.conv=4",
                 "model.based.chunk_size=32"],
    "gated_delta_conv2": ["model.pattern='D'", "model.gated_delta.n_heads=2", "model.gated_delta.conv=2",
                          "model.gated_delta.chunk_size=32"],
}


@pytest.mark.parametrize("context", [64, 256, 1024])
@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_presets_within_10pct_of_xla(path, context):
    # the accounting counts the math, as the parallel form computes it (the blockwise form, "auto" from 1,024
    # tokens, skips the fully masked key blocks in a loop XLA's cost analysis does not unroll)
    cfg = config.load(path, ["model.attention.impl=parallel"])
    ratio = accounting.flops_per_token(cfg, context) / xla_flops_per_token(cfg, context)
    assert 0.9 < ratio < 1.1, ratio


@pytest.mark.parametrize("context", [40, 300])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_mixer_options_within_10pct_of_xla(name, context):
    # the parallel form, as above: XLA's cost analysis counts a loop's body once, so the blockwise program
    # ("auto" on CPU from 64 tokens) reads low
    cfg = config.load(None, ["model.d_model=64", "model.n_layers=2", "model.retention.chunk_size=32",
                             "model.mamba.chunk_size=32", "model.attention.impl=parallel"] + VARIANTS[name])
    ratio = accounting.flops_per_token(cfg, context) / xla_flops_per_token(cfg, context)
    assert 0.9 < ratio < 1.1, ratio


def chinchilla_appendix_f(d_model, n_layers, n_heads, key_size, ffw_size, seq_len) -> float:
    """Forward FLOPs per token of Hoffmann et al. 2022, appendix F, embeddings and logits excluded."""
    attn = (2 * 3 * seq_len * d_model * key_size * n_heads  # k, q, v projections
            + 2 * seq_len * seq_len * key_size * n_heads  # logits
            + 3 * n_heads * seq_len * seq_len  # softmax
            + 2 * seq_len * seq_len * key_size * n_heads  # reduction over values
            + 2 * seq_len * key_size * n_heads * d_model)  # output projection
    dense = 2 * seq_len * (d_model * ffw_size + d_model * ffw_size)
    return n_layers * (attn + dense) / seq_len


@pytest.mark.parametrize("context", [128, 2048, 8192])
@pytest.mark.parametrize("preset", ["transformer_tiny", "transformer_small"])
def test_transformer_matches_chinchilla_appendix_f(preset, context):
    m = config.load(ROOT / f"configs/models/{preset}.py").model
    n_heads, d_ff = m.attention.n_heads, config.d_ff(m)
    # Chinchilla's dense block has two d x ffw matrices, SwiGLU three d x d_ff: match the weight count.
    ref = chinchilla_appendix_f(m.d_model, m.n_layers, n_heads, m.d_model // n_heads, 1.5 * d_ff, context)
    f = accounting.flops_breakdown(m, context)
    assert f["weights"] + f["state"] == pytest.approx(ref, rel=0.1)


@pytest.mark.parametrize("preset", ["transformer_tiny", "transformer_small"])
def test_transformer_training_flops_approach_6n_at_short_context(preset):
    """(Recurrent mixers keep a per-token state cost at any context, so 6N is a transformer limit.)"""
    cfg = config.load(ROOT / f"configs/models/{preset}.py")
    f = accounting.flops_breakdown(cfg, 8)
    n = accounting.params(cfg)["non_embedding"]
    assert 3 * (f["weights"] + f["state"]) == pytest.approx(6 * n, rel=0.1)
    assert accounting.train_flops_per_token(cfg, 8) == 3 * f["total"]


def test_state_flops_grow_with_context_only_for_attention():
    a = config.load(ROOT / "configs/models/transformer_tiny.py")
    r = config.load(ROOT / "configs/models/power_retention_tiny.py")
    sa = [accounting.flops_breakdown(a, t)["state"] for t in (1024, 4096)]
    sr = [accounting.flops_breakdown(r, t)["state"] for t in (1024, 4096)]
    assert sa[1] == pytest.approx(4 * sa[0]) and sr[1] == pytest.approx(sr[0])
    with pytest.raises(ValueError, match="context"):
        accounting.flops_per_token(a, 0)


def test_flops_cli_table(capsys):
    from scaling.cli import main

    assert main(["flops", str(ROOT / "configs/models/power_retention_tiny.py"), "--context", "1024", "4096"]) == 0
    out = capsys.readouterr().out
    assert "power_retention_tiny" in out and "4,096" in out and "w/s ratio" in out
    assert f"{accounting.state_size(config.load(ROOT / 'configs/models/power_retention_tiny.py'), 1):.3g}" in out
