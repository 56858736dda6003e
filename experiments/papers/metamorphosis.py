"""Paper reproduction: metamorphosis, Manifest AI's retraining of a transformer into power retention (PowerCoder;
Brumby-14B-Base, "retrained from Qwen3-14B-Base", October 2025), docs/papers/metamorphosis.md.

Three runs: a transformer trained from scratch (the *source*); the same model with every attention layer swapped
for power retention p = 2 with the same q/k/v/o weights and a gate started near 1, then all weights retrained
(``train.init_from = "variant:transformer"``: the sweep resolves it to the source's run and starts this run only
once the source is done, see scaling/convert.py); and that power-retention model trained from scratch. The
figure (``scaling analyze``) plots validation loss against retraining steps with the source's final loss: the
converted model gets within 5% of it in fewer steps than the scratch model.

``scale="cpu"``: d_model 64, 2 layers, 4 heads of 16 (power retention state D = C(17, 2) = 136 features a
head), context 128, batch 16, the stdlib corpus (bytes). Source 1500 steps at lr 3e-3; the converted model
retrains for 1500 steps at lr 1e-3; scratch trains 1500 steps at lr 3e-3, the source's own schedule.

``scale="full"``: a ~1.2B statescale transformer (d_model 2048, 24 layers, 16 heads of 128, GQA with 8 kv heads,
context 4096, 2^19 tokens a step) trained for 20,000 steps (10.5B tokens) on your tokenized data
(``scaling tokenize``, then ``--set data.path=/path/to/tokens.bin``), converted, and retrained for 3000 steps,
the count after which Brumby-14B-Base matched Qwen3-14B-Base's training loss; scratch trains the retention
model for the source's 20,000 steps. Brumby's own source was a pretrained Qwen3-14B (QK-norm, a 151k-token
vocabulary), which statescale's zoo does not load: the full run metamorphoses a zoo transformer instead.
"""

from scaling.sweep import Sweep

SCALES = ("cpu", "full")


def _variants(source_steps: int, retrain_steps: int, retrain_lr: float, retrain_warmup: int) -> dict[str, dict]:
    converted = {"model.pattern": "R", "model.name": "converted", "train.init_from": "variant:transformer",
                 "train.steps": retrain_steps, "train.lr": retrain_lr, "train.warmup_steps": retrain_warmup}
    return {
        "transformer": {"model.pattern": "A", "model.name": "transformer", "train.steps": source_steps},
        "converted": converted,
        # PowerCoder-style: the output moves from softmax attention to power retention over the first fifth of the
        # retraining (a linear schedule; the length is our assumption, PowerCoder's schedule is not reproduced)
        "blended": {**converted, "model.name": "blended", "train.blend_steps": retrain_steps // 5},
        "scratch": {"model.pattern": "R", "model.name": "retention-scratch", "train.steps": source_steps},
    }


def get_sweep(scale: str = "cpu") -> Sweep:
    if scale == "full":
        return Sweep(
            name="metamorphosis-full",
            description="metamorphosis at ~1.2B: a transformer, converted to power retention p=2 and retrained "
                        "3000 steps, against the same retention model from scratch",
            base="configs/models/transformer_small.py",
            overrides={
                # GPT-2's vocabulary as the other full specs (Brumby's is Qwen3's 151,936: a zoo model here)
                "model.d_model": 2048, "model.n_layers": 24, "model.vocab_size": 50257, "model.dtype": "bfloat16",
                "model.attention.n_heads": 16, "model.attention.n_kv_heads": 8,
                "model.retention.n_heads": 16, "model.retention.n_kv_heads": 8, "model.retention.p": 2,
                "model.retention.chunk_size": 128, "model.kernel": "pallas",
                "train.context": 4096, "train.batch_size": 128, "train.lr": 3e-4, "train.warmup_steps": 2000,
                "train.min_lr_ratio": 0.1, "train.weight_decay": 0.1, "train.b1": 0.9, "train.b2": 0.95,
                "train.grad_clip": 1.0, "train.log_every": 50, "train.eval_every": 250,
                "train.checkpoint_every": 1000, "data.source": "tokens", "data.token_dtype": "uint16",
                "data.eval_tokens": 2**22,
            },
            variants=_variants(20_000, 3_000, 1e-4, 200),
            figures=["metamorphosis"],
        )
    if scale != "cpu":
        raise ValueError(f"scale {scale!r}: must be one of {', '.join(SCALES)}")
    return Sweep(
        name="metamorphosis-cpu",
        description="metamorphosis on a CPU: a tiny transformer converted to power retention and retrained, against "
                    "the same retention model from scratch",
        base="configs/models/transformer_tiny.py",
        overrides={
            "model.d_model": 64, "model.n_layers": 2,
            "model.attention.n_heads": 4, "model.attention.n_kv_heads": 4,
            "model.retention.n_heads": 4, "model.retention.n_kv_heads": 4, "model.retention.p": 2,
            "train.context": 128, "train.batch_size": 16, "train.lr": 3e-3, "train.warmup_steps": 20,
            "train.log_every": 10, "train.eval_every": 50, "train.checkpoint_every": 250,
            "data.eval_tokens": 65536,
        },
        variants=_variants(1500, 1500, 1e-3, 20),
        seeds=3,  # every variant at train.seed 0, 1, 2; each converted run starts from its own seed's source
        figures=["metamorphosis"],
    )
