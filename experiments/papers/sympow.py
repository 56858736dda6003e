"""Paper reproduction: Manifest AI, "Symmetric Power Transformers" (Buckman, Gelada, Zhang, August 2024;
manifestai.com/articles/symmetric-power-transformers), docs/papers/sympow.md.

Loss against training steps for softmax attention and symmetric power (sympow) attention with p = 2 and
p = 4, at fixed parameters (the same width, depth and heads: power retention adds only its gate), and the
final loss against the state size: the KV cache of attention at the training context, and
heads * (D * head_dim + D) with D = C(head_dim + p - 1, p) per layer for sympow. Every run trains for the
same number of steps on the same batches, so the x axis is steps (and tokens), as in the article's curves.

``scale="full"``: GPT-2 small as in the article (124M: 12 layers, d_model 768, 12 heads of 64, the GPT-2
vocabulary of 50,257), context 4096 on your tokenized data (``--set data.path=/path/to/tokens.bin``); AdamW
lr 6e-4 with 2000 warm-up steps and cosine decay to 6e-5, weight decay 0.1, betas 0.9 / 0.95, clip 1.0,
2^19 tokens a step (128 x 4096) for 20,000 steps (10.5B tokens). The article's own step count and batch are
not restated here; these are GPT-2-small defaults (nanoGPT), chosen so p = 4 (D = 766,480 features a head)
still fits a cluster budget with the chunked form. Power retention here has a learned gate (initialised
near 1); the article's sympow attention has none.

``scale="cpu"``: d_model 64, 2 layers, 8 heads of 8 (so that p = 4 stays cheap: D = 330), context 128,
the stdlib corpus (bytes); attention, p = 2, p = 4, and p = 2 with 4 heads of 16 (a third state size).
"""

from scaling.sweep import Sweep

SCALES = ("cpu", "full")


def _variants(heads: int, extra_p2_heads: int | None = None) -> dict[str, dict]:
    def ret(p, h):
        return {"model.pattern": "R", "model.retention.p": p, "model.retention.n_heads": h,
                "model.retention.n_kv_heads": h}

    out = {"attention": {"model.pattern": "A", "model.attention.n_heads": heads, "model.attention.n_kv_heads": heads},
           "sympow-p2": ret(2, heads), "sympow-p4": ret(4, heads)}
    if extra_p2_heads:
        out[f"sympow-p2-h{extra_p2_heads}"] = ret(2, extra_p2_heads)
    for label, v in out.items():
        v["model.name"] = label
    return out


def get_sweep(scale: str = "cpu") -> Sweep:
    if scale == "full":
        return Sweep(
            name="sympow-full",
            description="softmax attention vs sympow p=2 and p=4 at fixed params (GPT-2 small, 124M), loss vs "
                        "steps and vs state size (Manifest AI 2024)",
            base="configs/models/transformer_small.py",
            overrides={
                "model.d_model": 768, "model.n_layers": 12, "model.vocab_size": 50257, "model.dtype": "bfloat16",
                "train.context": 4096, "train.batch_size": 128, "train.steps": 20_000,
                "train.lr": 6e-4, "train.warmup_steps": 2000, "train.min_lr_ratio": 0.1,
                "train.weight_decay": 0.1, "train.b1": 0.9, "train.b2": 0.95, "train.grad_clip": 1.0,
                "train.log_every": 50, "train.eval_every": 500, "train.checkpoint_every": 1000,
                "data.source": "tokens", "data.token_dtype": "uint16", "data.eval_tokens": 2**22,
            },
            variants=_variants(12),
            figures=["sympow"],
        )
    if scale != "cpu":
        raise ValueError(f"scale {scale!r}: must be one of {', '.join(SCALES)}")
    return Sweep(
        name="sympow-cpu",
        description="softmax attention vs sympow p=2 and p=4 at fixed params, tiny models on the stdlib corpus",
        base="configs/models/transformer_tiny.py",
        overrides={
            "model.d_model": 64, "model.n_layers": 2,
            "train.context": 128, "train.batch_size": 8, "train.steps": 2000,
            "train.lr": 3e-3, "train.warmup_steps": 20, "train.min_lr_ratio": 0.1,
            "train.log_every": 10, "train.eval_every": 100, "train.checkpoint_every": 100,
            "data.packing": False,
        },
        variants=_variants(8, extra_p2_heads=4),
        figures=["sympow"],
    )
