"""Paper reproduction: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023;
arXiv 2312.00752, Figure 4 and Table 12) and Dao & Gu, "Transformers are SSMs" (Mamba-2, 2024; arXiv 2405.21060,
Figure 9): loss against training FLOPs for Mamba-2 and a Transformer++ baseline (RoPE, SwiGLU, RMSNorm, no
biases) at 2k and 8k context, each model size trained on a Chinchilla-style token budget. docs/papers/mamba_scaling.md.

``scale="full"``: the GPT-3 sizes of Mamba's Table 12 (App. E.2.1): 125M (12 layers, d_model 768, 12 heads of 64),
350M (24, 1024, 16 of 64), 760M (24, 1536, 16 of 96), 1.3B (24, 2048, 32 of 64) on 2.5B, 7B, 15B and 26B tokens,
0.5M tokens a step (256 x 2048 or 64 x 8192), the GPT-2 vocabulary (50,257: the scaling-law runs used the GPT-2
tokenizer on the Pile, App. E.2.1; GPT-NeoX's only for the 300B-token pretrained models), AdamW with the
"improved recipe" of App. E.2.1: peak lr 5x GPT-3's (3e-3, 1.5e-3, 1.25e-3, 1e-3), warm-up then cosine decay to
1e-5 absolute (``train.min_lr``), weight decay 0.1, betas 0.9 / 0.95, clip 1.0. The warm-up length (1000 steps)
is an assumption: the text read for this spec does not give it. Mamba-2 (Mamba-2 paper, section 9.2): head_dim
64, d_state 128, expand 2, and, as Mamba stacks mixer blocks without MLPs, no MLP (``model.mlp = False``) and
twice the Transformer++'s layers (24 for 125M, 48 for the others): the "mamba2" rows. "mamba2mlp" rows are a
labelled variant, statescale's mixer-plus-SwiGLU block, that keeps d_model and takes fewer layers (10, 20, 20,
20) to match each size's parameters within 10%. Your tokenized data: ``--set data.path=/path/to/tokens.bin``.

``scale="cpu"``: three widths (d_model 24, 32, 48; 2 layers; heads of 8, Mamba-2 d_state 16) of each family
at contexts 128 and 512 (2,048 tokens a step), each trained on 20 tokens per parameter (Chinchilla, total
parameters), on the stdlib corpus (bytes).
"""

from scaling import accounting, config
from scaling.sweep import Sweep

SCALES = ("cpu", "full")

# Mamba Table 12 (GPT-3 sizes): label -> (transformer layers, d_model, head_dim, GPT-3 peak lr, training tokens)
FULL_SIZES = {
    "125M": (12, 768, 64, 6e-4, 2.5e9),
    "350M": (24, 1024, 64, 3e-4, 7e9),
    "760M": (24, 1536, 96, 2.5e-4, 15e9),  # 16 heads of 96
    "1.3B": (24, 2048, 64, 2e-4, 26e9),
}
FULL_VOCAB = 50257  # GPT-2 tokenizer (App. E.2.1)
FULL_MIN_LR = 1e-5  # cosine decays to 1e-5 absolute (App. E.2.1)
# Mamba-2 as in the paper: mixer blocks only, twice the Transformer++'s layers (Mamba-2 section 9.2)
MAMBA_LAYERS = {label: 2 * n for label, (n, *_) in FULL_SIZES.items()}
# the labelled variant: mixer + SwiGLU blocks, layers chosen to match each size's parameters within 10%
MAMBA_MLP_LAYERS = {"125M": 10, "350M": 20, "760M": 20, "1.3B": 20}
CPU_WIDTHS = (24, 32, 48)
CPU_SEED_WIDTH = 32  # run over three seeds
TOKENS_PER_PARAM = 20


def _transformer(n_layers: int, d_model: int, head_dim: int) -> dict:
    h = d_model // head_dim
    return {"model.pattern": "A", "model.n_layers": n_layers, "model.d_model": d_model,
            "model.attention.n_heads": h, "model.attention.n_kv_heads": h}


def _mamba(n_layers: int, d_model: int, head_dim: int, d_state: int, mlp: bool = True) -> dict:
    out = {"model.pattern": "M", "model.n_layers": n_layers, "model.d_model": d_model,
           "model.mamba.head_dim": head_dim, "model.mamba.d_state": d_state, "model.mamba.expand": 2}
    return out if mlp else {**out, "model.mlp": False}


def _chinchilla_tokens(base: str, overrides: dict, variant: dict) -> int:
    cfg = config.load(base, list({**overrides, **variant}.items()))
    return TOKENS_PER_PARAM * accounting.params(cfg)["total"]


def get_sweep(scale: str = "cpu") -> Sweep:
    if scale == "full":
        variants = {}
        for label, (n, d, head_dim, lr, tokens) in FULL_SIZES.items():
            common = {"train.lr": 5 * lr, "train.tokens": int(tokens)}  # the improved recipe: 5x GPT-3's lr
            variants[f"transformer-{label}"] = {**_transformer(n, d, head_dim), **common}
            variants[f"mamba2-{label}"] = {**_mamba(MAMBA_LAYERS[label], d, 64, 128, mlp=False), **common}
            variants[f"mamba2mlp-{label}"] = {**_mamba(MAMBA_MLP_LAYERS[label], d, 64, 128), **common}
        for label, v in variants.items():
            v["model.name"] = label
        return Sweep(
            name="mamba_scaling-full",
            description="Mamba-2 (no MLP, 2x layers; and a mixer+MLP variant) vs Transformer++ loss vs FLOPs, "
                        "125M-1.3B on Chinchilla token budgets, contexts 2k and 8k (Gu & Dao 2023, Dao & Gu 2024)",
            base="configs/models/transformer_small.py",
            overrides={
                "model.vocab_size": FULL_VOCAB, "model.dtype": "bfloat16",
                "train.warmup_steps": 1000, "train.min_lr": FULL_MIN_LR,  # warm-up length: an assumption
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
        # the headline comparison (d_model 32, both families, both contexts) over three seeds: the gap is read
        # against the seed-to-seed spread
        parts=[{}, {"variants": {k: v for k, v in variants.items() if k.endswith(f"-d{CPU_SEED_WIDTH}")},
                    "seeds": 3}],
        figures=["mamba_scaling"],
    )
