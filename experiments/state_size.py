"""State-size study: parameters x state size x context for power retention and Mamba-2, attention as reference.

At each FLOP budget, each model (three depths at width 256) is trained at three contexts with the tokens per
step held at 65,536 (batch x context), and the mixer's state size is varied independently of the parameters:

  power retention  p = 1 (normalize = rmsnorm: odd p needs it), p = 2 with heads of 16 and of 32, p = 4 with
                   heads of 16; D = C(head_dim + p - 1, p) features per head, state kv_heads * (D * head_dim + D)
  Mamba-2          d_state 16, 32, 64, 128, 256 (heads of 64)
  attention        the reference: the KV cache grows with context (2 * T * kv_heads * head_dim per layer)

All runs of a budget spend the same training FLOPs (3 x forward, scaling.accounting.flops_per_token at the
run's context) within 5%. 10 variants x 3 depths x 3 contexts x 2 budgets = 180 runs: a GPU-cluster study
(`scaling sweep experiments/state_size.py --scale full --launcher ray`); `--dry-run` prints the table.

``scale="cpu"`` fits the state-size law L(N, S, D) of power retention and Mamba-2 on the embedded corpus in
minutes: d_model 16, 24 and 32 (2 layers, context 128, batch 16) x three state sizes per family (retention
p = 2 with 1, 2 and 4 heads; Mamba-2 d_state 4, 16 and 64) x budgets 1e11 and 2e11, plus the d_model-24 models
at 4e11 held out: `scaling analyze sweeps/state_size-cpu --holdout` fits on the first two budgets and predicts
those runs (42 runs, 17 minutes with two workers on two cores). The other four families (attention, GLA and Gated
DeltaNet with 1, 2, 4 heads, Based with feature_dim 4, 8, 16) train at d_model 24 and 2e11 beside them: all six
families' loss against state size in one cell (10 more runs).
"""

from scaling.sweep import Sweep


def _retention(p: int, head_dim: int) -> dict:
    heads = 256 // head_dim
    return {"model.pattern": "R", "model.retention.p": p, "model.retention.n_heads": heads,
            "model.retention.n_kv_heads": heads, "model.retention.normalize": "rmsnorm" if p % 2 else "sum"}


def _mamba(d_state: int) -> dict:
    return {"model.pattern": "M", "model.mamba.d_state": d_state, "model.mamba.head_dim": 64}


SCALES = ("cpu", "full")
CPU_BUDGETS = [1e11, 2e11]
CPU_HOLDOUT = 4e11


def _cpu_sweep():
    ret = {f"retention-h{h}": {"model.pattern": "R", "model.retention.p": 2, "model.retention.n_heads": h,
                               "model.retention.n_kv_heads": h} for h in (1, 2, 4)}
    mam = {f"mamba-d{n}": {"model.pattern": "M", "model.mamba.d_state": n, "model.mamba.head_dim": 16,
                           "model.mamba.chunk_size": 32}
           for n in (4, 16, 64)}
    variants = ret | mam
    # the other four families at d_model 24 and one budget, state sizes across the same range (matched-state
    # comparison; their runs join retention's and Mamba-2's of the same cell in loss_vs_state)
    others = {"attention": {"model.pattern": "A", "model.attention.n_heads": 2, "model.attention.n_kv_heads": 2}}
    others |= {f"gla-h{h}": {"model.pattern": "G", "model.gla.n_heads": h, "model.gla.chunk_size": 32,
                             "model.gla.conv": 4} for h in (1, 2, 4)}
    others |= {f"gated_delta-h{h}": {"model.pattern": "D", "model.gated_delta.n_heads": h,
                                     "model.gated_delta.chunk_size": 32} for h in (1, 2, 4)}
    others |= {f"based-f{f}": {"model.pattern": "B", "model.based.n_heads": 2, "model.based.feature_dim": f,
                               "model.based.window": 16, "model.based.chunk_size": 32, "model.based.conv": 4}
               for f in (4, 8, 16)}
    for label, over in (variants | others).items():
        over["model.name"] = label
    sizes = {f"d{d}": {"model.d_model": d} for d in (16, 24, 32)}
    return Sweep(
        name="state_size-cpu",
        description="state-size law of power retention and Mamba-2 at CPU scale, with a held-out budget",
        base="configs/models/transformer_tiny.py",
        overrides={"model.n_layers": 2, "train.batch_size": 16, "train.context": 128, "train.lr": 3e-3,
                   "train.warmup_steps": 10, "train.log_every": 10, "train.eval_every": 1000,
                   "train.checkpoint_every": 250, "data.eval_tokens": 65536, "data.packing": False},
        parts=[{"variants": variants, "sizes": sizes, "budgets": CPU_BUDGETS},
               {"variants": variants, "sizes": {"d24": sizes["d24"]}, "budgets": [CPU_HOLDOUT]},
               {"variants": others, "sizes": {"d24": sizes["d24"]}, "budgets": [CPU_BUDGETS[1]]}],
    )


def get_sweep(scale: str = "full"):
    if scale == "cpu":
        return _cpu_sweep()
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
