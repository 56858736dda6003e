"""MQAR recall vs state size: attention, power retention (p = 1, 2, 4; several head dims) and Mamba-2 (several
d_state), tiny models on multi-query associative recall (scaling/data/synthetic.py), ten runs
(`scaling sweep experiments/mqar_state_size.py`, two local workers). Measured: 28 min 48 s on two CPU cores, of
which the p = 4 run took 21 min; without it the rest take 1.5 to 6 min each.

At these settings (3,000 steps) no model learns to recall yet: attention and retention stop at the 0.34 that
elimination gives (each key is asked once and earlier answers are visible: pick evenly among the values not yet
answered), Mamba-2 near chance. See README "Recall benchmarks".

Task: context 32, 8 key-value pairs over a vocabulary of 64 (keys from 1..31, values from 32..63), every key
asked once after the pairs, so a row holds 8 answers; loss and accuracy only on those answers. Every model has
d_model 64 and 2 layers and trains for the same steps; the held-out stream (data.task.eval_seed) gives
task_accuracy. State sizes (elements per sequence at context 32, both layers, scaling.accounting.state_size):

  attention        4 heads of 16: the KV cache, 2 * 32 * 64 * 2 = 8,192
  power retention  p = 1 heads of 8 / 16 (1,152 / 2,176), p = 2 heads of 8 / 16 / 32 (5,184 / 18,496 / 69,696),
                   p = 4 heads of 8 (47,520)
  Mamba-2          heads of 16, d_state 4 / 16 / 64 (1,840 / 5,056 / 17,920 with the conv state)

`scaling analyze sweeps/mqar_state_size` draws recall_vs_state (scaling/analysis/recall.py): accuracy against
state size, one line per family, and the table of the points.
"""

from scaling.sweep import Sweep

D_MODEL = 64


def _retention(p: int, head_dim: int) -> dict:
    heads = D_MODEL // head_dim
    return {"model.pattern": "R", "model.retention.p": p, "model.retention.n_heads": heads,
            "model.retention.n_kv_heads": heads, "model.retention.chunk_size": 16,
            "model.retention.normalize": "rmsnorm" if p % 2 else "sum"}


def _mamba(d_state: int) -> dict:
    return {"model.pattern": "M", "model.mamba.d_state": d_state, "model.mamba.head_dim": 16,
            "model.mamba.chunk_size": 16}


def get_sweep():
    variants = {"attention": {"model.pattern": "A", "model.attention.n_heads": 4, "model.attention.n_kv_heads": 4}}
    variants |= {f"retention-p{p}-hd{hd}": _retention(p, hd)
                 for p, hd in ((1, 8), (1, 16), (2, 8), (2, 16), (2, 32), (4, 8))}
    variants |= {f"mamba-d{n}": _mamba(n) for n in (4, 16, 64)}
    for label, over in variants.items():
        over["model.name"] = label
    return Sweep(
        name="mqar_state_size",
        description="MQAR accuracy vs state size: attention, power retention p=1,2,4, Mamba-2 d_state 4..64",
        base="configs/models/transformer_tiny.py",
        overrides={
            "model.d_model": D_MODEL, "model.n_layers": 2,
            "data.source": "mqar", "data.task.vocab_size": 64, "data.task.num_kv_pairs": 8, "data.eval_batches": 8,
            "train.context": 32, "train.batch_size": 32, "train.steps": 3000, "train.lr": 3e-3,
            "train.warmup_steps": 50, "train.log_every": 50, "train.eval_every": 500, "train.checkpoint_every": 500,
        },
        variants=variants,
        figures=["recall_vs_state"],
    )
