"""MQAR recall vs state size: attention, power retention (p = 1, 2, 4; several head dims), Mamba-2 (d_state
4, 16, 64), GLA and Gated DeltaNet (head dims 8, 16, 32) and Based (feature_dim 4, 8, 16), tiny models on
multi-query associative recall (scaling/data/synthetic.py), nineteen runs (`scaling sweep
experiments/mqar_state_size.py`, two local workers, about half an hour on two CPU cores; `scaling analyze
sweeps/mqar_state_size` then draws recall_vs_state).

Task: context 48, 12 key-value pairs over a vocabulary of 64 (keys from 1..31, values from 32..63), each key
asked once after the pairs with power-law placement; the answer is a target only, never an input (as in
Zoology), so loss and accuracy count the 12 answers of each row and guessing scores 1/12. Every model has
d_model 64 and 2 layers and trains 2,000 steps of 32 rows; task_accuracy is measured on the held-out stream
(data.task.eval_seed).

Choices, each measured on this task before it was fixed here (README "Recall benchmarks"):
- AdamW with b2 = 0.999 and no weight decay. With the framework's language-model defaults (b2 0.95, decay 0.1,
  lr 3e-3) attention had learned nothing by step 4,000; with these it is exact by step 750.
- Learning rate and init per family, the best of the ones tried: attention and power retention lr 1e-3 with
  init_std 0.02; Mamba-2 lr 3e-3 with init_std 0.1 (at 0.02 it stays at chance for over 1,000 steps).
- Power retention uses its short conv (model.retention.conv = 4) over q, k and v, as Based, Mamba and the
  flash-linear-attention layers do: recall needs a key that carries the token before it, which a linear
  attention cannot select sharply on its own. Without the conv, retention stayed at chance (0.13 at step 2,000
  on 8 pairs); with it, it was exact by step 250. Its conv state counts in the state size.
- GLA, Gated DeltaNet and Based take Mamba-2's lr 3e-3 and init_std 0.1, and GLA and Based a short conv (4) as
  power retention. Measured at 600 steps on 12 pairs (head dim 16 / feature_dim 8): GLA without the conv at lr 1e-3
  0.03 (chance), with it 0.04 at lr 1e-3 and 0.62 at lr 3e-3 / init 0.1; Based with the conv 0.05 at lr 1e-3 and
  1.00 at lr 3e-3 / init 0.1; Gated DeltaNet (its conv is part of the layer) at chance with lr 1e-3, 3e-3 (init
  0.02 or 0.1) and 1e-2, so its setting here is the others', not a tuned one.
- Attention has one head of 64: the KV cache is the same for any head split, and one head learned fastest.

State sizes (elements per sequence at context 48, both layers, scaling.accounting.state_size):
  attention        the KV cache, 2 * 48 * 64 * 2 = 12,288
  power retention  p = 1 heads of 8 / 16, p = 2 heads of 8 / 16 / 32, p = 4 heads of 4 (with the conv state)
  Mamba-2          heads of 16, d_state 4 / 16 / 64 (with the conv state)
  GLA              heads of 8 / 16 / 32: heads x head_dim^2 per layer (with the conv state)
  Gated DeltaNet   heads of 8 / 16 / 32: the same, with its conv state
  Based            4 heads, feature_dim 4 / 8 / 16: heads x D x (head_dim + 1), D = 1 + f + f(f+1)/2, plus the
                   window's KV cache (window 8) and the conv state
"""

from scaling.sweep import Sweep

D_MODEL = 64
ATTENTION_OPT = {"train.lr": 1e-3, "model.init_std": 0.02}
MAMBA_OPT = {"train.lr": 3e-3, "model.init_std": 0.1}
WINDOW = 8  # Based's sliding window: shorter than the 24 tokens of pairs, so recall must use its linear branch


def _retention(p: int, head_dim: int) -> dict:
    heads = D_MODEL // head_dim
    return {"model.pattern": "R", "model.retention.p": p, "model.retention.n_heads": heads,
            "model.retention.n_kv_heads": heads, "model.retention.chunk_size": 16, "model.retention.conv": 4,
            "model.retention.normalize": "rmsnorm" if p % 2 else "sum", **ATTENTION_OPT}


def _mamba(d_state: int) -> dict:
    return {"model.pattern": "M", "model.mamba.d_state": d_state, "model.mamba.head_dim": 16,
            "model.mamba.chunk_size": 16, **MAMBA_OPT}


def _gla(head_dim: int) -> dict:
    return {"model.pattern": "G", "model.gla.n_heads": D_MODEL // head_dim, "model.gla.chunk_size": 16,
            "model.gla.conv": 4, **MAMBA_OPT}


def _gated_delta(head_dim: int) -> dict:
    return {"model.pattern": "D", "model.gated_delta.n_heads": D_MODEL // head_dim,
            "model.gated_delta.chunk_size": 16, **MAMBA_OPT}


def _based(feature_dim: int) -> dict:
    return {"model.pattern": "B", "model.based.n_heads": 4, "model.based.feature_dim": feature_dim,
            "model.based.window": WINDOW, "model.based.chunk_size": 16, "model.based.conv": 4, **MAMBA_OPT}


def get_sweep():
    variants = {"attention": {"model.pattern": "A", "model.attention.n_heads": 1, "model.attention.n_kv_heads": 1,
                              **ATTENTION_OPT}}
    variants |= {f"retention-p{p}-hd{hd}": _retention(p, hd)
                 for p, hd in ((1, 8), (1, 16), (2, 8), (2, 16), (2, 32), (4, 4))}
    variants |= {f"mamba-d{n}": _mamba(n) for n in (4, 16, 64)}
    variants |= {f"gla-hd{hd}": _gla(hd) for hd in (8, 16, 32)}
    variants |= {f"gated_delta-hd{hd}": _gated_delta(hd) for hd in (8, 16, 32)}
    variants |= {f"based-f{f}": _based(f) for f in (4, 8, 16)}
    for label, over in variants.items():
        over["model.name"] = label
    return Sweep(
        name="mqar_state_size",
        description="MQAR accuracy vs state size: attention, power retention p=1,2,4, Mamba-2 d_state 4..64",
        base="configs/models/transformer_tiny.py",
        overrides={
            "model.d_model": D_MODEL, "model.n_layers": 2,
            "data.source": "mqar", "data.task.vocab_size": 64, "data.task.num_kv_pairs": 12,
            "data.eval_tokens": 768 * 48,
            "train.context": 48, "train.batch_size": 32, "train.steps": 2000, "train.warmup_steps": 50,
            "train.weight_decay": 0.0, "train.b2": 0.999,
            "train.log_every": 50, "train.eval_every": 500, "train.checkpoint_every": 500,
        },
        variants=variants,
        figures=["recall_vs_state"],
    )
