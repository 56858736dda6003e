"""The device mesh and how the train state and batches are laid out on it (``train.mesh``).

Mesh
----
``train.mesh`` names the size of each axis of :data:`MESH_AXES`, e.g. ``{"data": 2, "fsdp": 2, "tensor": 2}``;
``-1`` (at most one axis) takes the devices the others leave; axes not named have size 1. None (the default) is
``{"data": -1}``: every device holds a replica of the parameters and a slice of the batch.

Logical axes and rules
----------------------
Every parameter gets logical axis names from its place in the model (:func:`logical_axes`), and :data:`RULES` maps
them to mesh axes:

=================  ==============================  =========================================================
parameter          logical axes                    on the mesh
=================  ==============================  =========================================================
embedding [V, d]   (vocab, embed)                  (tensor, fsdp)
in-projection      (embed, hidden): q, k, v, the   (fsdp, tensor): FSDP over the model width, the heads and
[d, n]             MLP's up and gate, Mamba-2's    the MLP's hidden width over ``tensor``
                   in_proj, retention's gate
out-projection     (hidden, embed): o, down,       (tensor, fsdp)
[n, d]             out_proj
anything else      replicated                      norms' gains, biases, per-head scalars, conv taps
=================  ==============================  =========================================================

A mesh axis is used for a dimension only if it divides it (else that dimension is replicated), so every model
runs on every mesh; the optimizer state of a parameter (AdamW's two moments) is laid out like it. The batch is
split over ``data`` and ``fsdp`` together (:func:`batch_spec`). XLA's partitioner (GSPMD) inserts the
collectives, so the sharded program computes what the one-device program computes (tests hold the losses of
data=8, fsdp=8 and data=2 x fsdp=2 x tensor=2 to one device's within 1e-5 for every mixer).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over these together
RULES = {"vocab": "tensor", "embed": "fsdp", "hidden": "tensor"}
OUT_PROJECTIONS = frozenset({"o", "down", "out_proj"})


class MeshError(ValueError):
    """A bad ``train.mesh`` (one line naming the field and what it accepts)."""


def _given(spec: Any) -> dict[str, int]:
    """``train.mesh`` as a dict of checked axis sizes (device-free checks: names, sizes, at most one -1)."""
    if spec is None:
        return {"data": -1}
    if not isinstance(spec, Mapping) and not hasattr(spec, "to_dict"):
        raise MeshError(f"train.mesh = {spec!r}: must be None or a mapping of axis sizes, e.g. "
                        "{'data': -1, 'fsdp': 2, 'tensor': 1}")
    given = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
    if not given:
        raise MeshError("train.mesh = {}: name at least one axis (or None: data parallel over every device)")
    unknown = sorted(set(given) - set(MESH_AXES))
    if unknown:
        raise MeshError(f"train.mesh: unknown axis {unknown[0]!r}; axes are {', '.join(MESH_AXES)}")
    for name, size in given.items():
        if isinstance(size, bool) or not isinstance(size, int) or not (size >= 1 or size == -1):
            raise MeshError(f"train.mesh.{name} = {size!r}: must be an integer >= 1, or -1 for the remaining devices")
    fill = [k for k, v in given.items() if v == -1]
    if len(fill) > 1:
        raise MeshError(f"train.mesh: -1 for {', '.join(fill)}; at most one axis takes the remaining devices")
    return given


check_mesh = _given  # config validation: the device-free checks


def mesh_shape(spec: Mapping[str, int] | None, n_devices: int) -> dict[str, int]:
    """``train.mesh`` resolved for ``n_devices``: every axis of :data:`MESH_AXES` with its size (product = devices)."""
    given = _given(spec)
    fixed = int(np.prod([v for v in given.values() if v != -1]))
    fill = [k for k, v in given.items() if v == -1]
    if fill:
        if n_devices % fixed:
            raise MeshError(f"train.mesh = {given}: the fixed axes ({fixed} devices) do not divide the {n_devices} "
                            "devices")
        given[fill[0]] = n_devices // fixed
    shape = {axis: int(given.get(axis, 1)) for axis in MESH_AXES}
    total = int(np.prod(list(shape.values())))
    if total != n_devices:
        raise MeshError(f"train.mesh = {given}: {total} devices, but there are {n_devices}; the sizes must multiply "
                        "to the device count (or use -1 for one axis)")
    return shape


def make_mesh(spec: Mapping[str, int] | None, devices=None) -> jax.sharding.Mesh:
    """The mesh of ``train.mesh`` over ``devices`` (default: every device), axes :data:`MESH_AXES`."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(spec, len(devices))
    return jax.make_mesh(tuple(shape.values()), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _names(path) -> list[str]:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
    return out


def logical_axes(path, ndim: int) -> tuple[str | None, ...]:
    """Logical axis names of the parameter at ``path`` (a pytree key path, or a list of names) with ``ndim`` dims."""
    names = [n for n in (_names(path) if path and not isinstance(path[0], str) else list(path)) if n != "value"]
    leaf = names[-1] if names else ""
    owner = names[-2] if len(names) > 1 else ""
    if leaf == "embedding" and ndim == 2:
        return ("vocab", "embed")
    if leaf == "kernel" and ndim == 2:
        return ("hidden", "embed") if owner in OUT_PROJECTIONS else ("embed", "hidden")
    return (None,) * ndim


def spec_for(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh_sizes: Mapping[str, int]) -> P:
    """The PartitionSpec of a dimension list under :data:`RULES`: a mesh axis only where it divides the size."""
    out = []
    for name, size in zip(axes, shape, strict=True):
        axis = RULES.get(name) if name else None
        out.append(axis if axis and mesh_sizes.get(axis, 1) > 1 and size % mesh_sizes[axis] == 0 else None)
    return P(*out)


def state_shardings(tree, mesh: jax.sharding.Mesh):
    """NamedShardings for every leaf of a train state (parameters, optimizer state): each array laid out by the
    rules of the parameter it belongs to (its key path ends with the parameter's), scalars replicated."""
    sizes = dict(mesh.shape)

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        if not shape:
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, spec_for(logical_axes(path, len(shape)), shape, sizes))

    return jax.tree_util.tree_map_with_path(one, tree)


