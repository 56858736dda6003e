"""Paper reproduction: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023;
arXiv 2312.00752, Figure 4 and Table 12) and Dao & Gu, "Transformers are SSMs" (Mamba-2, 2024; arXiv 2405.21060,
Figure 9): loss against training FLOPs for Mamba-2 and a Transformer++ baseline (RoPE, SwiGLU, RMSNorm, no
biases) at 2k and 8k context, each model size trained on a Chinchilla-style token budget. docs/papers/mamba_scaling.md.

``scale="full"``: the GPT-3 sizes of Mamba's Table 12: 125M (12 layers, d_model 768), 350M (24, 1024),
760M (24, 1536), 1.3B (24, 2048) on 2.5B, 7B, 15B and 26B tokens, 0.5M tokens a step (256 x 2048 or 64 x
8192), the GPT-NeoX vocabulary (50,277), AdamW with the "improved recipe" of Mamba's appendix: peak lr 5x
GPT-3's (3e-3, 1.5e-3, 1.25e-3, 1e-3), warm-up then cosine decay to 1e-5, weight decay 0.1, betas 0.9 /
0.95, clip 1.0. Mamba-2: head_dim 64, d_state 128, expand 2. A statescale block is a mixer plus a SwiGLU
MLP, where Mamba stacks two mixer blocks per Transformer layer without MLPs, so Mamba-2 here keeps
d_model and takes fewer layers (10, 20, 20, 20) to match each size's parameters within 10%
(tests/sweep/test_papers.py). Your tokenized data: ``--set data.path=/path/to/tokens.bin``.

``scale="cpu"``: three widths (d_model 24, 32, 48; 2 layers; heads of 8, Mamba-2 d_state 16) of each family
at contexts 128 and 512 (2,048 tokens a step), each trained on 20 tokens per parameter (Chinchilla, total
parameters), on the stdlib corpus (bytes).
"""

from scaling import accounting, config
from scaling.sweep import Sweep

SCALES = ("cpu", "full")

# Mamba Table 12 (GPT-3 sizes): label -> (transformer layers, d_model, GPT-3 peak lr, training tokens)
FULL_SIZES = {
    "125M": (12, 768, 6e-4, 2.5e9),
    "350M": (24, 1024, 3e-4, 7e9),
    "760M": (24, 1536, 2.5e-4, 15e9),
    "1.3B": (24, 2048, 2e-4, 26e9),
}
# Mamba-2 layers (mixer + MLP blocks) with the parameters of each size's Transformer++
MAMBA_LAYERS = {"125M": 10, "350M": 20, "760M": 20, "1.3B": 20}
CPU_WIDTHS = (24, 32, 48)
TOKENS_PER_PARAM = 20


def _transformer(n_layers: int, d_model: int, head_dim: int) -> dict:
    h = d_model // head_dim
    return {"model.pattern": "A", "model.n_layers": n_layers, "model.d_model": d_model,
            "model.attention.n_heads": h, "model.attention.n_kv_heads": h}


def _mamba(n_layers: int, d_model: int, head_dim: int, d_state: int) -> dict:
    return {"model.pattern": "M", "model.n_layers": n_layers, "model.d_model": d_model,
            "model.mamba.head_dim": head_dim, "model.mamba.d_state": d_state, "model.mamba.expand": 2}


def _chinchilla_tokens(base: str, overrides: dict, variant: dict) -> int:
    cfg = config.load(base, list({**overrides, **variant}.items()))
    return TOKENS_PER_PARAM * accounting.params(cfg)["total"]


def get_sweep(scale: str = "cpu") -> Sweep:
    if scale == "full":
        variants = {}
        for label, (n, d, lr, tokens) in FULL_SIZES.items():
            common = {"train.lr": 5 * lr, "train.tokens": int(tokens)}
            variants[f"transformer-{label}"] = {**_transformer(n, d, 64), **common}
            variants[f"mamba2-{label}"] = {**_mamba(MAMBA_LAYERS[label], d, 64, 128), **common}
        for label, v in variants.items():
            v["model.name"] = label
        return Sweep(
            name="mamba_scaling-full",
            description="Mamba-2 vs Transformer++ loss vs FLOPs, 125M-1.3B on Chinchilla token budgets, contexts "
                        "2k and 8k (Gu & Dao 2023, Dao & Gu 2024)",
            base="configs/models/transformer_small.py",
            overrides={
                "model.vocab_size": 50277, "model.dtype": "bfloat16",
                "train.warmup_steps": 1000, "train.min_lr_ratio": 0.01,
                "train.weight_decay": 0.1, "train.b1": 0.9, "train.b2": 0.95, "train.grad_clip": 1.0,
                "train.log_every": 50, "train.eval_every": 500, "train.checkpoint_every": 1000,
                "data.source": "tokens", "data.token_dtype": "uint16", "data.eval_tokens": 2**22,
            },
            variants=variants,
            axes={"train.context,train.batch_size": [(2048, 256), (8192, 64)]},
            figures=["mamba_scaling"],
        )
    if scale != "cpu":
        raise ValueError(f"scale {scale!r}: must be one of {', '.join(SCALES)}")
    base = "configs/models/transformer_tiny.py"
    overrides = {
        "train.lr": 3e-3, "train.warmup_steps": 20, "train.min_lr_ratio": 0.1,
        "train.log_every": 10, "train.eval_every": 50, "train.checkpoint_every": 100,
        "data.packing": False,
    }
    variants = {}
    for d in CPU_WIDTHS:
        variants[f"transformer-d{d}"] = _transformer(2, d, 8)
        variants[f"mamba2-d{d}"] = _mamba(2, d, 8, 16)
    for label, v in variants.items():
        v["model.name"] = label
        v["train.tokens"] = _chinchilla_tokens(base, overrides, v)
    return Sweep(
        name="mamba_scaling-cpu",
        description="Mamba-2 vs Transformer++ loss vs FLOPs, three tiny widths on 20 tokens per parameter, "
                    "contexts 128 and 512, stdlib corpus",
        base=base,
        overrides=overrides,
        variants=variants,
        axes={"train.context,train.batch_size": [(128, 16), (512, 4)]},
        figures=["mamba_scaling"],
    )
