"""Metamorphosis: attention -> power retention with the same weights (scaling/convert.py, train.init_from)."""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import config
from scaling.checkpoint import flat_tree
from scaling.convert import ConversionError, check_convertible, convert_config, convert_params
from scaling.convert_run import convert_run
from scaling.models import build
from scaling.ops.power_retention import power_retention
from scaling.train import load_run, train
from tests.helpers import rel_err

SRC = ["model.pattern='A'", "model.d_model=32", "model.n_layers=2", "model.attention.n_heads=4",
       "model.attention.n_kv_heads=2", "model.retention.chunk_size=8"]
TRAIN = ["train.batch_size=4", "train.context=32", "train.log_every=1", "train.eval_every=2",
         "data.eval_tokens=256", "train.warmup_steps=1", "train.checkpoint_every=2"]


def _pair(seed=3, gate_logit=None):
    src_cfg = config.load(None, SRC)
    src = build(src_cfg.model, seed=seed)
    dst_cfg = convert_config(src_cfg, "R")
    params = convert_params(src_cfg, nnx.state(src, nnx.Param), dst_cfg)
    dst = nnx.merge(nnx.graphdef(build(dst_cfg.model)), params)
    if gate_logit is not None:
        for blk in dst.blocks:
            blk.mixer.gate.bias[...] = jnp.full_like(blk.mixer.gate.bias[...], gate_logit)
    return src_cfg, src, dst_cfg, dst


def power_attention_reference(q, k, v, eps=1e-6):
    """Causal (scale q.k)^2-weighted attention normalised by the row sum, GQA by repeating kv heads: the
    definition, with the eps the retention op adds to its denominator."""
    b, t, hq, d = q.shape
    rep = hq // k.shape[2]
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    s = jnp.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
    w = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s**2, 0.0)
    return jnp.einsum("bhij,bjhe->bihe", w, v) / (jnp.sum(w, axis=-1).transpose(0, 2, 1)[..., None] + eps)


def test_converted_retention_with_gates_at_one_is_power_attention():
    """p = 2 retention with the gate at exactly 1 computes power attention on the transformer's own q, k, v."""
    _, src, dst_cfg, dst = _pair(gate_logit=200.0)  # log_sigmoid(200) = -exp(-200) = 0 in float32
    assert dst_cfg.model.pattern == "R" and dst_cfg.model.retention.p == 2
    x = jax.random.normal(jax.random.key(0), (2, 21, 32))
    pos = jnp.arange(21)
    for s_blk, d_blk in zip(src.blocks, dst.blocks, strict=True):
        q, k, v = s_blk.mixer.proj.qkv(x, pos)  # the source attention's projections and RoPE
        want = s_blk.mixer.proj.out(power_attention_reference(q, k, v))
        got = d_blk.mixer(x, pos)  # the converted layer, chunked form
        assert rel_err(got, want) < 1e-5
        parallel = s_blk.mixer.proj.out(power_retention(q, k, v, None, p=2, form="parallel"))
        assert rel_err(got, parallel) < 1e-5

    # the whole converted model = the source model with each softmax replaced by power attention
    tokens = jax.random.randint(jax.random.key(1), (2, 21), 0, 256)
    h = src.embed(tokens)
    for blk in src.blocks:
        q, k, v = blk.mixer.proj.qkv(blk.norm1(h), pos)
        h = h + blk.mixer.proj.out(power_attention_reference(q, k, v))
        h = h + blk.mlp(blk.norm2(h))
    assert rel_err(dst(tokens), src.logits(h)) < 1e-5


def test_conversion_copies_every_weight_and_starts_the_gate_near_one():
    src_cfg, src, dst_cfg, dst = _pair()
    s, d = flat_tree(nnx.state(src, nnx.Param)), flat_tree(nnx.state(dst, nnx.Param))
    gates = {k for k in d if "['gate']" in k and "['mixer']" in k}
    assert len(gates) == 4 and set(d) - gates == set(s)
    for key in s:
        np.testing.assert_array_equal(np.asarray(d[key]), np.asarray(s[key]))
    for key in gates:
        want = 0.0 if key.endswith("['kernel'].value") else math.log(0.999 / 0.001)
        np.testing.assert_allclose(np.asarray(d[key]), want, rtol=1e-6)
    r, a = dst_cfg.model.retention, src_cfg.model.attention
    assert (r.n_heads, r.n_kv_heads, r.rope, r.rope_theta) == (a.n_heads, a.n_kv_heads, a.rope, a.rope_theta)


