"""GPT-2 small (124M) in statescale's block: 12 layers, d_model 768, 12 heads of 64, the GPT-2 vocabulary of 50,257
tokens, tied embeddings, SwiGLU MLP of width 2048 (three matrices of 768 x 2048 hold the parameters of GPT-2's
two of 768 x 3072). 123.6M parameters against GPT-2's 124.4M (RoPE here, learned positions there).

The weight/state FLOP table of "Scaling Context Requires Rethinking Attention" (Manifest AI 2025):

    scaling flops configs/papers/gpt2_124m.py --context 1024 4096 16384 65536 262144 1048576
    scaling flops configs/papers/gpt2_124m.py --set model.pattern=R --context 1024 ... 1048576   # power p = 2
"""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict({"model": {
        "name": "gpt2_124m", "pattern": "A", "d_model": 768, "n_layers": 12, "vocab_size": 50257, "d_ff": 2048,
        "attention": {"n_heads": 12, "n_kv_heads": 12}, "retention": {"n_heads": 12, "n_kv_heads": 12, "p": 2},
    }})
