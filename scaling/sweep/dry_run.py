"""`scaling sweep SPEC --dry-run`: the expanded run table (scaling.sweep.table), with --device-memory the memory plan
of each run (scaling.sweep.memory_plan), with --json the table as JSON; nothing runs."""

from __future__ import annotations

import json

from scaling.sweep import load_spec, memory_plan, table
from scaling.sweep.spec import SpecError, expand

DEFAULT_DEVICES = 8


def main(args, overrides: dict) -> int:
    """Print the dry run of ``args`` (the parsed `scaling sweep` arguments); returns the exit code."""
    from rich.console import Console

    devices = DEFAULT_DEVICES if args.devices is None else args.devices
    if isinstance(devices, bool) or devices < 1 or devices & (devices - 1):
        raise SpecError(f"--devices {devices!r}: must be a power of two >= 1 (the most devices to plan for)")
    if args.device_memory is None and (args.devices is not None or args.mesh is not None):
        raise SpecError("--devices and --mesh plan memory: give --device-memory too, e.g. --device-memory 80GiB")
    device_memory = None if args.device_memory is None else memory_plan.parse_bytes(args.device_memory)
    mesh = memory_plan.parse_mesh(args.mesh)
    sweep = load_spec(args.spec, scale=args.scale)
    sweep.overrides = {**sweep.overrides, **overrides}
    peak, mfu = table.wall_defaults(args.scale)
    peak = peak if args.peak_flops is None else args.peak_flops
    mfu = mfu if args.mfu is None else args.mfu
    plans = expand(sweep, check_data=False)
    if args.json:
        rows = table.table_rows(plans, peak, mfu)
        if device_memory is not None:
            memory_plan.memory_columns(rows, plans, devices, device_memory, mesh)
        print(json.dumps(memory_plan.json_rows(rows, plans), indent=1, default=str))
        return 0
    device = None
    if args.peak_flops is None and args.mfu is None:
        device = "an H100 SXM's dense bf16 peak" if args.scale == "full" else "a 2-core CPU, fp32"
    console = Console(width=max(Console().width, 220 if device_memory is None else 320))
    memory = None if device_memory is None else {"devices": devices, "device_memory": device_memory, "mesh": mesh}
    table.print_plan(plans, console, peak_flops=peak, mfu=mfu, device=device, memory=memory)
    return 0
