"""Model preset power_retention_small: power retention p=2, 8 heads of 64 (D = 2080)."""

from ml_collections import ConfigDict

from scaling.mixers.chunks import fastest_chunk  # the measured fastest chunk on this backend


def get_config():
    return ConfigDict({"model": {
        "name": "power_retention_small", "pattern": "R", "d_model": 512, "n_layers": 8,
        "retention": {"n_heads": 8, "n_kv_heads": 8, "p": 2, "chunk_size": fastest_chunk("retention")},
    }})