# The decode state (scaling.models.lm.LanguageModel.init_state): every leaf leads with the batch; the heads of a KV
# cache, a retention or SSM state and the channels of a short-conv state follow the parameters' rules.
DECODE_AXES = {
    "k": ("batch", None, "heads", None), "v": ("batch", None, "heads", None),  # KV cache [B, T, h_kv, d]
    "S": ("batch", "heads", None, None), "z": ("batch", "heads", None),  # retention [B, h, D, d], [B, h, D]
    "ssm": ("batch", "heads", None, None),  # Mamba-2 [B, h, p, n]
    "conv": ("batch", None, "hidden"),  # short conv [B, k - 1, channels]
}
DECODE_RULES = {"batch": BATCH_AXES, "heads": "tensor", "hidden": "tensor"}


def decode_state_shardings(state, mesh: jax.sharding.Mesh):
    """NamedShardings for a decode state: the batch over ``data`` x ``fsdp``, heads and conv channels over
    ``tensor``, each only where the mesh axes divide the dimension (else replicated); scalars replicated."""
    sizes = dict(mesh.shape)

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        names = _names(path)
        axes = DECODE_AXES.get(names[-1] if names else "", (None,) * len(shape))
        if len(axes) != len(shape):
            axes = ("batch",) + (None,) * (len(shape) - 1) if shape else ()
        spec = []
        for name, size in zip(axes, shape, strict=True):
            mesh_axes = DECODE_RULES.get(name) if name else None
            ways = int(np.prod([sizes.get(a, 1) for a in np.atleast_1d(mesh_axes)])) if mesh_axes else 1
            spec.append(mesh_axes if mesh_axes and ways > 1 and size % ways == 0 else None)
        return NamedSharding(mesh, P(*spec))

    return jax.tree_util.tree_map_with_path(one, state)


