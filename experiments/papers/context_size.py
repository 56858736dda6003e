"""Paper reproduction: Manifest AI, "Compute-Optimal Context Size" (Buckman, Gelada, May 2024;
manifestai.com/articles/compute-optimal-context-size), docs/papers/context_size.md.

Loss against training context at a fixed FLOP budget, for several model sizes: a longer context makes each
prediction easier but costs attention FLOPs per token (4 * T * d_model per layer), so at fixed FLOPs it buys
fewer tokens. The loss is U-shaped in log context; its minimum is the compute-optimal context for that
model size and budget (``scaling.analysis.fits.fit_context_law``). The tokens per step are held fixed across
contexts (the batch moves with the context), as in the article.

``scale="full"``: GPT-2-style transformers at the article's scales, 124M to 1.6B (GPT-2 small, medium, large
and XL: 12/24/36/48 layers at d_model 768/1024/1280/1600, heads of 64, the GPT-2 vocabulary of 50,257), contexts
2^7 to 2^16 (128 to 65,536 tokens, the article's range), 2^19 tokens a step, on your tokenized data
(``--set data.path=/path/to/tokens.bin``), every size FLOP-matched to two budgets, 1e19 and 1e20 training FLOPs:
80 runs. The article's budget axis is GPU-hours; FLOPs here (a device-independent stand-in: hours = FLOPs / (MFU x
peak), ``--dry-run`` prints them). At context 2048, by the accounting (training FLOPs 3 x forward), 1e20 is about
22 tokens per parameter for the 774M model (Chinchilla's 20) and 5.7 for the 1.6B model (1e20 / (3 x 3.74e9 FLOPs
a token) / 1.56e9 parameters); 1e19 is a tenth of that. AdamW lr 6e-4 (3e-4 for the two larger sizes), cosine to
10%, weight decay 0.1, betas 0.9 / 0.95, clip 1.0: GPT-2 defaults (nanoGPT), since the article does not restate its
optimiser settings; 100 warm-up steps (52M tokens), not nanoGPT's 2000, because the shortest run (1.6B at 64K
and 1e19) has 273 steps.

``scale="cpu"``: three widths (d_model 32, 64, 96; 2 layers; heads of 16) x contexts 16, 64, 256 and 1024
at 2,048 tokens a step, each run spending 1e12 training FLOPs, on the stdlib corpus (bytes).
"""

from scaling.sweep import Sweep

SCALES = ("cpu", "full")

# GPT-2 sizes (Radford et al. 2019): label -> (n_layers, d_model, peak lr).
FULL_SIZES = {"124M": (12, 768, 6e-4), "355M": (24, 1024, 6e-4), "774M": (36, 1280, 3e-4), "1.6B": (48, 1600, 3e-4)}
# Training FLOPs: every size at each budget. At context 2048, 1e20 is ~22 tokens per parameter for the 774M model
# and ~5.7 for the 1.6B one (accounting.train_flops_per_token; tests/sweep/test_paper_specs.py checks both).
FULL_BUDGETS = [1e19, 1e20]
FULL_CONTEXTS = [2**k for k in range(7, 17)]  # 128 .. 65,536 tokens, the article's range
FULL_TOKENS_PER_STEP = 2**19
CPU_CONTEXTS = [(16, 128), (64, 32), (256, 8), (1024, 2)]  # (context, batch): 2,048 tokens a step


def _size(n_layers: int, d_model: int, **extra) -> dict:
    heads = d_model // (16 if d_model < 128 else 64)
    return {"model.n_layers": n_layers, "model.d_model": d_model, "model.attention.n_heads": heads,
            "model.attention.n_kv_heads": heads, "model.name": f"gpt-d{d_model}", **extra}


def get_sweep(scale: str = "cpu") -> Sweep:
    if scale == "full":
        variants = {label: _size(n, d, **{"train.lr": lr}) for label, (n, d, lr) in FULL_SIZES.items()}
        return Sweep(
            name="context_size-full",
            description="loss vs training context at fixed FLOPs, GPT-2 small to XL (Manifest AI 2024)",
            base="configs/models/transformer_small.py",
            overrides={
                "model.vocab_size": 50257, "model.dtype": "bfloat16",
                "train.warmup_steps": 100, "train.min_lr_ratio": 0.1, "train.weight_decay": 0.1,
                "train.b1": 0.9, "train.b2": 0.95, "train.grad_clip": 1.0,
                "train.log_every": 50, "train.eval_every": 1000, "train.checkpoint_every": 1000,
                "data.source": "tokens", "data.token_dtype": "uint16", "data.eval_tokens": 2**22,
            },
            variants=variants,
            axes={"train.context,train.batch_size": [(t, FULL_TOKENS_PER_STEP // t) for t in FULL_CONTEXTS]},
            budgets=FULL_BUDGETS,
            figures=["context_size"],
        )
    if scale != "cpu":
        raise ValueError(f"scale {scale!r}: must be one of {', '.join(SCALES)}")
    variants = {f"d{d}": _size(2, d) for d in (32, 64, 96)}
    return Sweep(
        name="context_size-cpu",
        description="loss vs training context at 1e12 FLOPs for three widths, tiny transformers on the stdlib corpus",
        base="configs/models/transformer_tiny.py",
        overrides={
            "train.lr": 3e-3, "train.warmup_steps": 20, "train.min_lr_ratio": 0.1,
            "train.log_every": 10, "train.eval_every": 250, "train.checkpoint_every": 250,
            "data.packing": False,
            # every run is evaluated at every context of the sweep: its loss at the best of them is the metric
            # (a model trained short is not penalised for the shorter window it averages over; eval_contexts.json)
            "train.eval_contexts": [t for t, _ in CPU_CONTEXTS],
        },
        variants=variants,
        axes={"train.context,train.batch_size": CPU_CONTEXTS},
        budgets=[1.0e12],
        # the middle width at a second, smaller budget (optimal context vs compute), both budgets over three seeds
        parts=[{}, {"variants": {"d64": variants["d64"]}, "budgets": [3.0e11, 1.0e12], "seeds": 3}],
        figures=["context_size"],
    )
