"""Paper reproduction: Manifest AI, "Symmetric Power Transformers" (Buckman, Gelada, Zhang, August 2024;
manifestai.com/articles/symmetric-power-transformers), docs/papers/sympow.md.

Loss against training steps for softmax attention and symmetric power (sympow) attention with p = 2 and
p = 4, at fixed parameters (the same width, depth and heads: power retention adds only its gate), and the
final loss against the state size: the KV cache of attention at the training context, and
heads * (D * head_dim + D) with D = C(head_dim + p - 1, p) per layer for sympow. Every run trains for the
same number of steps on the same batches, so the x axis is steps (and tokens), as in the article's curves.

``scale="full"``: the article's setup (section "Experiments"): LongCrawl64 at context 4096 (your token file:
``--set data.path=/path/to/tokens.bin``; LongCrawl64 is GPT-2-tokenized, vocabulary 50,257), 524,288 tokens per
batch (128 x 4096), Adam at lr 6e-4 with no schedule (``train.schedule = "constant"``, no warm-up, no weight
decay), an extra layer norm after the embeddings (``model.embed_norm``, an RMSNorm as every norm here), results at
100K steps (52.4B tokens). The model is GPT-2 small's shape (124M: 12 layers, d_model 768, 12 heads of 64), as
the article's GPT-2 sizes. Sympow runs in the attention form the article trained with (``model.retention.form =
"parallel"``: (q.k)^p over the causal block, no features), so p = 4 costs what attention costs: 3.98e8 forward
FLOPs a token at 4096. In the chunked form p = 4 (D = C(67, 4) = 766,480 features a head) costs 2.99e10 forward
FLOPs a token (75x; 4.7e21 training FLOPs for the 100K steps against 6.3e19) and a state of 7.2e9 float32 a
sequence (28.7 GB): ``scaling flops configs/papers/gpt2_124m.py --set model.pattern=R --set model.retention.p=4
--context 4096`` (docs/papers/sympow.md). Not stated in the article as read here: betas (0.9 / 0.95 kept) and
gradient clipping (1.0 kept). Power retention here has a learned gate (initialised near 1); the article's sympow
has none.

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
        variants = _variants(12)
        for label, v in variants.items():
            if label != "attention":  # the attention form the article trained with
                v["model.retention.form"] = "parallel"
        return Sweep(
            name="sympow-full",
            description="softmax attention vs sympow p=2 and p=4 (attention form) at fixed params (GPT-2 small "
                        "shape, 124M), context 4096, 100K steps of 524,288 tokens, Adam 6e-4 constant (Manifest "
                        "AI 2024)",
            base="configs/models/transformer_small.py",
            overrides={
                "model.d_model": 768, "model.n_layers": 12, "model.vocab_size": 50257, "model.dtype": "bfloat16",
                "model.embed_norm": True,  # "an extra layer norm after the embeddings"
                # 524,288 tokens per batch at context 4096; results at 100K steps
                "train.context": 4096, "train.batch_size": 128, "train.steps": 100_000,
                # Adam, lr 6e-4, no schedule
                "train.lr": 6e-4, "train.schedule": "constant", "train.warmup_steps": 0, "train.weight_decay": 0.0,
                "train.b1": 0.9, "train.b2": 0.95, "train.grad_clip": 1.0,
                "train.log_every": 50, "train.eval_every": 1000, "train.checkpoint_every": 1000,
                "data.source": "tokens", "data.token_dtype": "uint16", "data.eval_tokens": 2**22,
            },
            variants=variants,
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
        # three seeds of every variant but p = 4 (13 min a run on two cores): attention against p = 2 is the headline
        parts=[{}, {"variants": {k: v for k, v in _variants(8, extra_p2_heads=4).items() if k != "sympow-p4"},
                    "seeds": 3}],
        figures=["sympow"],
    )
