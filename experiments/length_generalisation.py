"""Length generalisation: train at context T, evaluate at 1x, 2x, 4x and 8x T (a few minutes on two CPU cores).

Three mixers (attention with RoPE, power retention p = 2 heads of 16 with its short conv, Mamba-2 d_state 64;
d_model 64, 2 layers) each train twice:

  stdlib  the embedded corpus at T = 64 (400 steps of 16 x 64 tokens, the language-model optimizer defaults):
          validation loss per position up to 512
  mqar    multi-query associative recall at T = 32 (4 pairs, vocabulary 32; 1,500 steps of 32 x 32 tokens, AdamW
          b2 0.999 without weight decay as in experiments/mqar_state_size.py): task accuracy at 32, 64, 128 and
          256 tokens. The 4 pairs stay at the start; longer rows put the queries farther away (power-law
          placement over more slots)

Each family keeps the learning rate and init of experiments/mqar_state_size.py in both runs (attention and
retention lr 1e-3, Mamba-2 lr 3e-3 with init_std 0.1).

``train.eval_contexts`` makes each finished run write ``eval_contexts.json`` (loss, accuracy and loss tokens per
position at each context, scaling.train.evaluate_contexts); `scaling analyze sweeps/length_generalisation` draws
loss_vs_position (scaling/analysis/recall.py) from those files.
"""

from scaling.sweep import Sweep

ATTENTION_OPT = {"train.lr": 1e-3, "model.init_std": 0.02}  # as experiments/mqar_state_size.py
MAMBA_OPT = {"train.lr": 3e-3, "model.init_std": 0.1}


def get_sweep():
    variants = {
        "attention": {"model.pattern": "A", "model.attention.n_heads": 1, "model.attention.n_kv_heads": 1,
                      **ATTENTION_OPT},
        "retention-p2-hd16": {"model.pattern": "R", "model.retention.p": 2, "model.retention.n_heads": 4,
                              "model.retention.n_kv_heads": 4, "model.retention.chunk_size": 16,
                              "model.retention.conv": 4, **ATTENTION_OPT},
        "mamba-d64": {"model.pattern": "M", "model.mamba.d_state": 64, "model.mamba.head_dim": 16,
                      "model.mamba.chunk_size": 16, **MAMBA_OPT},
    }
    for label, over in variants.items():
        over["model.name"] = label
    return Sweep(
        name="length_generalisation",
        description="train at T, evaluate loss per position and MQAR accuracy at 1x, 2x, 4x, 8x T",
        base="configs/models/transformer_tiny.py",
        overrides={
            "model.d_model": 64, "model.n_layers": 2, "train.warmup_steps": 20,
            "train.log_every": 50, "train.eval_every": 500, "train.checkpoint_every": 500,
            "data.task.num_kv_pairs": 4, "data.task.vocab_size": 32,
        },
        variants=variants,
        axes={"data.source,train.context,train.batch_size,train.steps,train.eval_contexts,train.b2,"
              "train.weight_decay": [
                  ("stdlib", 64, 16, 400, (64, 128, 256, 512), 0.95, 0.1),
                  ("mqar", 32, 32, 1500, (32, 64, 128, 256), 0.999, 0.0),
              ]},
        figures=["loss_vs_position"],
    )
