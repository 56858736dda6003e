"""Model preset gated_delta_tiny: Gated DeltaNet, 4 heads of 32, conv 4 (state 4 x 32^2 a layer plus the conv)."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict({"model": {
        "name": "gated_delta_tiny", "pattern": "D", "d_model": 128, "n_layers": 4,
        "gated_delta": {"n_heads": 4, "chunk_size": 64, "conv": 4},
    }})
