"""Model preset transformer_small: softmax attention, RoPE, 8 heads of 64."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict({"model": {
        "name": "transformer_small", "pattern": "A", "d_model": 512, "n_layers": 8,
        "attention": {"n_heads": 8, "n_kv_heads": 8},
    }})