def test_conversion_with_a_short_conv_starts_it_as_the_identity():
    """retention.conv = 4 on the target: the conv starts as the identity, so the converted model computes exactly
    what the conv-free conversion does (the conv's state still counts in the decode state)."""
    src_cfg, src, plain_cfg, plain = _pair()
    conv_cfg = convert_config(src_cfg, "R", ["model.retention.conv=4"])
    conv = nnx.merge(nnx.graphdef(build(conv_cfg.model)),
                     convert_params(src_cfg, nnx.state(src, nnx.Param), conv_cfg))
    for blk in conv.blocks:
        w = np.asarray(blk.mixer.conv_w[...])
        assert w.shape == (4, (4 + 2 * 2) * 8) and (w[-1] == 1).all() and (w[:-1] == 0).all()
        assert (np.asarray(blk.mixer.conv_b[...]) == 0).all()
    tokens = jax.random.randint(jax.random.key(4), (2, 19), 0, 256)
    assert rel_err(conv(tokens), plain(tokens)) < 1e-6


def test_conversion_errors_name_the_problem():
    src_cfg = config.load(None, SRC)
    with pytest.raises(ConversionError, match="--to .M.: must be one of R, G, B"):
        convert_config(src_cfg, "M")
    with pytest.raises(ConversionError, match="model.retention.n_kv_heads = 4: must equal the source's "
                                              "model.attention.n_kv_heads = 2"):
        convert_config(src_cfg, "R", ["model.retention.n_kv_heads=4"])
    with pytest.raises(ConversionError, match="no attention layer"):
        convert_config(config.load(None, SRC + ["model.pattern='M'"]), "R")
    hybrid = config.load(None, SRC + ["model.pattern='AR'", "model.retention.n_heads=8"])
    with pytest.raises(ConversionError, match="one retention section cannot serve both"):
        convert_config(hybrid, "R")
    wider = convert_config(src_cfg, "R", ["model.d_ff=64"])
    msg = (r"parameter \['blocks'\]\[0\]\['mlp'\]\['down'\]\['kernel'\].value: the source's is float32\[96, 32\], "
           r"the new model needs float32\[64, 32\]")
    with pytest.raises(ConversionError, match=msg):
        check_convertible(src_cfg, wider)
    mamba = config.load(None, SRC + ["model.pattern='M'"])
    with pytest.raises(ConversionError, match="layer 0 is 'A' in the source and 'M' here"):
        check_convertible(src_cfg, mamba)


