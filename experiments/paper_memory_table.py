"""The memory table of docs/memory.md: every full-scale paper study's distinct layouts on 80 GB devices.

    python experiments/paper_memory_table.py [--devices 64] [--device-memory 80GiB]

One row per distinct (variant, size, context, batch) of each study's `--scale full` sweep (its budgets share a
layout), from the same plan as `scaling sweep SPEC --scale full --dry-run --devices N --device-memory M`
(scaling.sweep.memory_plan): the fewest devices, then the fewest microbatches, on which the step fits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scaling.sweep import load_spec, memory_plan, table
from scaling.sweep.spec import expand

STUDIES = ("power_attention", "sympow", "context_size", "mamba_scaling", "metamorphosis")
GIB = 2**30


def rows(devices: int, device_memory: int):
    for study in STUDIES:
        plans = expand(load_spec(str(Path(__file__).parent / "papers" / f"{study}.py"), scale="full"),
                       check_data=False)
        runs = table.table_rows(plans)
        memory_plan.memory_columns(runs, plans, devices, device_memory, None)
        seen = set()
        for r, p in zip(runs, plans, strict=True):
            key = (r["variant"], r["size"], r["context"], p.batch_size)
            if key in seen:
                continue
            seen.add(key)
            plan = r["memory_plan"]
            mem = plan["memory"]
            mesh = " x ".join(f"{a} {n}" for a, n in plan["mesh"].items() if n > 1) or "1" if plan["fits"] else "-"
            yield (study, " ".join(x for x in (r["variant"], r["size"]) if x), f"{r['context']:,}", p.batch_size,
                   f"{r['params'] / 1e6:,.0f}M", f"{mem['total'] / GIB:.1f}",
                   f"{(mem['params'] + mem['optimizer']) / GIB:.1f}", f"{mem['gradients'] / GIB:.1f}",
                   f"{mem['activations'] / GIB:.1f}", f"{mem['logits'] / GIB:.1f}",
                   plan["devices"] if plan["fits"] else f"> {devices}", mesh, plan["microbatches"], plan["remat"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--device-memory", default="80GiB")
    a = ap.parse_args(argv)
    header = ("study", "run", "context", "batch", "params", "GiB/dev", "p+opt", "grads", "act", "logits", "devices",
              "mesh", "microbatches", "remat")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows(a.devices, memory_plan.parse_bytes(a.device_memory)):
        print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    main()
