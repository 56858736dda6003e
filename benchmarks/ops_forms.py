"""Chunked vs parallel forms of each mixer, and attention, on this machine: a thin wrapper over the harness.

    python benchmarks/ops_forms.py [--context 1024 4096 16384] [--backward] [--json out.json]

is ``scaling bench ops ...`` (scaling/bench.py; every flag of ``scaling bench`` applies). Times are medians
after a warm-up, measured side by side in one process, with achieved FLOP/s from scaling.accounting and the
log-log slope of time against T. See docs/performance.md.
"""

import sys

from scaling.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "ops", *sys.argv[1:]]))
