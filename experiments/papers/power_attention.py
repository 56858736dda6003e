"""Paper reproduction: Manifest AI, "Scaling Context Requires Rethinking Attention" (Gelada, Buckman, Zhang,
Bach, 2025; arXiv 2507.04239), the comparison of their Table 4 and docs/papers/power_attention.md.

Power attention (power retention, p = 2) against softmax attention and sliding-window attention at equal
parameters and training FLOPs: softmax attention trains at context T, power attention and windowed attention
(window T) at context 4T. The window keeps windowed attention's FLOPs per token at attention's, and power
attention's head size is chosen so its state FLOPs per token are close to attention's at T; each run then
gets the whole number of steps that spends its FLOP budget (FLOP matching, scaling.sweep.spec).

``scale="full"``: the paper's setup (arXiv 2507.04239, Table 4 and Appendix D, as issue 17 reads them): the
750M model is RWKV-7's "large" shape, width 1280, 36 layers, 20 heads (of 64) [Appendix D], with the GPT-2
vocabulary of 50,257 tokens, tied embeddings; softmax attention at context 1024, power attention p = 2 and
window-1024 attention at 4096 [Table 4]; about 7.86M tokens per update, 7680 x 1024 and 1920 x 4096 [Appendix D];
AdamW lr 3e-4, cosine to 1e-5 absolute (``train.min_lr``), weight decay 0.1, betas 0.9 / 0.999, clip 1.0 (as issue 9
quoted the paper). The comparison matches state size and tokens per update [Table 4]: attention's KV cache at
1024 (2 x 1024 x 20 x 64 = 2.62M a layer), the window's at 1024 and power p = 2's state (20 x (2080 x 64 + 2080)
= 2.70M a layer, D = C(65, 2)) agree within 3%. The backbone is the statescale block (pre-norm mixer + SwiGLU MLP),
not RWKV-7's; 774M parameters (tests/sweep/test_paper_specs.py). Not stated in what this spec was checked against:
the token count, so the budget is the training FLOPs of softmax attention on 15B tokens (20 per 750M parameters,
Chinchilla), and the warm-up, kept at the ~1B tokens of issue 9's 2000 steps of 2^19 tokens: 133 updates. The data
are yours (the paper: LongCrawl64): ``--set data.path=/path/to/tokens.bin`` (``--dry-run`` plans without it).

``scale="cpu"``: the same comparison on two CPU cores in ~10 minutes: d_model 64, 2 layers, 4 heads of 16,
contexts 64 (attention) and 256 (power p = 2 and window 64), the stdlib corpus (bytes), two FLOP budgets.
"""

from scaling.sweep import Sweep

SCALES = ("cpu", "full")

# Published final losses (Table 4 of the paper, as quoted in the issue): drawn as reference points.
PAPER_LOSSES = {"attention": 1.631, "window": 1.638, "power": 1.613}
FULL_CONTEXT, FULL_HEADS = 1024, 20  # attention's context; heads of 64 at width 1280 [Table 4, Appendix D]
FULL_TOKENS_PER_UPDATE = 7680 * 1024  # 7,864,320 = 1920 x 4096 [Appendix D]
CPU_BUDGETS = [1.0e12, 3.0e12]
CPU_EVAL_CONTEXTS = (64, 256, 1024)  # attention's training context, the others', 4x that
FULL_BUDGET = 7.81e19  # training FLOPs: softmax attention at 1024 on 15B tokens (an assumption: see above)


def _variants(context: int, heads: int, head_dim: int, retention_heads: int) -> dict[str, dict]:
    attn = {"model.pattern": "A", "model.attention.n_heads": heads, "model.attention.n_kv_heads": heads}
    return {
        "attention": {**attn, "model.name": "attention", "train.context": context},
        "window": {**attn, "model.name": "window", "model.attention.window": context,
                   "train.context": 4 * context},
        "power": {"model.name": "power", "model.pattern": "R", "model.retention.p": 2,
                  "model.retention.n_heads": retention_heads, "model.retention.n_kv_heads": retention_heads,
                  "train.context": 4 * context},
    }


def get_sweep(scale: str = "cpu") -> Sweep:
    if scale == "full":
        # 7680 x 1024 = 1920 x 4096 = 7,864,320 tokens per update [Appendix D]; 20 heads of 64 [Appendix D]
        variants = _variants(FULL_CONTEXT, FULL_HEADS, 64, FULL_HEADS)
        for v in variants.values():
            v["train.batch_size"] = FULL_TOKENS_PER_UPDATE // v["train.context"]
        return Sweep(
            name="power_attention-full",
            description="power attention p=2 (context 4096) vs softmax attention (1024) vs window-1k attention "
                        "(4096), RWKV-7 large shape (1280 x 36, 20 heads), 7.86M tokens an update, equal training "
                        "FLOPs (Manifest AI 2025, Table 4)",
            base="configs/models/transformer_small.py",
            overrides={
                "model.d_model": 1280, "model.n_layers": 36, "model.vocab_size": 50257, "model.dtype": "bfloat16",
                "train.lr": 3e-4, "train.warmup_steps": 133, "train.min_lr": 1e-5,
                "train.weight_decay": 0.1, "train.b1": 0.9, "train.b2": 0.999, "train.grad_clip": 1.0,
                "train.log_every": 10, "train.eval_every": 100, "train.checkpoint_every": 100,
                "data.source": "tokens", "data.token_dtype": "uint16", "data.eval_tokens": 2**22,
            },
            variants=variants,
            # softmax attention at 1024 on 15B tokens: 15e9 x 3 x 1.736e9 forward FLOPs per token (accounting)
            budgets=[FULL_BUDGET],
            figures=["power_attention"],
        )
    if scale != "cpu":
        raise ValueError(f"scale {scale!r}: must be one of {', '.join(SCALES)}")
    variants = _variants(64, 4, 16, 4)
    for v in variants.values():
        v["train.batch_size"] = 2048 // v["train.context"]  # 2,048 tokens a step at both contexts
    return Sweep(
        name="power_attention-cpu",
        description="power attention p=2 (context 256) vs softmax attention (64) vs window-64 attention (256), "
                    "tiny models on the stdlib corpus, FLOP-matched",
        base="configs/models/transformer_tiny.py",
        overrides={
            "model.d_model": 64, "model.n_layers": 2,
            "train.lr": 3e-3, "train.warmup_steps": 20, "train.min_lr_ratio": 0.1,
            "train.weight_decay": 0.1, "train.b1": 0.9, "train.b2": 0.999, "train.grad_clip": 1.0,
            "train.log_every": 10, "train.eval_every": 100, "train.checkpoint_every": 100,
            "data.packing": False,
            # every run is also evaluated at both training contexts and at 4x the longer one: the paper compares
            # the loss at the long context, where attention must extrapolate (eval_contexts.json)
            "train.eval_contexts": list(CPU_EVAL_CONTEXTS),
        },
        variants=variants,
        budgets=CPU_BUDGETS,
        # the headline comparison (the larger budget) over three seeds
        parts=[{}, {"budgets": CPU_BUDGETS[-1:], "seeds": 3}],
        figures=["power_attention"],
    )
