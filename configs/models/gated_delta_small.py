"""Model preset gated_delta_small: Gated DeltaNet, 8 heads of 64, conv 4 (state 8 x 64^2 a layer plus the conv)."""

from ml_collections import ConfigDict

from scaling.mixers.chunks import fastest_chunk  # the measured fastest chunk on this backend


def get_config():
    return ConfigDict({"model": {
        "name": "gated_delta_small", "pattern": "D", "d_model": 512, "n_layers": 8,
        "gated_delta": {"n_heads": 8, "chunk_size": fastest_chunk("gated_delta"), "conv": 4},
    }})
