"""Model preset mamba2_small: Mamba-2, expand 2, heads of 64, d_state 64."""

from ml_collections import ConfigDict

from scaling.mixers.chunks import fastest_chunk  # the measured fastest chunk on this backend


def get_config():
    return ConfigDict({"model": {
        "name": "mamba2_small", "pattern": "M", "d_model": 512, "n_layers": 8,
        "mamba": {"d_state": 64, "expand": 2, "head_dim": 64, "n_groups": 1, "chunk_size": fastest_chunk("mamba")},
    }})
