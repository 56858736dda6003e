"""Which function runs a mixer's op: XLA (scaling.ops) or a Pallas kernel (pallas_kernels), looked up by name.

The ops do not import the kernels, and the kernels import only the ops' public helpers (validation, output
finishing), so neither layer depends on the other's internals; the model's modules call :func:`lookup` with
``model.kernel``. A kernel implements one form (the chunked one) without document segments: any other form, or a
packed row's ``segment_ids``, runs the XLA op, which computes the same function (tests/pallas, tests/ops).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from scaling.config import KERNELS as BACKENDS  # model.kernel's values

# op name -> "module:function" of each backend. Kernels are imported on first use (Pallas pulls in more of JAX).
XLA = {"power_retention": "scaling.ops.power_retention:power_retention", "ssd": "scaling.ops.ssd:ssd"}
PALLAS = {"power_retention": "pallas_kernels:power_retention", "ssd": "pallas_kernels:ssd"}
KERNEL_FORMS = ("chunked",)  # the forms the kernels implement


def _load(path: str) -> Callable:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def check_backend(backend: str, field: str = "backend") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{field} = {backend!r}: must be one of {', '.join(map(repr, BACKENDS))}")
    return backend


def uses_kernel(op: str, backend: str = "xla", form: str = "chunked", segments: bool = False) -> bool:
    """Whether ``op`` runs as a Pallas kernel: ``backend="pallas"``, a kernel for the op and the form, no segments."""
    check_backend(backend)
    if op not in XLA:
        raise ValueError(f"op = {op!r}: must be one of {', '.join(map(repr, XLA))}")
    return backend == "pallas" and op in PALLAS and form in KERNEL_FORMS and not segments


def lookup(op: str, backend: str = "xla", form: str = "chunked", segments: bool = False) -> Callable:
    """The function that computes ``op`` on ``backend`` for this ``form``: the Pallas kernel where
    :func:`uses_kernel`, else the XLA op (which also takes ``form`` and ``segment_ids``)."""
    return _load(PALLAS[op] if uses_kernel(op, backend, form, segments) else XLA[op])


def call(op: str, *args, backend: str = "xla", form: str = "chunked", segment_ids=None, **kwargs):
    """Run ``op`` as :func:`lookup` picks: the kernel gets the arguments, the XLA op also form and segment_ids."""
    if uses_kernel(op, backend, form, segment_ids is not None):
        return _load(PALLAS[op])(*args, **kwargs)
    return _load(XLA[op])(*args, form=form, segment_ids=segment_ids, **kwargs)


def power_retention(*args, backend: str = "xla", **kwargs):
    """scaling.ops.power_retention, or its kernel with ``backend="pallas"`` (chunked form, no segments)."""
    return call("power_retention", *args, backend=backend, **kwargs)


def ssd(*args, backend: str = "xla", **kwargs):
    """scaling.ops.ssd, or its kernel with ``backend="pallas"`` (chunked form, no segments)."""
    return call("ssd", *args, backend=backend, **kwargs)
