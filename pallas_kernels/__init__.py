"""Pallas kernels with the signatures of scaling.ops: the chunked forms of power retention and Mamba-2 SSD,
forward and backward (jax.custom_vjp), one shared kernel family (pallas_kernels/_chunked.py).

    from pallas_kernels import power_retention, ssd
    y = power_retention(q, k, v, log_g, p=2)            # == scaling.ops.power_retention(..., form="chunked")
    y, h = ssd(x, dt, A, B, C, D=D, return_state=True)   # == scaling.ops.ssd(..., form="chunked")

On CPU the kernels run in Pallas interpret mode automatically; on GPU they compile through Pallas' Triton
lowering, on TPU through Mosaic TPU. Chunk sizes, block shapes and the state-memory budget are chosen per
backend in pallas_kernels/_config.py. See docs/kernels.md.
"""

from pallas_kernels._config import Plan, make_plan
from pallas_kernels.power_retention import power_retention
from pallas_kernels.ssd import ssd

__all__ = ["Plan", "make_plan", "power_retention", "ssd"]
