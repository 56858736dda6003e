"""The memory plan of a sweep's runs (`scaling sweep --dry-run --device-memory 80GiB --devices N`) and the JSON run
table (`--json`).

:func:`fit` searches, for one run, the smallest device count (powers of two up to N), then the fewest microbatches,
on which the train step fits a device's memory less :data:`scaling.memory.HEADROOM` (10%), by
scaling.memory.train_memory. The meshes searched are every data x fsdp x tensor factorisation of the device count
(tensor at most 8, one node), or the one ``--mesh`` names (``{"fsdp": -1}``: -1 takes the remaining devices); the
microbatches are the powers of two that split the batch over data x fsdp. Among the fitting meshes of that size
and microbatch count the one with the least memory per device wins. The run's own train.remat is planned first;
a run with remat "none" that fits on no layout is planned again with remat "block" (each block recomputed in the
backward), and the plan says so.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from scaling import config as _config
from scaling import memory
from scaling.steps import lr_floor
from scaling.sweep.spec import RunPlan, SpecError

GIB = 2**30
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
MAX_TENSOR = 8


def parse_bytes(text: str, flag: str = "--device-memory") -> int:
    """'80GiB', '80GB', '16e9', '512 MiB' -> bytes; anything else raises one SpecError line."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS or float(match.group(1)) * _UNITS[unit] < 1:
        raise SpecError(f"{flag} {text!r}: must be a memory size like 80GiB, 80GB, 512MiB or 16e9 (bytes)")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_mesh(text: str | None) -> dict | None:
    """--mesh '{"fsdp": -1}' -> a checked train.mesh mapping (scaling.sharding's checks), or None."""
    if text is None:
        return None
    from scaling.sharding import MeshError, check_mesh

    try:
        given = json.loads(text)
    except json.JSONDecodeError:
        raise SpecError(f"--mesh {text!r}: must be a JSON mapping of axis sizes, e.g. '{{\"fsdp\": -1}}' or "
                        "'{\"data\": 2, \"fsdp\": -1, \"tensor\": 2}'") from None
    try:
        return check_mesh(given)
    except MeshError as e:
        raise SpecError(f"--mesh: {e}") from None


