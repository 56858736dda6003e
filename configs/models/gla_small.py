"""Model preset gla_small: GLA, 8 heads of 64 (state 8 x 64^2 = 32,768 a layer)."""

from ml_collections import ConfigDict

from scaling.mixers.chunks import fastest_chunk  # the measured fastest chunk on this backend


def get_config():
    return ConfigDict({"model": {
        "name": "gla_small", "pattern": "G", "d_model": 512, "n_layers": 8,
        "gla": {"n_heads": 8, "chunk_size": fastest_chunk("gla")},
    }})
