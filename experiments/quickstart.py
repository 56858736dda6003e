"""Quickstart sweep: three mixers x two state sizes x two FLOP budgets on the embedded corpus (12 runs).

Tiny models (d_model 64, 2 layers, context 128, batch 8) so the whole sweep takes about ten minutes on two
CPU cores (`scaling sweep experiments/quickstart.py --workers 2`). Each mixer is tried at a small and a large
decode state (elements per sequence at context 128, two layers):

  attention      KV cache 32,768; with a 32-token sliding window 8,192
  retention      p = 2 with heads of 16 (4 heads, D = 136): 18,496; heads of 32 (2 heads, D = 528): 69,696
  mamba          d_state 16: 5,056; d_state 64: 17,920 (4 heads of 32, conv state included)

The budgets are training FLOPs (3 x forward, scaling.accounting.flops_per_token at context 128); each run
gets the whole number of steps that comes closest (within 1% here), so runs of one budget cost the same:
about 170 to 370 steps at 3e11 and 570 to 1,240 at 1e12, ~20 to ~100 s a run with two workers on two cores.
"""

from scaling.sweep import Sweep

BUDGETS = [3.0e11, 1.0e12]


def get_sweep():
    return Sweep(
        name="quickstart",
        description="3 mixers x 2 state sizes x 2 FLOP budgets, tiny models on the stdlib corpus",
        base="configs/models/transformer_tiny.py",
        overrides={
            "model.d_model": 64, "model.n_layers": 2,
            "train.batch_size": 8, "train.context": 128, "train.lr": 3e-3, "train.warmup_steps": 10,
            "train.log_every": 10, "train.eval_every": 100, "train.checkpoint_every": 50,
            "data.eval_batches": 4,
            # windows shuffled over the whole corpus (0.3% padding): the packed stream shuffles rows within
            # a finite window, so at 8 x 128 tokens a step one large file (pydoc_data/topics.py, ~5,600 rows)
            # fills a long stretch of consecutive steps and the validation loss rises there
            "data.packing": False,
        },
        variants={
            "attention": {"model.name": "attention", "model.pattern": "A", "model.attention.n_heads": 4,
                          "model.attention.n_kv_heads": 4},
            "attention-w32": {"model.name": "attention-w32", "model.pattern": "A", "model.attention.n_heads": 4,
                              "model.attention.n_kv_heads": 4, "model.attention.window": 32},
            "retention-hd16": {"model.name": "retention-hd16", "model.pattern": "R", "model.retention.p": 2,
                               "model.retention.n_heads": 4, "model.retention.n_kv_heads": 4},
            "retention-hd32": {"model.name": "retention-hd32", "model.pattern": "R", "model.retention.p": 2,
                               "model.retention.n_heads": 2, "model.retention.n_kv_heads": 2},
            "mamba-d16": {"model.name": "mamba-d16", "model.pattern": "M", "model.mamba.d_state": 16,
                          "model.mamba.head_dim": 32},
            "mamba-d64": {"model.name": "mamba-d64", "model.pattern": "M", "model.mamba.d_state": 64,
                          "model.mamba.head_dim": 32},
        },
        budgets=BUDGETS,
    )
