"""The dry-run table of an expanded sweep (`scaling sweep --dry-run`) and its wall-time estimate."""

from __future__ import annotations

from typing import Any

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
