"""Model preset gla_tiny: GLA, 4 heads of 32 (state 4 x 32^2 = 4,096 a layer)."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict({"model": {
        "name": "gla_tiny", "pattern": "G", "d_model": 128, "n_layers": 4,
        "gla": {"n_heads": 4, "chunk_size": 64},
    }})
