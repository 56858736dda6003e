"""The one place where chunk size, block shapes, padding, segment length and compiler options are chosen
per backend. Everything else in pallas_kernels reads a ``Plan`` made here.

Backends (``jax.default_backend()`` unless a caller forces one):

* ``"cpu"``: no Pallas lowering exists, so kernels run with ``interpret=True`` (the kernel body is
  evaluated as ordinary JAX ops over the grid). No padding rules apply; chunks follow the caller.
* ``"gpu"``: Pallas' Triton lowering, selected explicitly with ``pallas.triton.CompilerParams`` (JAX 0.10's
  default GPU lowering is Mosaic GPU; see docs/kernels.md for why Triton). Triton tensors must have
  power-of-two sizes and ``tl.dot`` needs every matmul dimension >= 16, so the chunk, head dims, value
  width and feature tile are padded to powers of two >= 16.
* ``"tpu"``: Mosaic TPU. The last two dims of every block must be multiples of (8, 128) or span the whole
  array, so the chunk and feature tile are multiples of 128 (they sit on lanes in the [c, c] score tiles,
  the [1, c] log-gate rows and the [c, D_tile] feature tiles) and the value width is padded to 128 lanes.

Units: sizes are element counts unless the name ends in ``_bytes``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
from jax import lax

from scaling.fields import env_positive

__all__ = ["BACKENDS", "Plan", "default_state_budget_bytes", "make_plan", "platform"]

BACKENDS = ("cpu", "gpu", "tpu")
_MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class _Rules:
    chunk: int  # default tokens per chunk when the caller passes chunk_size=None
    pow2: bool  # Triton: every loaded tensor has a power-of-two size
    min_dim: int  # smallest matmul dimension (tl.dot needs 16)
    chunk_multiple: int  # chunks are rounded up to a multiple of this (TPU lanes)
    value_multiple: int  # the value width (e + 1 for retention) is padded to a multiple of this
    block_d: int  # default feature rows per tile of the state
    state_budget_bytes: int  # default cap on per-chunk states held at once (see Plan.chunks_per_segment)


_RULES = {
    "cpu": _Rules(chunk=64, pow2=False, min_dim=1, chunk_multiple=1, value_multiple=1, block_d=128,
                  state_budget_bytes=256 * _MiB),
    "gpu": _Rules(chunk=64, pow2=True, min_dim=16, chunk_multiple=16, value_multiple=16, block_d=64,
                  state_budget_bytes=1024 * _MiB),
    "tpu": _Rules(chunk=128, pow2=False, min_dim=1, chunk_multiple=128, value_multiple=128, block_d=256,
                  state_budget_bytes=1024 * _MiB),
}
# TPU: VMEM per core is 16 MiB (v4), 64 MiB (v5p, v7x) or 128 MiB (v5e, v6e); when the chip cannot be asked
# (no TPU attached, e.g. lowering on a CPU host) assume 64 MiB. Kernels ask for 3/4 of it.
TPU_ASSUMED_VMEM_BYTES = 64 * _MiB
# Triton launch shape: 4 warps suit the [c, c] = [64, 64] score tiles and [c, D_tile] feature tiles.
GPU_NUM_WARPS = 4
GPU_NUM_STAGES = 2


def platform() -> str:
    """The backend whose rules apply by default: "cpu", "gpu" or "tpu" (anything else counts as cpu)."""
    backend = jax.default_backend()
    return backend if backend in ("gpu", "tpu") else "cpu"


def default_state_budget_bytes(backend: str) -> int:
    """Bytes of per-chunk states a call may hold at once: env STATESCALE_PALLAS_STATE_BUDGET_MB, else the
    backend's default (cpu 256 MiB, gpu/tpu 1 GiB)."""
    mb = env_positive("STATESCALE_PALLAS_STATE_BUDGET_MB", "MiB")
    if mb is not None:
        return int(mb * _MiB)
    return _RULES[backend].state_budget_bytes


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static choices for one call (hashable: it is a custom_vjp static argument).

    Shapes inside the kernels: a chunk is ``chunk`` tokens; q/k have ``d_pad`` columns, values
    ``e_pad``; the state of one state head is [D_pad, e_pad] float32, visited in ``n_tiles`` tiles of
    ``block_d`` rows. Time is padded to ``n_segments * chunks_per_segment * chunk`` tokens; each segment's
    per-chunk states ([chunks_per_segment, D_pad, e_pad] per state head) are the largest buffer.
    """

    backend: str
    interpret: bool
    p: int
    scale: float
    q_per_state: int  # g: q heads that read one state (GQA group; 1 for SSD)
    q_div: int  # state head s reads q head-block s // q_div (1 for retention; heads per group for SSD)
    k_div: int  # state head s reads k head s // k_div
    chunk: int
    d: int
    d_pad: int
    e: int
    e_pad: int
    D: int
    D_pad: int
    block_d: int
    n_tiles: int
    n_chunks: int
    chunks_per_segment: int
    n_segments: int
    precision: object  # lax.Precision for the value matmuls (None: the backend default)
    vmem_limit_bytes: int | None = None  # TPU: the scoped-VMEM limit every kernel asks for

    @property
    def store_states(self) -> bool:
        """True when every per-chunk state fits the budget: the backward reads the forward's states
        instead of recomputing them from segment checkpoints."""
        return self.n_segments == 1

    @property
    def padded_time(self) -> int:
        return self.n_segments * self.chunks_per_segment * self.chunk

    @property
    def segment_time(self) -> int:
        return self.chunks_per_segment * self.chunk

    def compiler_params(self, n_grid_dims: int):
        """Backend compiler parameters for a kernel whose grid has n_grid_dims parallel axes."""
        if self.interpret:
            return None
        if self.backend == "tpu":
            from jax.experimental.pallas import tpu as pltpu

            # Every grid axis is independent: the sequential chunk loop lives inside the kernels.
            return pltpu.CompilerParams(
                dimension_semantics=("parallel",) * n_grid_dims, vmem_limit_bytes=self.vmem_limit_bytes
            )
        if self.backend == "gpu":
            from jax.experimental.pallas import triton as pltriton

            # Naming Triton explicitly: JAX 0.10 lowers pallas_call to Mosaic GPU by default.
            return pltriton.CompilerParams(num_warps=GPU_NUM_WARPS, num_stages=GPU_NUM_STAGES)
        return None


def tpu_vmem_limit_bytes() -> int:
    """3/4 of the attached TPU core's VMEM (the rest is Mosaic's internal scratch), or of 64 MiB."""
    capacity = TPU_ASSUMED_VMEM_BYTES
    if jax.default_backend() == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        capacity = pltpu.get_tpu_info().vmem_capacity_bytes
    return capacity * 3 // 4


def _matmul_precision(backend: str):
    """The precision of the value matmuls follows jax.default_matmul_precision, as XLA's ops do.

    Mosaic TPU accepts only DEFAULT or HIGHEST; Triton maps DEFAULT/HIGH to TF32 and HIGHEST to IEEE fp32.
    """
    setting = jax.config.jax_default_matmul_precision
    if setting is None:
        return None
    highest = setting in ("highest", "float32", "fp32", lax.Precision.HIGHEST)
    if highest:
        return lax.Precision.HIGHEST
    if backend == "tpu":
        return None
    return lax.Precision.HIGH if setting in ("high", "tensorfloat32", "bfloat16_3x") else None


def make_plan(
    *,
    p: int,
    scale: float,
    batch: int,
    time: int,
    state_heads: int,
    q_per_state: int,
    q_div: int,
    k_div: int,
    d: int,
    e: int,
    D: int,
    chunk_size: int | None,
    block_d: int | None,
    state_budget_bytes: int | None,
    interpret: bool | None,
    backend: str | None = None,
) -> Plan:
    """Chooses chunk, padding, tiles and segments for one call.

    Args:
      p: feature degree (1: identity features, D = d).
      batch, time, state_heads: call sizes; time >= 1.
      d, e: head dim of q/k and value width (e already includes retention's normaliser column).
      D: number of features (rows of the state).
      chunk_size: requested tokens per chunk (rounded up to the backend's granularity; capped near
        the call's length) or None for the backend default.
      block_d: requested feature rows per tile (rounded the same way) or None.
      state_budget_bytes: cap on per-chunk states held at once, or None (env var / backend default).
      interpret: force interpret mode on or off; None means interpret exactly when backend == "cpu".
      backend: "cpu", "gpu" or "tpu" rules; None means the default JAX backend.
    """
    backend = platform() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"backend = {backend!r}: must be one of {', '.join(map(repr, BACKENDS))}")
    rules = _RULES[backend]
    interpret = backend == "cpu" if interpret is None else bool(interpret)
    if backend == "cpu" and not interpret:
        raise ValueError("interpret = False: Pallas has no CPU lowering; use interpret=True (or None) on CPU")

    def fit(x: int, multiple: int) -> int:
        x = max(x, rules.min_dim)
        return _pow2(x) if rules.pow2 else _round_up(x, multiple)

    c = rules.chunk if chunk_size is None else int(chunk_size)
    if backend == "cpu":
        c = min(c, time)  # as the XLA form: a chunk longer than the call only adds padding
    elif backend == "tpu" and time <= c and time <= rules.chunk_multiple:
        c = _round_up(time, 8)  # one chunk spanning the whole padded call: blocks equal the array dims
    else:
        c = min(fit(c, rules.chunk_multiple), fit(time, rules.chunk_multiple))
    d_pad = fit(d, 1) if rules.pow2 else d  # TPU/CPU blocks span the whole head dim, so no padding
    e_pad = fit(e, rules.value_multiple)
    if p == 1:
        D_pad = block = d_pad  # identity features: one tile covering the (padded) head dim
    else:
        block = rules.block_d if block_d is None else int(block_d)
        if backend == "cpu":
            block = min(block, D)
        elif backend == "tpu":
            block = min(_round_up(block, 128), _round_up(D, 128))
        else:
            block = min(fit(block, 1), fit(D, 1))
        D_pad = _round_up(D, block)
    n_chunks = -(-time // c)

    budget = default_state_budget_bytes(backend) if state_budget_bytes is None else int(state_budget_bytes)
    per_chunk_state_bytes = batch * state_heads * D_pad * e_pad * 4
    max_k = max(1, budget // per_chunk_state_bytes)
    vmem_limit = None
    if backend == "tpu":
        vmem_limit = tpu_vmem_limit_bytes()
        # The sequential kernels keep a segment's inputs ([c, 1] columns take 128 lanes) and per-chunk state
        # tiles in VMEM, double-buffered.
        per_chunk_vmem = 2 * 4 * (c * (d_pad + e_pad + 128) + block * e_pad)
        max_k = min(max_k, max(1, (vmem_limit // 2) // per_chunk_vmem))
        # The output and gradient kernels hold a chunk's whole state, its cotangent and the selection table.
        whole = 2 * 4 * (2 * D_pad * e_pad + (p > 1) * p * D_pad * max(d_pad, 128))
        if whole > vmem_limit and not interpret:
            raise ValueError(
                f"pallas_kernels on TPU: the per-chunk state [D = {D_pad}, e = {e_pad}] and its selection table "
                f"need {whole / _MiB:.0f} MiB of VMEM, more than the {vmem_limit / _MiB:.0f} MiB available; "
                "use a smaller head_dim or p, or backend='xla'"
            )
    n_segments = -(-n_chunks // max_k)
    chunks_per_segment = -(-n_chunks // n_segments)  # balanced: at most n_segments - 1 padded chunks
    return Plan(
        backend=backend, interpret=interpret, p=int(p), scale=float(scale), q_per_state=int(q_per_state),
        q_div=int(q_div), k_div=int(k_div), chunk=c, d=d, d_pad=d_pad, e=e, e_pad=e_pad, D=D, D_pad=D_pad,
        block_d=block, n_tiles=D_pad // block, n_chunks=n_chunks, chunks_per_segment=chunks_per_segment,
        n_segments=n_segments, precision=_matmul_precision(backend), vmem_limit_bytes=vmem_limit,
    )


def tile_shapes(plan: Plan) -> dict[str, tuple[int, ...]]:
    """Every array shape the kernels load or store (for the backend rules in tests and docs)."""
    c, dp, ep, bd = plan.chunk, plan.d_pad, plan.e_pad, plan.block_d
    return {
        "q/k chunk": (c, dp), "value chunk": (c, ep), "log-gate column": (c, 1), "log-gate row": (1, c),
        "chunk total": (1, 1), "state tile": (bd, ep), "selection tile": (bd, dp),
        "score tile": (c, c), "feature tile": (c, bd),
    }


def check_rules(plan: Plan) -> list[str]:
    """Violations of the backend's shape rules by the plan's tiles (empty when it complies)."""
    problems = []
    shapes = tile_shapes(plan)
    if plan.backend == "gpu":
        for name, shape in shapes.items():
            if math.prod(shape) & (math.prod(shape) - 1):
                problems.append(f"{name} {shape}: size is not a power of two (Triton)")
        for name in ("q/k chunk", "value chunk", "state tile", "selection tile", "score tile", "feature tile"):
            if min(shapes[name]) < 16:
                problems.append(f"{name} {shapes[name]}: a matmul dimension < 16 (tl.dot)")
    if plan.backend == "tpu":
        if plan.chunk % 8:
            problems.append(f"chunk {plan.chunk}: not a multiple of 8 sublanes")
        if plan.chunk % 128 and plan.padded_time != plan.chunk:
            problems.append(f"chunk {plan.chunk}: log-gate row block (1, c) needs c % 128 == 0")
        if plan.e_pad % 128:
            problems.append(f"value width {plan.e_pad}: not a multiple of 128 lanes")
        if plan.p > 1 and plan.block_d % 128:
            problems.append(f"feature tile {plan.block_d}: not a multiple of 128")
    return problems
