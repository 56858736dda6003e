"""Model preset based_tiny: Based, 4 heads of 32, Taylor features of 16, window 64."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict({"model": {
        "name": "based_tiny", "pattern": "B", "d_model": 128, "n_layers": 4,
        "based": {"n_heads": 4, "feature_dim": 16, "window": 64, "chunk_size": 64},
    }})
