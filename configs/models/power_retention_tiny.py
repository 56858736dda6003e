"""Model preset power_retention_tiny: power retention p=2, 4 heads of 32 (D = 528)."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict({"model": {
        "name": "power_retention_tiny", "pattern": "R", "d_model": 128, "n_layers": 4,
        "retention": {"n_heads": 4, "n_kv_heads": 4, "p": 2, "chunk_size": 64},
    }})
