"""Model preset hybrid_small: (Mamba-2 x3, attention) x2."""

from ml_collections import ConfigDict

from scaling.mixers.chunks import fastest_chunk  # the measured fastest chunk on this backend


def get_config():
    return ConfigDict({"model": {
        "name": "hybrid_small", "pattern": "MMMA", "d_model": 512, "n_layers": 8,
        "mamba": {"d_state": 64, "expand": 2, "head_dim": 64, "chunk_size": fastest_chunk("mamba")},
        "attention": {"n_heads": 8, "n_kv_heads": 8},
    }})
