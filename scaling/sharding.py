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


def batch_spec() -> P:
    """Batches ``[B, T]``: rows split over ``data`` and ``fsdp`` together."""
    return P(BATCH_AXES)


def batch_divisor(mesh: jax.sharding.Mesh) -> int:
    """How many ways the batch is split (``train.batch_size`` must be a multiple of it)."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
