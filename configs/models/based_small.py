"""Model preset based_small: Based, 8 heads of 64, Taylor features of 16, window 128."""

from ml_collections import ConfigDict

from scaling.mixers.chunks import fastest_chunk  # the measured fastest chunk on this backend


def get_config():
    return ConfigDict({"model": {
        "name": "based_small", "pattern": "B", "d_model": 512, "n_layers": 8,
        "based": {"n_heads": 8, "feature_dim": 16, "window": 128, "chunk_size": fastest_chunk("based")},
    }})
