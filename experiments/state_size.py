"""State-size study: parameters x state size x context for power retention and Mamba-2, attention as reference.

At each FLOP budget, each model (three depths at width 256) is trained at three contexts with the tokens per
step held at 65,536 (batch x context), and the mixer's state size is varied independently of the parameters:

  power retention  p = 1 (normalize = rmsnorm: odd p needs it), p = 2 with heads of 16 and of 32, p = 4 with
                   heads of 16; D = C(head_dim + p - 1, p) features per head, state kv_heads * (D * head_dim + D)
  Mamba-2          d_state 16, 32, 64, 128, 256 (heads of 64)
  attention        the reference: the KV cache grows with context (2 * T * kv_heads * head_dim per layer)

All runs of a budget spend the same training FLOPs (3 x forward, scaling.accounting.flops_per_token at the
run's context) within 5%. 10 variants x 3 depths x 3 contexts x 2 budgets = 180 runs: a GPU-cluster study
(`scaling sweep experiments/state_size.py --launcher ray`); `--dry-run` prints the table.
"""

from scaling.sweep import Sweep


def _retention(p: int, head_dim: int) -> dict:
    heads = 256 // head_dim
    return {"model.pattern": "R", "model.retention.p": p, "model.retention.n_heads": heads,
            "model.retention.n_kv_heads": heads, "model.retention.normalize": "rmsnorm" if p % 2 else "sum"}


def _mamba(d_state: int) -> dict:
    return {"model.pattern": "M", "model.mamba.d_state": d_state, "model.mamba.head_dim": 64}


def get_sweep():
    variants = {"attention": {"model.pattern": "A", "model.attention.n_heads": 8, "model.attention.n_kv_heads": 8}}
    variants |= {f"retention-p{p}-hd{hd}": _retention(p, hd) for p, hd in ((1, 32), (2, 16), (2, 32), (4, 16))}
    variants |= {f"mamba-d{n}": _mamba(n) for n in (16, 32, 64, 128, 256)}
    for label, over in variants.items():
        over["model.name"] = label
    return Sweep(
        name="state_size",
        description="parameters x state size x context: power retention p=1,2,4 and Mamba-2 d_state 16..256 "
                    "against attention, FLOP-matched",
        base="configs/models/transformer_small.py",
        overrides={"model.d_model": 256, "train.lr": 2e-3, "train.warmup_steps": 100, "train.eval_every": 250,
                   "train.checkpoint_every": 250, "train.log_every": 25, "data.eval_tokens": 2**20},
        sizes={"L2": {"model.n_layers": 2}, "L4": {"model.n_layers": 4}, "L8": {"model.n_layers": 8}},
        variants=variants,
        axes={"train.context,train.batch_size": [(256, 256), (1024, 64), (4096, 16)]},
        budgets=[3e15, 1e16],
    )
