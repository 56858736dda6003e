"""Decode memory against the number of generated tokens: constant for recurrent mixers, linear for attention.

For each tiny preset (random weights: memory does not depend on training) and each length, a fresh Python
process generates exactly N tokens (EOS banned) with ``scaling.inference.generate`` and reports the decode
state's bytes (the pytree it carries from token to token), the process's resident memory (RSS, from
/proc/self/statm) after 1k tokens and at the end, and its peak RSS (getrusage). Run:

    python benchmarks/generate_memory.py [--tokens 1024 16384] [--presets power_retention_tiny ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("power_retention_tiny", "mamba2_tiny", "transformer_tiny")


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(preset: str, tokens: int) -> dict:
    """Run in a child process: generate ``tokens`` tokens; returns the measurements."""
    from scaling import config
    from scaling.inference import generate
    from scaling.models import build

    cfg = config.load(ROOT / "configs/models" / f"{preset}.py")
    model = build(cfg.model)
    marks = {}
    count = [0]

    def on_text(_text):
        count[0] += 1  # one call per whole character; bytes are counted in stats
        if count[0] in (1024, tokens // 2):
            marks[count[0]] = _rss_mib()

    stats = {}
    t0 = time.perf_counter()
    generate(model, "def ", tokens, temperature=1.0, seed=0, stats=stats, stop_at_eos=False, on_text=on_text)
    wall = time.perf_counter() - t0
    return {"preset": preset, "tokens": stats["generated"], "state_bytes": stats["state_bytes"],
            "rss_marks_mib": marks, "rss_end_mib": _rss_mib(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 16384])
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]))))
        return 0
    rows = []
    print("| preset | generated tokens | decode state (bytes) | RSS after 1k tokens (MiB) | RSS at end (MiB) | "
          "peak RSS (MiB) | ms / token |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        for n in args.tokens:
            out = subprocess.run([sys.executable, __file__, "--child", preset, str(n)], capture_output=True,
                                 text=True, cwd=ROOT, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            first = r["rss_marks_mib"].get("1024")
            print(f"| {preset} | {r['tokens']:,} | {r['state_bytes']:,} | "
                  f"{'-' if first is None else f'{first:.0f}'} | {r['rss_end_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                  f"{1000 * r['wall_s'] / r['tokens']:.2f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
