"""Model preset hybrid_tiny: three Mamba-2 layers then one attention layer."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict({"model": {
        "name": "hybrid_tiny", "pattern": "MMMA", "d_model": 128, "n_layers": 4,
        "mamba": {"d_state": 32, "expand": 2, "head_dim": 32},
        "attention": {"n_heads": 4, "n_kv_heads": 4},
    }})
