"""The command line's tables of a sweep: the dry-run table of an expanded sweep (`scaling sweep --dry-run`) and
its wall-time estimate, the status table (`scaling status`) and the export of the runs (`--export`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from scaling import accounting
from scaling.sweep import spec as _spec
from scaling.sweep.spec import RunPlan, SpecError

__all__ = ["WALL_DEFAULTS", "estimate_wall_s", "table_rows", "wall_defaults"]

# Estimated wall time of a run in the dry-run table: training FLOPs / (MFU x peak FLOP/s), one run at a time on
# the whole device. "full": one H100 SXM's dense bf16 peak (989 TFLOP/s) at 40% MFU, a good large-model
# training run. "cpu": a 2-core x86 CPU at 100 GFLOP/s fp32 (2 cores x 2 AVX2 FMA units x 8 lanes x 2 FLOPs
# x ~1.5 GHz sustained) at 20% MFU, the rate the tiny models of the quickstart and the paper reproductions
# reach on this repository's 2-core machine (15-37 GFLOP/s with two workers). Override with --peak-flops/--mfu.
WALL_DEFAULTS: dict[str, tuple[float, float]] = {"full": (989e12, 0.4), "cpu": (1.0e11, 0.2)}


def wall_defaults(scale: str | None) -> tuple[float, float]:
    """(peak FLOP/s, MFU) the dry run assumes for a scale: "full" an H100, anything else this CPU."""
    return WALL_DEFAULTS["full" if scale == "full" else "cpu"]


def estimate_wall_s(flops: float, peak_flops: float, mfu: float) -> float:
    """Seconds to spend ``flops`` training FLOPs at ``mfu`` of ``peak_flops`` FLOP/s."""
    if not peak_flops > 0:
        raise SpecError(f"--peak-flops {peak_flops!r}: must be > 0 (FLOP/s of the device, e.g. 989e12 for an H100)")
    if not 0 < mfu <= 1:
        raise SpecError(f"--mfu {mfu!r}: must be in (0, 1], the fraction of peak a training step reaches")
    return float(flops) / (peak_flops * mfu)


def table_rows(plans: list[RunPlan], peak_flops: float | None = None, mfu: float | None = None) -> list[dict[str, Any]]:
    """The expanded run table (what ``scaling sweep --dry-run`` prints), one dict per run.

    With ``peak_flops`` and ``mfu`` each row has ``wall_s``, the estimated wall time (:func:`estimate_wall_s`).
    """
    rows = []
    for p in plans:
        rows.append({
            "run_id": p.run_id, "variant": p.variant, "size": p.size,
            "point": ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in p.point.items()),
            "context": p.context, "params": p.params, "non_embedding_params": p.non_embedding_params,
            "state_size": p.state_size, "tokens": p.tokens, "steps": p.steps, "flops": p.flops,
            "budget": p.budget,
            "budget_error": None if p.budget is None else p.flops / p.budget - 1,
            "wall_s": None if peak_flops is None or mfu is None else estimate_wall_s(p.flops, peak_flops, mfu),
        })
    return rows


def format_seconds(s: float) -> str:
    """A duration for tables: 42 s, 7.5 min, 3.2 h, 4.1 d."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if s >= 2 * size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.0f} s"


