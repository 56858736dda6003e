"""Quickstart: a small scaling ladder on the embedded corpus that ends in fitted laws and checked predictions.

Three mixer families, each as a ladder of model sizes x FLOP budgets (isoFLOP mode, Chinchilla approach 2/3):

  attention   2 heads (KV cache 2 * T * d_model per layer)
  retention   power retention p = 2, 2 heads (state kv_heads * (D * head_dim + D), D = C(head_dim + 1, 2))
  mamba       Mamba-2, d_state 16, heads of 16 (two heads at d_model 8 and 12), chunks of 32

Sizes are d_model 8 to 48 at 2 layers, context 128, batch 16; budgets 7e10, 1.4e11, 2.8e11 training FLOPs (3 x
forward, scaling.accounting.flops_per_token), with 3 sizes per budget around the family's optimum (GRIDS). These
tiny models are far from converged: their isoFLOP optimum lies at 50-300 tokens per non-embedding parameter
(Chinchilla's is ~20), moves up about one size per doubling of compute, and sits lower for retention than for
attention and Mamba-2. The grids follow it, as measured in a pilot ladder of d_model 12-32. On top of the ladder:

- state sizes at d_model 16 and 7e10 and 1.4e11: retention with 1 and 4 heads, Mamba-2 with d_state 4 and 64, so
  that state size varies apart from parameters and a state-size law L(N, S, D) can be fitted per family;
- seeds: the d_model-16 runs at 7e10 and 1.4e11 three times each (train.seed 0, 1, 2), the seed-to-seed spread of
  the loss with 4 degrees of freedom a family (the fits' intervals carry its uncertainty: at 2, from one point,
  the spread's own 95% range is 0.52-6.3 times its estimate; at 4, 0.60-2.9);
- a held-out budget, 5.6e11, at three sizes a family, one size up from its 2.8e11 grid where the optimum moves
  (attention d24-d48, retention d16-d32, Mamba-2 d24-d48): `scaling analyze --holdout` fits on the other budgets
  and predicts these nine runs, so each family's laws are judged on three runs they did not see, one of them
  (retention's d32, Mamba-2's d48) a size no fit saw either.

Every loss is the final loss on the fixed held-out evaluation set (data.eval_tokens = 65,536 tokens, the same
512 sequences for every run) with its standard error. 56 runs, 8-16 minutes with two workers on two cores.
"""

from scaling.sweep import Sweep

# Mamba-2's heads are d_inner / head_dim = 2 d_model / 16, except at d_model 8 and 12 (two heads of d_model)
SIZES = {f"d{d}": {"model.d_model": d, "model.mamba.head_dim": d if d < 16 else 16} for d in (8, 12, 16, 24, 32, 48)}
GRIDS = {  # family -> {budget: sizes}
    "attention": {7.0e10: ["d8", "d12", "d16"], 1.4e11: ["d8", "d12", "d16"], 2.8e11: ["d24", "d32", "d48"]},
    "retention": {7.0e10: ["d8", "d12", "d16"], 1.4e11: ["d8", "d12", "d16"], 2.8e11: ["d12", "d16", "d24"]},
    "mamba": {7.0e10: ["d8", "d12", "d16"], 1.4e11: ["d16", "d24", "d32"], 2.8e11: ["d16", "d24", "d32"]},
}
HOLDOUT_BUDGET = 5.6e11
HOLDOUT_SIZES = {"attention": ["d24", "d32", "d48"], "retention": ["d16", "d24", "d32"], "mamba": ["d24", "d32", "d48"]}
STATE_BUDGETS = [7.0e10, 1.4e11]
SEED_BUDGETS = [7.0e10, 1.4e11]  # every family's grid has d_model 16 at both


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
                                            "model.mamba.chunk_size": 32})


def _sizes(*labels: str) -> dict:
    return {k: SIZES[k] for k in labels}


def get_sweep():
    ladder = {"attention": _attention(), "retention": _retention(2), "mamba": _mamba(16)}
    every = ladder["attention"] | ladder["retention"] | ladder["mamba"]
    return Sweep(
        name="quickstart",
        description="attention, power retention and Mamba-2 ladders (3 sizes x 3 budgets + a held-out budget), "
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
            *({"variants": ladder[fam], "sizes": _sizes(*sizes), "budgets": [budget]}
              for fam, grid in GRIDS.items() for budget, sizes in grid.items()),
            *({"variants": ladder[fam], "sizes": _sizes(*sizes), "budgets": [HOLDOUT_BUDGET]}
              for fam, sizes in HOLDOUT_SIZES.items()),
            {"variants": _retention(1) | _retention(4) | _mamba(4) | _mamba(64), "sizes": _sizes("d16"),
             "budgets": STATE_BUDGETS},
            {"variants": every, "sizes": _sizes("d16"), "budgets": SEED_BUDGETS, "seeds": 3},
        ],
    )
