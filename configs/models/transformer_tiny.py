"""Model preset transformer_tiny: softmax attention, RoPE, 4 heads of 32."""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict({"model": {
        "name": "transformer_tiny", "pattern": "A", "d_model": 128, "n_layers": 4,
        "attention": {"n_heads": 4, "n_kv_heads": 4},
    }})
