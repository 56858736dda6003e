"""Quickstart: a small scaling ladder on the embedded corpus that ends in fitted laws and checked predictions.

Three mixer families, each as a ladder of model sizes x FLOP budgets (isoFLOP mode, Chinchilla approach 2/3):

  attention   2 heads (KV cache 2 * T * d_model per layer)
  retention   power retention p = 2, 2 heads (state kv_heads * (D * head_dim + D), D = C(head_dim + 1, 2))
  mamba       Mamba-2, d_state 16, heads of 16, chunks of 32

Sizes are d_model 16, 24, 32, 48 at 2 layers, context 128, batch 16; budgets 7e10, 1.4e11, 2.8e11 training FLOPs
(3 x forward, scaling.accounting.flops_per_token). A size is trained at a budget when its tokens per
non-embedding parameter lie in [3, 200], so each budget has the sizes around its optimum (Chinchilla's is ~20).
On top of the ladder:

- state sizes at 1.4e11: retention with 1 and 4 heads, Mamba-2 with d_state 4 and 64, at d_model 16 and 32, so
  that state size varies apart from parameters and a state-size law L(N, S, D) can be fitted per family;
- seeds: the d_model-24 runs at 1.4e11 three times (train.seed 0, 1, 2), the seed-to-seed spread of the loss;
- a held-out budget, 5.6e11, at d_model 32 and 48 (the sizes around its optimum): `scaling analyze --holdout`
  fits on the other budgets and predicts these runs.

Every loss is the final loss on the fixed held-out evaluation set (data.eval_tokens = 65,536 tokens, the same
512 sequences for every run) with its standard error. 50 runs, about 12 minutes with two workers on two cores.
"""

from scaling.sweep import Sweep

SIZES = {f"d{d}": {"model.d_model": d} for d in (16, 24, 32, 48)}
LADDER_BUDGETS = [7.0e10, 1.4e11, 2.8e11]
HOLDOUT_BUDGET = 5.6e11
STATE_BUDGET = 1.4e11
RATIO_RANGE = (3.0, 200.0)  # tokens per non-embedding parameter


def _variant(label: str, **over) -> dict:
    return {label: {"model.name": label, **over}}


def _attention() -> dict:
    return _variant("attention", **{"model.pattern": "A", "model.attention.n_heads": 2,
                                    "model.attention.n_kv_heads": 2})


def _retention(heads: int) -> dict:
    return _variant(f"retention-h{heads}", **{"model.pattern": "R", "model.retention.p": 2,
                                              "model.retention.n_heads": heads, "model.retention.n_kv_heads": heads})


def _mamba(d_state: int) -> dict:
    # chunks of 32: 66 ms a step at d_model 32 against 98 ms with chunks of 64 (context 128, batch 16)
    return _variant(f"mamba-d{d_state}", **{"model.pattern": "M", "model.mamba.d_state": d_state,
                                            "model.mamba.head_dim": 16, "model.mamba.chunk_size": 32})


def get_sweep():
    ladder = _attention() | _retention(2) | _mamba(16)
    return Sweep(
        name="quickstart",
        description="attention, power retention and Mamba-2 ladders (4 sizes x 3 budgets + a held-out budget), "
                    "state sizes and seeds, tiny models on the stdlib corpus",
        base="configs/models/transformer_tiny.py",
        overrides={
            "model.n_layers": 2,
            "train.batch_size": 16, "train.context": 128, "train.lr": 3e-3, "train.warmup_steps": 10,
            "train.log_every": 10, "train.eval_every": 1000, "train.checkpoint_every": 250,
            "data.eval_tokens": 65536,
            # windows shuffled over the whole corpus (0.3% padding): the packed stream shuffles rows within
            # a finite window, so one large file (pydoc_data/topics.py) would fill a long stretch of steps
            "data.packing": False,
        },
        parts=[
            {"variants": ladder, "sizes": SIZES, "budgets": LADDER_BUDGETS, "ratio_range": RATIO_RANGE},
            {"variants": ladder, "sizes": {k: SIZES[k] for k in ("d32", "d48")}, "budgets": [HOLDOUT_BUDGET]},
            {"variants": _retention(1) | _retention(4) | _mamba(4) | _mamba(64),
             "sizes": {k: SIZES[k] for k in ("d16", "d32")}, "budgets": [STATE_BUDGET]},
            {"variants": ladder, "sizes": {"d24": SIZES["d24"]}, "budgets": [STATE_BUDGET], "seeds": 3},
        ],
    )