@pytest.mark.slow
def test_convert_run_then_train_continues(tmp_path):
    src_cfg = config.load(None, SRC + TRAIN + ["train.steps=4"])
    train(src_cfg, tmp_path / "src", progress=False)
    cfg, step = convert_run(tmp_path / "src", tmp_path / "dst", "R", ["train.steps=2"])
    assert step == 4 and cfg.train.init_from == str((tmp_path / "src").resolve())
    meta = json.loads((tmp_path / "dst/converted.json").read_text())
    assert meta["source_step"] == 4 and meta["pattern"] == "R"
    # the step-0 checkpoint holds the converted weights
    _, model0, step0 = load_run(tmp_path / "dst")
    _, src_model, _ = load_run(tmp_path / "src")
    assert step0 == 0
    np.testing.assert_array_equal(np.asarray(model0.blocks[1].mixer.proj.q.kernel[...]),
                                  np.asarray(src_model.blocks[1].mixer.proj.q.kernel[...]))
    res = train(config.load_run_config(tmp_path / "dst"), tmp_path / "dst", progress=False)
    assert res.status == "done" and res.step == 2
    rows = [json.loads(r) for r in (tmp_path / "dst/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2]  # the loss right after the conversion is recorded

    # train.init_from without convert_run converts at the start of training: the same step-0 loss
    direct = config.load(None, SRC + TRAIN + ["model.pattern='R'", "model.retention.n_kv_heads=2", "train.steps=2",
                                              f"train.init_from='{tmp_path / 'src'}'"])
    train(direct, tmp_path / "direct", progress=False)
    rows2 = [json.loads(r) for r in (tmp_path / "direct/metrics.jsonl").read_text().splitlines()]
    assert rows2[0]["step"] == 0 and rows2[0]["val_loss"] == pytest.approx(evals[0]["val_loss"], rel=1e-6)

    with pytest.raises(ConversionError, match="not an empty directory"):
        convert_run(tmp_path / "src", tmp_path / "dst", "R")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        convert_run(tmp_path / "nothing", tmp_path / "new", "R")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/config.json").write_text((tmp_path / "src/config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no checkpoint"):
        convert_run(tmp_path / "empty", tmp_path / "new2", "R")
    bad = config.load(None, SRC + TRAIN + ["model.pattern='R'", "train.init_from='/nonexistent/run'"])
    with pytest.raises(FileNotFoundError, match="train.init_from = '/nonexistent/run'"):
        train(bad, tmp_path / "bad", progress=False)


MHA = [f for f in SRC if "n_kv_heads" not in f] + ["model.attention.n_kv_heads=4", "model.based.window=8",
                                                    "model.based.chunk_size=8", "model.gla.chunk_size=8"]


def _convert_to(to, seed=5):
    src_cfg = config.load(None, MHA + ["train.seed=11"])
    src = build(src_cfg.model, seed=seed)
    dst_cfg = convert_config(src_cfg, to)
    params = convert_params(src_cfg, nnx.state(src, nnx.Param), dst_cfg)
    return src_cfg, src, dst_cfg, nnx.merge(nnx.graphdef(build(dst_cfg.model)), params)


@pytest.mark.parametrize("to,renamed", [("G", {}), ("B", {f"['{p}']": f"['proj']['{p}']" for p in "qkvo"})])
def test_gla_and_based_keep_every_attention_weight_and_initialise_their_own(to, renamed):
    """Every source parameter lands unchanged (Based's window branch takes q/k/v/o under its own names); the
    target's own parameters are exactly those of its model initialised from train.seed."""
    src_cfg, src, dst_cfg, dst = _convert_to(to)
    assert dst_cfg.model.pattern == to and dst_cfg.model[("gla" if to == "G" else "based")].n_heads == 4
    s, d = flat_tree(nnx.state(src, nnx.Param)), flat_tree(nnx.state(dst, nnx.Param))
    init = flat_tree(nnx.state(build(dst_cfg.model, seed=11), nnx.Param))
    taken = set()
    for key, value in d.items():
        src_key = key
        for new, old in renamed.items():
            src_key = src_key.replace(f"['mixer']{new}", f"['mixer']{old}")
        if src_key in s:
            np.testing.assert_array_equal(np.asarray(value), np.asarray(s[src_key]))
            taken.add(src_key)
        else:
            assert "['mixer']" in key, key
            np.testing.assert_array_equal(np.asarray(value), np.asarray(init[key]))
    assert taken == set(s)  # nothing dropped
    own = {re.search(r"\['mixer'\]\['(\w+)'\]", k).group(1) for k in d
           if "['mixer']" in k and k not in s and not any(f"['mixer']{n}" in k for n in renamed)}
    assert own == ({"gate_down", "gate_up", "out_gate", "norm_w"} if to == "G" else {"q_f", "k_f"})


def test_converted_based_is_windowed_attention_plus_its_taylor_branch():
    """A converted Based layer = the source attention restricted to based.window (RoPE kept) plus the
    out-projection of its new Taylor branch."""
    from scaling.ops.based import based

    src_cfg, src, dst_cfg, dst = _convert_to("B")
    win_cfg = config.load(None, MHA + ["model.attention.window=8"])
    windowed = nnx.merge(nnx.graphdef(build(win_cfg.model)), nnx.state(src, nnx.Param))
    x = jax.random.normal(jax.random.key(2), (2, 29, 32))
    pos = jnp.arange(29)
    for w_blk, d_blk in zip(windowed.blocks, dst.blocks, strict=True):
        mix = d_blk.mixer
        qf, kf = (p(x).reshape(2, 29, 4, mix.f) for p in (mix.q_f, mix.k_f))
        lin = based(qf, kf, mix.v(x).reshape(2, 29, 4, 8), form="parallel")
        got = mix(x, pos) - mix.o(lin.reshape(2, 29, 32))
        assert rel_err(got, w_blk.mixer(x, pos)) < 1e-5


def test_converted_gla_computes_on_the_source_projections_without_rope():
    src_cfg, src, _, dst = _convert_to("G")
    x = jax.random.normal(jax.random.key(3), (1, 13, 32))
    for s_blk, d_blk in zip(src.blocks, dst.blocks, strict=True):
        q, k, v = d_blk.mixer.proj.qkv(x, jnp.arange(13))
        for got, want in zip((q, k, v), s_blk.mixer.proj.project(x), strict=True):
            np.testing.assert_array_equal(np.asarray(got.reshape(1, 13, 32)), np.asarray(want))
    assert np.isfinite(np.asarray(dst(jnp.zeros((1, 13), jnp.int32)))).all()


def test_gla_and_based_conversion_errors_name_the_field():
    gqa = config.load(None, SRC)  # n_kv_heads = 2 < n_heads = 4
    with pytest.raises(ConversionError, match=r"model.attention.n_kv_heads = 2: must equal "
                                              r"model.attention.n_heads = 4 to convert to G \(GLA has one k"):
        convert_config(gqa, "G")
    with pytest.raises(ConversionError, match="to convert to B"):
        convert_config(gqa, "B")
    no_rope = config.load(None, MHA + ["model.attention.rope=False"])
    with pytest.raises(ConversionError, match=r"model.attention.rope = False: must equal True to convert to B"):
        convert_config(no_rope, "B")
    ok = config.load(None, MHA)
    with pytest.raises(ConversionError, match="model.based.n_heads = 2: must equal the source's"):
        convert_config(ok, "B", ["model.based.n_heads=2"])
    with pytest.raises(ConversionError, match="--to 'M': must be one of R, G, B"):
        convert_config(ok, "M")
