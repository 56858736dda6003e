"""Training throughput (tokens/s) and MFU of each model preset: a thin wrapper over the harness.

    python benchmarks/train_throughput.py [--presets transformer_small ...] [--train-batch 8] [--json out.json]

is ``scaling bench train ...`` (scaling/bench.py): scaling.train's real train step (AdamW, clipping) on
synthetic tokens, the median step time after a warm-up, achieved FLOP/s from the accounting (3 x forward)
and MFU against the GEMM peak measured in the same process. See docs/performance.md.
"""

import sys

from scaling.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