def batch_spec() -> P:
    """Batches ``[B, T]``: rows split over ``data`` and ``fsdp`` together."""
    return P(BATCH_AXES)


def batch_divisor(mesh: jax.sharding.Mesh) -> int:
    """How many ways the batch is split (``train.batch_size`` must be a multiple of it)."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


# ----------------------------------------------------------------------------------------------------
# Hosts: jax.distributed


SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID")  # what jax's Slurm detection reads (with the node list)


def hosts_from(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               environ: Mapping[str, str] | None = None) -> dict | None:
    """How this process joins a multi-host job, or None for a job of one process.

    Each of the three comes from its flag (``scaling train --coordinator --num-processes --process-id``), else
    from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``. Under Slurm with more than one
    task (``SLURM_NTASKS``), what is still unset is left to jax's Slurm detection (coordinator: the first node of
    the step; process count and id: ``SLURM_NTASKS`` / ``SLURM_PROCID``). Otherwise all three must be given.
    Returns ``{"coordinator_address", "num_processes", "process_id", "source"}`` (unset values None); raises
    MeshError (one line naming the flag) on a bad value.
    """
    env = os.environ if environ is None else environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    num = _int_flag("--num-processes", num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES"))
    pid = _int_flag("--process-id", process_id if process_id is not None else env.get("JAX_PROCESS_ID"))
    slurm = all(k in env for k in SLURM_VARS) and (_int_flag("SLURM_NTASKS", env["SLURM_NTASKS"]) or 1) > 1
    if coordinator is None and num is None and pid is None and not slurm:
        return None
    if coordinator is not None and (":" not in coordinator or not coordinator.rsplit(":", 1)[1].isdigit()):
        raise MeshError(f"--coordinator = {coordinator!r}: must be host:port of process 0, e.g. node0:1234")
    if num is not None and num < 1:
        raise MeshError(f"--num-processes = {num}: must be an integer >= 1")
    if not slurm and None in (coordinator, num, pid):
        missing = [f for f, v in (("--coordinator", coordinator), ("--num-processes", num), ("--process-id", pid))
                   if v is None]
        raise MeshError(f"multi-host: {', '.join(missing)} not set; give all three (flags, or JAX_COORDINATOR_ADDRESS, "
                        "JAX_NUM_PROCESSES, JAX_PROCESS_ID), or run under Slurm with several tasks")
    if pid is not None and num is not None and not 0 <= pid < num:
        raise MeshError(f"--process-id = {pid}: must be in [0, {num}) for --num-processes = {num}")
    return {"coordinator_address": coordinator, "num_processes": num, "process_id": pid,
            "source": "slurm" if slurm else "flags or environment"}


def _int_flag(name: str, value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MeshError(f"{name} = {value!r}: must be an integer") from None


def initialize_hosts(hosts: dict | None = None) -> bool:
    """Join the multi-host job ``hosts`` describes (:func:`hosts_from`; default: from the environment) with
    ``jax.distributed.initialize``, before any computation. CPU processes talk over gloo. Returns whether this
    is a multi-host job. Calling it again, or in a job already joined, does nothing."""
    if jax.distributed.is_initialized():
        return True
    hosts = hosts_from() if hosts is None else hosts
    if hosts is None or hosts.get("num_processes") == 1:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; GPUs and TPUs use their own
    jax.distributed.initialize(**{k: v for k, v in hosts.items() if k != "source"})
    return True


def is_primary() -> bool:
    """Process 0: the one that writes the run directory's files (every process writes its checkpoint shards)."""
    return jax.process_index() == 0