def _meshes(n: int, spec: dict | None):
    if spec is not None:
        from scaling.sharding import MeshError, mesh_shape

        try:
            yield mesh_shape(spec, n)
        except MeshError:
            return
        return
    for tensor in (t for t in (1, 2, 4, 8) if t <= min(n, MAX_TENSOR) and n % t == 0):
        rest = n // tensor
        for fsdp in (f for f in range(1, rest + 1) if rest % f == 0):
            yield {"data": rest // fsdp, "fsdp": fsdp, "tensor": tensor}


def fit(cfg, devices: int, device_memory: int, mesh: dict | None = None,
        headroom: float = memory.HEADROOM) -> dict[str, Any]:
    """The smallest layout of one run that fits (module docstring): {"fits", "devices", "mesh", "microbatches",
    "remat", "memory" (scaling.memory.TrainMemory.to_dict)}. The run's own train.remat first; if nothing fits
    on ``devices`` devices and it is "none", remat "block". When nothing fits, "fits" is False and the rest
    describe the least memory per device found on ``devices`` devices."""
    own = cfg.train.get("remat") or "none"
    best = None
    for remat in (own, "block") if own == "none" else (own,):
        plan, least = _search(cfg, devices, device_memory * (1 - headroom), mesh, remat)
        if plan is not None:
            return {"fits": True, "devices": math.prod(plan.mesh.values()), "mesh": plan.mesh,
                    "microbatches": plan.microbatches, "remat": remat, "memory": plan.to_dict()}
        best = least if best is None or (least is not None and least.total < best.total) else best
    if best is None:
        return {"fits": False, "devices": devices, "mesh": None, "microbatches": None, "remat": None, "memory": None}
    return {"fits": False, "devices": devices, "mesh": best.mesh, "microbatches": best.microbatches,
            "remat": best.remat, "memory": best.to_dict()}


def _search(cfg, devices: int, budget: float, mesh: dict | None, remat: str):
    """(the fitting plan on the fewest devices, then microbatches, then bytes, or None; the least-memory plan on
    the most devices searched)."""
    least = None
    n = 1
    while n <= devices:
        found = None
        for shape in _meshes(n, mesh):
            split = shape["data"] * shape["fsdp"]
            k = 1
            while k * split <= cfg.train.batch_size:
                if cfg.train.batch_size % (k * split) == 0:
                    plan = memory.train_memory(cfg, shape, microbatches=k, remat=remat)
                    if plan.total <= budget and (found is None or (k, plan.total) < (found.microbatches,
                                                                                        found.total)):
                        found = plan
                    if n == _last_power(devices) and (least is None or plan.total < least.total):
                        least = plan
                k *= 2
        if found is not None:
            return found, least
        n *= 2
    return None, least


def _last_power(n: int) -> int:
    return 2 ** int(math.log2(n))


def mesh_label(mesh: dict | None) -> str:
    """{"data": 2, "fsdp": 4, "tensor": 1} -> 'data 2 x fsdp 4'; one device -> '1'."""
    if not mesh:
        return "-"
    parts = [f"{k} {v}" for k, v in mesh.items() if v > 1]
    return " x ".join(parts) or "1"


def memory_columns(rows: list[dict], plans: list[RunPlan], devices: int, device_memory: int,
                   mesh: dict | None) -> None:
    """Add each row's memory plan (:func:`fit`) under "memory_plan"."""
    for row, p in zip(rows, plans, strict=True):
        row["memory_plan"] = fit(p.cfg, devices, device_memory, mesh)


def json_rows(rows: list[dict], plans: list[RunPlan]) -> list[dict]:
    """The dry-run table as JSON-ready dicts: each row plus the resolved fields of its config that matter."""
    out = []
    for row, p in zip(rows, plans, strict=True):
        m, t = p.cfg.model, p.cfg.train
        mixers = {key: m[key].to_dict() for key, letter in (("attention", "A"), ("retention", "R"), ("mamba", "M"))
                  if letter in _config.layer_pattern(m)}
        out.append({
            **row,
            "model": {"name": m.name, "pattern": m.pattern, "n_layers": m.n_layers, "d_model": m.d_model,
                      "d_ff": _config.d_ff(m), "vocab_size": m.vocab_size, "tie_embeddings": m.tie_embeddings,
                      "dtype": m.dtype, "scan_layers": bool(m.get("scan_layers")), "mlp": bool(m.get("mlp", True)),
                      "embed_norm": bool(m.get("embed_norm")), **mixers},
            "batch_size": p.batch_size, "flops_per_token": p.flops_per_token,
            "schedule": {"kind": f"warmup_{t.get('schedule', 'cosine')}", "lr": t.lr, "warmup_steps": t.warmup_steps,
                         "min_lr": None if t.get("schedule", "cosine") == "constant" else lr_floor(t),
                         "total_steps": p.steps, "weight_decay": t.weight_decay, "b1": t.b1, "b2": t.b2,
                         "grad_clip": t.grad_clip},
            "train": {"microbatches": t.get("microbatches") or 1, "remat": t.get("remat") or "none",
                      "mesh": None if t.mesh is None else dict(t.mesh), "seed": t.seed},
            "data": {"source": p.cfg.data.get("source"), "path": p.cfg.data.get("path")},
            "memory_one_device": memory.train_memory(p.cfg, {}).to_dict() if _one_device_ok(p) else None,
        })
    return out


def _one_device_ok(p: RunPlan) -> bool:
    return p.cfg.train.batch_size % int(p.cfg.train.get("microbatches") or 1) == 0


def gib(x: float) -> str:
    return f"{x / GIB:.1f}"
