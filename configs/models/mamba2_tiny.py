"""Model preset mamba2_tiny: Mamba-2, expand 2, heads of 32, d_state 32."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict({"model": {
        "name": "mamba2_tiny", "pattern": "M", "d_model": 128, "n_layers": 4,
        "mamba": {"d_state": 32, "expand": 2, "head_dim": 32, "n_groups": 1, "chunk_size": 64},
    }})
