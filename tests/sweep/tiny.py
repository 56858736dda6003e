"""A tiny sweep spec for the tests: 1-layer d_model 32 attention, context 32, batch 4, a few steps per run."""

from pathlib import Path

ROOT = Path(__file__).parents[2]
BASE = str(ROOT / "configs/models/transformer_tiny.py")

OVERRIDES = {
    "model.d_model": 32, "model.n_layers": 1, "model.attention.n_heads": 2, "model.attention.n_kv_heads": 2,
    "model.retention.n_heads": 2, "model.retention.n_kv_heads": 2, "model.retention.chunk_size": 16,
    "model.mamba.head_dim": 16, "model.mamba.chunk_size": 16,
    "train.batch_size": 4, "train.context": 32, "train.warmup_steps": 2, "train.log_every": 1,
    "train.eval_every": 1000, "train.checkpoint_every": 10, "data.eval_tokens": 256,
}


def step_flops() -> float:
    """Training FLOPs of one step of the tiny attention model (4 x 32 tokens x 3 x forward FLOPs/token):
    a budget of k * step_flops() is k steps."""
    from scaling import accounting, config

    cfg = config.load(BASE, list(OVERRIDES.items()))
    return 3.0 * 4 * 32 * accounting.flops_per_token(cfg, 32)


def spec_dict(name="tiny", steps=(10, 20), **fields) -> dict:
    """A spec of the tiny model whose budgets are ``steps`` whole steps."""
    f = step_flops()
    d = {"name": name, "base": BASE, "overrides": dict(OVERRIDES), "budgets": [k * f for k in steps]}
    d.update(fields)
    return d


def write_spec(path: Path, **fields) -> Path:
    """Write a sweep file whose get_sweep() returns spec_dict(**fields); returns its path."""
    path.write_text(f"def get_sweep():\n    return {spec_dict(**fields)!r}\n")
    return path
