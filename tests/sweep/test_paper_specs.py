"""The full-scale paper specs (experiments/papers/) held to each paper's stated setup, point by point: shape
(width, layers, heads), batch (tokens per update), context, tokens or steps, schedule and vocabulary. Each number
cites the paper's section, as the spec files do; docs/papers/*.md ends with the table of where a spec differs.

[PA] Gelada, Buckman, Zhang, Bach, "Scaling Context Requires Rethinking Attention" (arXiv 2507.04239): Table 4,
     Appendix D. [SP] Buckman, Gelada, Zhang, "Symmetric Power Transformers" (Manifest AI 2024), "Experiments".
[CC] Buckman, Gelada, "Compute-Optimal Context Size" (Manifest AI 2024). [MB] Gu, Dao, "Mamba" (arXiv 2312.00752),
     App. E.2.1 and Table 12; [M2] Dao, Gu, "Transformers are SSMs" (arXiv 2405.21060), section 9.2.
[BR] Manifest AI, Brumby-14B-Base (October 2025): retrained from Qwen3-14B-Base, 3000 steps of retraining.
"""

import numpy as np
import pytest

from scaling import accounting
from scaling.steps import lr_floor, make_optimizer
from scaling.sweep import expand, load_spec
from tests.sweep.tiny import ROOT

PAPERS = ROOT / "experiments/papers"


def _plans(study):
    return {p.variant: p for p in expand(load_spec(PAPERS / f"{study}.py", scale="full"), check_data=False)}


def _heads(m):
    section = m.retention if m.pattern == "R" else m.attention
    return section.n_heads, m.d_model // section.n_heads