def print_plan(plans, console=None, *, peak_flops: float | None = None, mfu: float | None = None,
               device: str | None = None, memory: dict | None = None) -> None:
    """The expanded run table of ``scaling sweep --dry-run``; with ``peak_flops`` and ``mfu`` an estimated
    wall time per run (training FLOPs / (mfu x peak_flops)) and in total, ``device`` naming the assumption;
    with ``memory`` ({"devices", "device_memory", "mesh"}) each run's memory plan (scaling.sweep.memory_plan)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    from scaling.sweep.table import table_rows

    rows = table_rows(plans, peak_flops, mfu)
    if memory:
        from scaling.sweep import memory_plan

        memory_plan.memory_columns(rows, plans, memory["devices"], memory["device_memory"], memory["mesh"])
    timed = peak_flops is not None and mfu is not None
    table = Table(title=f"{len(rows)} runs", show_lines=False)
    has_size = any(r["size"] for r in rows)
    has_point = any(r["point"] for r in rows)
    cols = ["run id", "variant"] + (["size"] if has_size else []) + (["axes"] if has_point else []) + [
        "context", "params", "non-emb", "state", "tokens", "steps", "FLOPs", "budget", "vs budget"] + (
        ["est. wall"] if timed else []) + (list(_MEMORY_COLUMNS) if memory else [])
    for c in cols:
        table.add_column(c, justify="left" if c in ("run id", "variant", "size", "axes") else "right", no_wrap=True)
    for r in rows:
        cells = [r["run_id"], r["variant"]] + ([r["size"]] if has_size else []) + ([r["point"]] if has_point else [])
        cells += [f"{r['context']:,}", f"{r['params']:,}", f"{r['non_embedding_params']:,}", f"{r['state_size']:,}",
                  f"{r['tokens']:,}", f"{r['steps']:,}", f"{r['flops']:.3e}",
                  "-" if r["budget"] is None else f"{r['budget']:.2e}",
                  "-" if r["budget_error"] is None else f"{100 * r['budget_error']:+.2f}%"]
        cells += [format_seconds(r["wall_s"])] if timed else []
        cells += _memory_cells(r["memory_plan"]) if memory else []
        table.add_row(*cells)
    console.print(table)
    total = sum(r["flops"] for r in rows)
    console.print(f"total {total:.3e} training FLOPs (3 x forward), {sum(r['tokens'] for r in rows):,} tokens; "
                  "state: elements per sequence at the run's context. Nothing was run (--dry-run).")
    console.print(f"FLOPs: {accounting.CONVENTION_NOTE['full']}.")
    if timed:
        wall = sum(r["wall_s"] for r in rows)
        console.print(f"est. wall: training FLOPs / (MFU {mfu:g} x peak {peak_flops:.3g} FLOP/s"
                      f"{f', {device}' if device else ''}), one run at a time on the whole device; all runs "
                      f"{format_seconds(wall)} (--peak-flops and --mfu change the assumption).")
    if memory:
        from scaling.memory import HEADROOM

        console.print(f"memory: GiB per device of the train step on the smallest layout that fits "
                      f"{memory['device_memory'] / 2**30:.1f} GiB less {HEADROOM:.0%} headroom, searched over "
                      f"powers of two up to {memory['devices']} devices ("
                      f"{'mesh ' + str(memory['mesh']) if memory['mesh'] else 'every data x fsdp x tensor mesh'}"
                      ") and microbatches; p+opt: float32 parameters and AdamW moments, grads: gradients (+ the "
                      "accumulator) and the update, act: activations under the plan's remat (the run's, or block "
                      "where none fits on no layout), logits: float32 logits (scaling.memory, docs/memory.md).")


_MEMORY_COLUMNS = ("GiB/dev", "p+opt", "grads", "act", "logits", "devices", "mesh", "microb.", "remat")


def _memory_cells(plan: dict) -> list[str]:
    m = plan["memory"]
    if m is None:
        return ["-"] * 5 + [f"does not fit on {plan['devices']}", "-", "-", "-"]
    from scaling.sweep.memory_plan import gib, mesh_label

    fits = str(plan["devices"]) if plan["fits"] else f"does not fit on {plan['devices']}"
    return [gib(m["total"]), gib(m["params"] + m["optimizer"]), gib(m["gradients"]), gib(m["activations"]),
            gib(m["logits"]), fits, mesh_label(plan["mesh"]), str(plan["microbatches"]), plan["remat"]]


_STATUS_ORDER = {"running": 0, "pending": 1, "failed": 2, "diverged": 3, "done": 4}
_STATUS_STYLE = {"running": "cyan", "pending": "white", "failed": "red", "diverged": "magenta", "done": "green"}


def print_status(sweep_dir, console=None) -> dict[str, int]:
    """A rich table of a sweep's runs by status, with progress (steps done / total); returns the counts."""
    from rich.console import Console
    from rich.table import Table

    from scaling.sweep.store import open_existing, to_frame

    console = console or Console()
    with open_existing(sweep_dir) as store:
        df = to_frame(store)
        counts = store.counts()
        names = ", ".join(r["name"] for r in store.sweeps())
    table = Table(title=f"sweep {names} ({sweep_dir}): " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    right = ("budget", "progress", "attempts", "val loss", "train loss", "FLOPs", "params", "state")
    has_size = bool(len(df)) and bool(df["size"].fillna("").astype(bool).any())
    has_point = bool(len(df)) and bool((df["point"].fillna("{}") != "{}").any())
    optional = (["size"] if has_size else []) + (["axes"] if has_point else [])
    for c in ("status", "run id", "variant", *optional, *right, "job / error"):
        table.add_column(c, justify="right" if c in right else "left", no_wrap=c != "job / error")
    if len(df):
        df = df.assign(_order=df["status"].map(_STATUS_ORDER)).sort_values(["_order", "seq"])
    for _, r in df.iterrows():
        point = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in json.loads(r["point"] or "{}").items())
        frac = f"{int(r['steps'])}/{int(r['total_steps'])}" if r["total_steps"] else "-"
        note = r["job"] if r["status"] == "running" else (r["error"] or "").strip().splitlines()[-1:] or [""]
        note = note if isinstance(note, str) else note[0][:80]
        extra = ([r["size"] or ""] if has_size else []) + ([point] if has_point else [])
        table.add_row(
            f"[{_STATUS_STYLE[r['status']]}]{r['status']}", r["id"], r["variant"] or "", *extra,
            "-" if _isnan(r["budget"]) else f"{r['budget']:.2e}", frac, str(int(r["attempts"])),
            _num(r["final_val_loss"]), _num(r["final_train_loss"]),
            "-" if _isnan(r["flops"]) else f"{r['flops']:.3e}", f"{int(r['params']):,}",
            f"{int(r['state_size']):,}", note or "")
    console.print(table)
    return counts


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x) -> str:
    return "-" if _isnan(x) else f"{x:.4f}"


def check_export_format(fmt: str) -> None:
    """Raise a SpecError naming the problem unless ``fmt`` can be written here (parquet needs pyarrow)."""
    if fmt not in ("csv", "parquet"):
        raise _spec.SpecError(f"--export {fmt!r}: must be csv or parquet")
    if fmt == "parquet":
        import importlib.util

        if not (importlib.util.find_spec("pyarrow") or importlib.util.find_spec("fastparquet")):
            raise _spec.SpecError("--export parquet needs pyarrow, which is not installed: `pip install pyarrow`, "
                                  "or use --export csv")


def export(sweep_dir, fmt: str, path) -> int:
    """Write the flat run table (:func:`scaling.sweep.store.to_frame`) as csv or parquet; returns rows written."""
    from scaling.sweep.store import open_existing, to_frame

    check_export_format(fmt)
    with open_existing(sweep_dir) as store:
        df = to_frame(store)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return len(df)