def _lrs(cfg, total):
    _, schedule = make_optimizer(cfg.train, total)
    return np.array([float(schedule(i)) for i in (0, total // 2, total - 1)])


def test_power_attention_is_rwkv7_large_at_7_86m_tokens_an_update():
    plans = _plans("power_attention")
    assert set(plans) == {"attention", "window", "power"}
    for p in plans.values():
        m, t = p.cfg.model, p.cfg.train
        assert (m.d_model, m.n_layers, *_heads(m)) == (1280, 36, 20, 64)  # [PA] App. D: RWKV-7 large
        assert m.vocab_size == 50257 and m.tie_embeddings  # GPT-2 vocabulary
        assert p.batch_size * p.context == 7680 * 1024 == 1920 * 4096  # [PA] App. D: ~7.86M tokens per update
        assert (t.lr, lr_floor(t), t.schedule, t.b2) == (3e-4, 1e-5, "cosine", 0.999)
    assert (plans["attention"].context, plans["window"].context, plans["power"].context) == (1024, 4096, 4096)
    assert plans["window"].cfg.model.attention.window == 1024 and plans["power"].cfg.model.retention.p == 2
    # [PA] Table 4: equal state size (KV cache at 1024, the window's, p = 2's state) within 3%
    states = [p.state_size for p in plans.values()]
    assert max(states) / min(states) - 1 < 0.035
    assert plans["attention"].state_size == 36 * 2 * 1024 * 20 * 64
    flops = [p.flops for p in plans.values()]
    assert max(flops) / min(flops) - 1 < 0.01  # FLOP-matched


def test_sympow_is_the_articles_setup():
    plans = _plans("sympow")
    assert set(plans) == {"attention", "sympow-p2", "sympow-p4"}
    for label, p in plans.items():
        m, t = p.cfg.model, p.cfg.train
        assert (m.d_model, m.n_layers, *_heads(m), m.vocab_size) == (768, 12, 12, 64, 50257)
        assert m.embed_norm  # [SP] "an extra layer norm after the embeddings"
        assert p.context == 4096 and p.batch_size * p.context == 524_288  # [SP] context 4096, 524,288 a batch
        assert p.steps == 100_000  # [SP] results at 100K steps
        assert (t.lr, t.schedule, t.warmup_steps, t.weight_decay) == (6e-4, "constant", 0, 0.0)  # Adam, no schedule
        assert np.allclose(_lrs(p.cfg, p.steps), 6e-4)
        if label != "attention":
            assert m.retention.form == "parallel"  # the attention form the article trained with
    assert (plans["sympow-p2"].cfg.model.retention.p, plans["sympow-p4"].cfg.model.retention.p) == (2, 4)
    # p = 4 in the attention form costs attention's FLOPs; the chunked form would cost 75x
    p4 = plans["sympow-p4"].cfg
    attention_fwd = accounting.flops_per_token(plans["attention"].cfg, 4096)
    assert accounting.flops_per_token(p4, 4096) == pytest.approx(attention_fwd, rel=1e-3)
    p4.model.retention.form = "chunked"
    assert accounting.flops_per_token(p4, 4096) / attention_fwd == pytest.approx(75, rel=0.02)


def test_context_size_covers_128_to_64k_and_its_budget_arithmetic():
    plans = list(expand(load_spec(PAPERS / "context_size.py", scale="full"), check_data=False))
    sizes = {"124M": (12, 768), "355M": (24, 1024), "774M": (36, 1280), "1.6B": (48, 1600)}  # GPT-2 S/M/L/XL
    assert {p.variant for p in plans} == set(sizes) and len(plans) == 4 * 10 * 2
    assert sorted({p.context for p in plans}) == [2**k for k in range(7, 17)]  # [CC] 128 .. 64K
    assert {p.budget for p in plans} == {1e19, 1e20}
    for p in plans:
        m = p.cfg.model
        assert (m.n_layers, m.d_model) == sizes[p.variant] and _heads(m)[1] == 64 and m.vocab_size == 50257
        assert p.batch_size * p.context == 2**19
        assert p.steps > p.cfg.train.warmup_steps  # every run gets past its warm-up
    # the spec's arithmetic: 1e20 at context 2048 is ~22 tokens per parameter at 774M, ~5.7 at 1.6B
    for label, lo, hi in (("774M", 20, 24), ("1.6B", 5.5, 5.9)):
        cfg = next(p.cfg for p in plans if p.variant == label)
        n = accounting.params(cfg)["total"]
        assert lo < 1e20 / accounting.train_flops_per_token(cfg, 2048) / n < hi


def test_mamba_scaling_rows_are_the_papers():
    plans = list(expand(load_spec(PAPERS / "mamba_scaling.py", scale="full"), check_data=False))
    # [MB] Table 12: layers, d_model, heads, head_dim, tokens; peak lr 5x GPT-3's (App. E.2.1)
    table = {"125M": (12, 768, 12, 64, 2.5e9, 3e-3), "350M": (24, 1024, 16, 64, 7e9, 1.5e-3),
             "760M": (24, 1536, 16, 96, 15e9, 1.25e-3), "1.3B": (24, 2048, 32, 64, 26e9, 1e-3)}
    assert {p.variant for p in plans} == {f"{f}-{s}" for f in ("transformer", "mamba2", "mamba2mlp") for s in table}
    assert {p.context for p in plans} == {2048, 8192}
    for p in plans:
        family, size = p.variant.split("-")
        layers, d, heads, head_dim, tokens, lr = table[size]
        m, t = p.cfg.model, p.cfg.train
        assert m.vocab_size == 50257  # [MB] App. E.2.1: GPT-2 tokenizer for the scaling-law runs
        assert p.batch_size * p.context == 2**19 and abs(p.tokens / tokens - 1) < 0.01
        assert (t.lr, lr_floor(t), t.schedule) == pytest.approx((lr, 1e-5, "cosine"))  # to 1e-5 absolute
        assert m.d_model == d
        if family == "transformer":
            assert (m.pattern, m.n_layers, *_heads(m), m.mlp) == ("A", layers, heads, head_dim, True)
        elif family == "mamba2":  # [M2] 9.2: no MLP, twice the layers
            assert (m.pattern, m.n_layers, m.mlp, m.mamba.d_state, m.mamba.head_dim) == ("M", 2 * layers, False,
                                                                                         128, 64)
        else:  # the labelled mixer + MLP variant, at the Transformer++'s parameters
            assert m.pattern == "M" and m.mlp
        if family != "transformer":
            ref = next(q.params for q in plans if q.variant == f"transformer-{size}")
            assert abs(p.params / ref - 1) < 0.05
    final = _lrs(next(p.cfg for p in plans if p.variant == "transformer-125M"), 4769)[-1]
    assert final == pytest.approx(1e-5, rel=0.05)  # 125M ends at 1e-5, not lr * ratio


def test_metamorphosis_full_scale_setup():
    plans = _plans("metamorphosis")
    assert set(plans) == {"transformer", "converted", "blended", "scratch"}
    for p in plans.values():
        m = p.cfg.model
        assert (m.d_model, m.n_layers, m.vocab_size) == (2048, 24, 50257)
        for section in (m.attention, m.retention):
            assert (section.n_heads, section.n_kv_heads) == (16, 8)  # 16 heads of 128, GQA with 8 kv heads
        assert p.context == 4096 and p.batch_size * p.context == 2**19 and p.cfg.data.source == "tokens"
    assert plans["converted"].cfg.model.retention.p == 2 and plans["converted"].cfg.model.pattern == "R"
    assert plans["converted"].cfg.train.init_from == f"run:{plans['transformer'].run_id}"  # resolved by the sweep
    # [BR]: retrained 3000 steps; the source and the scratch model train 20,000
    assert (plans["transformer"].steps, plans["converted"].steps, plans["scratch"].steps) == (20_000, 3_000, 20_000)
    # the PowerCoder-style option: the same retraining, attention blended into retention over its first 600 steps
    blended = plans["blended"].cfg.train
    source = plans["converted"].cfg.train.init_from
    assert (plans["blended"].steps, blended.blend_steps, blended.init_from) == (3_000, 600, source)
    assert plans["converted"].cfg.train.get("blend_steps") is None
