"""Memory per device of one train step: the one definition (``train_memory``), used by ``scaling sweep --dry-run``.

Bytes per device of the step of scaling.steps.make_steps (AdamW, gradient accumulation over ``microbatches``,
``remat``) on a mesh of scaling.sharding, from the config alone. P_dev is the parameter elements a device holds:
each parameter's shape divided by the mesh axes its PartitionSpec uses (scaling.sharding.logical_axes and
spec_for, the rules the train loop lays the state out by, so the two cannot drift). n is the tokens of one
microbatch on one device: batch / (microbatches x data x fsdp) rows times the context.

- params: 4 P_dev (float32 masters, whatever the compute dtype; the bf16 casts of the weights are made per matmul
  and counted in no part).
- optimizer: 8 P_dev (AdamW's two float32 moments, laid out like the parameters).
- gradients: 4 P_dev, plus 4 P_dev for the float32 accumulator when microbatches > 1, plus 4 P_dev for the
  optimizer's update (the step holds the gradient and the update at once before the moments are written).
- activations: what one microbatch keeps for the backward pass, S_l (below) summed over the layers l:
  * remat "none" (and "everything_saveable"): sum_l n S_l;
  * remat "block" and every other policy: 4 n d per layer (each block's input; the residual stream is float32)
    plus the saved tensors of the layers recomputed together: one layer, or with model.scan_layers one repeat of
    the pattern (one scan step). Policies that save more than the block input (dots_saveable, ...) are counted
    as "block": a lower bound for them.
  The backward's own working set is not added: XLA frees each layer's saved tensors as it makes their
  cotangents (measured on CPU: one layer's backward costs a few percent over its saved tensors). Added: the
  blockwise attention's [block, block] tiles (12 bytes per score per head per row; the block of
  scaling.mixers.chunks.attention_block, 512 where not measured) and, with fsdp > 1, one layer's
  weights gathered over fsdp in the compute dtype, twice (this layer's and the next, prefetched).
- logits: 3 x 4 n V (float32 logits, their softmax and its cotangent; V split over tensor where it divides) plus
  the batch (three [B, T] int32/float32 arrays).

S_l, bytes per token of one layer, c = bytes of the compute dtype (4 float32, 2 bfloat16), d = d_model, f = the
SwiGLU width, hq/hk/hd heads, kv heads and head width; every width that scaling.sharding splits over ``tensor``
(heads, f, Mamba's in_proj outputs and SSD heads; not Mamba's conv: its weights are replicated) divided by it:
- every block: 16 d (two residuals and two norm outputs, float32) + 2 c d (their casts, bf16 only) + 4 c f
  (gate, up, silu(gate), their product);
- attention: c (3 hq + 3 hk) hd (q, k, v, the rotated q and k, the output before o); the parallel form (impl
  "parallel", or "auto" below the backend's threshold: 64 tokens on CPU, 1,024 elsewhere) adds 12 hq K (three
  float32 [T, K] arrays per head: the masked scores, their exponential and the probabilities, K = the context or
  the window); the blockwise form adds 4 hq (the logsumexp) + 4 (hq + 2 hk) hd (float32 dq, dk, dv of the
  backward);
- power retention: c (3 hq + 3 hk) hd + 4 (hq + 5 hk) hd (the float32 chunked q, k, v and the per-chunk
  intermediates) + 20 hq c_r (five float32 [c_r, c_r] arrays per head: scores, their power, decay, weights) +
  4 hk D (hd + 1) / c_r (the state [D, hd + 1] entering each chunk), D = C(hd + p - 1, p), c_r the chunk; the
  feature maps phi(q), phi(k) are recomputed in the backward, not kept; the attention form
  (``retention.form = "parallel"``) keeps 12 hq T instead of the chunk terms (three float32 [T, T] arrays per
  head, as parallel attention);
- Mamba-2: 4 (d_in + conv + h) (in_proj, float32) + (d_conv + 3) c conv (the conv's shifted inputs, output and
  silu) + 20 h c_m + 4 g c_m (five float32 [c_m, c_m] decay/score arrays per head, C B^T per group) +
  4 h hd N / c_m (the chunk states) + 44 d_in (x dt, y, the gate, the norm and their float32 intermediates);
  d_in = expand d, conv = d_in + 2 g N, h = d_in / hd, c_m the chunk.
The constant factors (12, 20, 44, ...) count the arrays kept for the backward: read off jax's saved residuals
of the loss, then set to the bytes per token per layer XLA keeps after fusion on CPU (the difference between
compiled 1- and 2-layer steps of each mixer at d_model 128, context 256). The tests check them at other shapes
(d_model 64, context 128 and 1,024, bf16, sharded).

What it does not count: XLA's fusion temporaries beyond the above, allocator fragmentation, CUDA/cuDNN workspaces
(cuDNN attention is counted as the blockwise form), the compiled program, collectives' buffers, a GSPMD layout that
replicates activations it could split (seen on CPU at fsdp = 8 with one row per device: XLA 2.4x this). A plan
leaves :data:`HEADROOM` of the device free for them. tests/test_memory.py holds the total within 20% of XLA's memory
analysis of the compiled step on CPU (arguments + temporaries) for every mixer, remat none and block (with
model.scan_layers: without it XLA's CPU scheduler recomputes early and remat saves almost nothing there), 1 and 2
microbatches, fp32 and bf16, and sharded over data x fsdp x tensor; docs/memory.md lists the measured ratios.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass

from scaling import config as _config
from scaling.mixers.chunks import ATTENTION_BLOCK, attention_block
from scaling.mixers.retention import sympow_dim

BYTES = {"float32": 4, "bfloat16": 2}
PARTS = ("params", "optimizer", "gradients", "activations", "logits")
HEADROOM = 0.10  # the fraction of a device's memory a plan leaves free (XLA temporaries, fragmentation)


@dataclass(frozen=True)
class TrainMemory:
    """Bytes per device of one train step (module docstring), its parts and the layout they assume."""

    params: int
    optimizer: int
    gradients: int
    activations: int
    logits: int
    mesh: dict
    microbatches: int
    remat: str

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.gradients + self.activations + self.logits

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _model(cfg):
    return cfg.model if "model" in cfg else cfg


@functools.lru_cache(maxsize=64)
def _param_shapes(model_json: str) -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
    """((path names, shape), ...) of every parameter of a model config (abstract: nothing is allocated)."""
    import jax
    from flax import nnx

    from scaling.models.lm import LanguageModel
    from scaling.sharding import _names

    m = _config.from_dict({"model": json.loads(model_json)}).model
    model = nnx.eval_shape(lambda: LanguageModel(m, nnx.Rngs(params=0)))
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    return tuple((tuple(n for n in _names(path) if n != "value"), tuple(x.shape)) for path, x in leaves)


def _shard_axes(names, shape, mesh: dict) -> list[str]:
    """The mesh axes the parameter at ``names`` is split over on ``mesh`` (scaling.sharding's rules)."""
    from scaling.sharding import logical_axes, spec_for

    return [a for a in spec_for(logical_axes(list(names), len(shape)), shape, mesh) if a is not None]


def param_elements(cfg, mesh: dict) -> tuple[float, float]:
    """(parameter elements per device, elements of the largest layer's matrices gathered over fsdp per device)."""
    model_json = json.dumps(_model(cfg).to_dict(), sort_keys=True, default=str)
    return _param_elements(model_json, tuple(sorted(mesh.items())))


@functools.lru_cache(maxsize=4096)
def _param_elements(model_json: str, mesh_items: tuple) -> tuple[float, float]:
    mesh = dict(mesh_items)
    per_device, layers = 0.0, {}
    for names, shape in _param_shapes(model_json):
        size = math.prod(shape)
        axes = _shard_axes(names, shape, mesh)
        per_device += size / math.prod(mesh[a] for a in axes)
        if len(shape) >= 2 and names[0] in ("blocks", "stack"):  # gathered over fsdp, still split over tensor
            stacked = names[0] == "stack" and len(shape) == 3
            gathered = size / (shape[0] if stacked else 1) / math.prod(mesh[a] for a in axes if a != "fsdp")
            layers[names[:2]] = layers.get(names[:2], 0.0) + gathered
    return per_device, max(layers.values(), default=0.0)


def _attention_keys(m, context: int) -> int:
    return min(context, m.attention.window) if m.attention.window else context


def _attention_block(m, context: int) -> int | None:
    """The blockwise form's block the layer runs at this context, or None for the parallel form (impl "auto":
    scaling.mixers.chunks.attention_block on this machine's backend)."""
    impl = m.attention.get("impl", "auto")
    block = attention_block(context, m.d_model // m.attention.n_heads)
    if impl == "parallel" or (impl == "auto" and block is None):
        return None
    return block or ATTENTION_BLOCK


def _parallel_attention(m, context: int) -> bool:
    return _attention_block(m, context) is None


def layer_bytes_per_token(m, letter: str, context: int, tensor: int = 1) -> float:
    """Saved tensors of one layer per token (module docstring), heads and hidden widths split over ``tensor``."""
    c, d, f = BYTES[m.dtype], m.d_model, _config.d_ff(m) / tensor
    out = 16.0 * d + (2 * c * d if c < 4 else 0) + 4 * c * f
    if letter == "A":
        hq, hk = m.attention.n_heads / tensor, m.attention.n_kv_heads / tensor
        hd = d // m.attention.n_heads
        out += c * (3 * hq + 3 * hk) * hd
        if _parallel_attention(m, context):
            out += 12 * hq * _attention_keys(m, context)
        else:  # the logsumexp, and float32 dq, dk, dv accumulated over the blocks of the backward
            out += 4 * hq + 4 * (hq + 2 * hk) * hd
    elif letter == "R":
        r = m.retention
        hq, hk, hd = r.n_heads / tensor, r.n_kv_heads / tensor, d // r.n_heads
        dim, cr = sympow_dim(hd, r.p), min(r.chunk_size, context)
        if r.get("form", "chunked") == "parallel":  # the attention form: [T, T] scores, their power and weights
            out += c * (3 * hq + 3 * hk) * hd + 4 * (hq + 5 * hk) * hd + 12 * hq * context
        else:
            out += c * (3 * hq + 3 * hk) * hd + 4 * (hq + 5 * hk) * hd + 20 * hq * cr + 4 * hk * dim * (hd + 1) / cr
    elif letter == "M":  # split over tensor: in_proj's outputs and the SSD's heads; not the conv (replicated weights)
        s = m.mamba
        d_inner = s.expand * d
        h, conv = d_inner / s.head_dim, d_inner + 2 * s.n_groups * s.d_state
        cm = min(s.chunk_size, context)
        out += (4 * (d_inner + conv + h) + 20 * h * cm + 4 * h * s.head_dim * s.d_state / cm + 44 * d_inner) / tensor
        out += (s.d_conv + 3) * c * conv + 4 * s.n_groups * cm
    else:
        raise ValueError(f"model.pattern letter {letter!r}: must be one of A, R, M")
    return out


def _blockwise_tile(m, context: int, tensor: int) -> float:
    """The blockwise attention's working tile: [block, block] scores and probabilities per query head."""
    if "A" not in _config.layer_pattern(m) or _parallel_attention(m, context):
        return 0.0
    block = min(_attention_block(m, context), context)
    return 12.0 * block * block * (m.attention.n_heads / tensor)


def _check_layout(cfg, mesh: dict, microbatches: int) -> int:
    """Rows of one microbatch on one device (train.batch_size must split over microbatches x data x fsdp)."""
    rows = cfg.train.batch_size
    split = microbatches * mesh.get("data", 1) * mesh.get("fsdp", 1)
    if rows % split:
        raise ValueError(f"train.batch_size = {rows}: must be a multiple of microbatches x data x fsdp = {split}")
    return rows // split


def train_memory(cfg, mesh: dict | None = None, *, microbatches: int | None = None,
                 remat: str | None = None) -> TrainMemory:
    """Bytes per device of one train step of the run config ``cfg`` on ``mesh`` ({"data", "fsdp", "tensor"}
    sizes; default: one device), ``microbatches`` and ``remat`` (default: the config's train fields)."""
    mesh = {"data": 1, "fsdp": 1, "tensor": 1, **(mesh or {})}
    m, t = cfg.model, cfg.train
    k = int(microbatches or t.get("microbatches") or 1)
    remat = remat or t.get("remat") or "none"
    rows = _check_layout(cfg, mesh, k)
    n = rows * t.context
    p_dev, gathered = param_elements(cfg, mesh)
    tensor = mesh["tensor"]
    per_layer = [layer_bytes_per_token(m, x, t.context, tensor) for x in _config.layer_pattern(m)]
    unit = len(m.pattern) if m.get("scan_layers") else 1  # layers recomputed together (one scan step)
    recompute = max(sum(per_layer[i: i + unit]) for i in range(0, len(per_layer), unit))
    if remat in ("none", "everything_saveable"):
        saved = n * sum(per_layer)
    else:
        saved = n * 4.0 * m.d_model * len(per_layer) + n * recompute
    work = _blockwise_tile(m, t.context, tensor) * rows
    if mesh["fsdp"] > 1:
        work += 2 * BYTES[m.dtype] * gathered
    batch = 3 * 4 * cfg.train.batch_size // (mesh["data"] * mesh["fsdp"]) * t.context
    vocab = m.vocab_size / (tensor if m.vocab_size % tensor == 0 else 1)
    return TrainMemory(
        params=int(4 * p_dev), optimizer=int(8 * p_dev),
        gradients=int(4 * p_dev * (2 if k > 1 else 1) + 4 * p_dev),
        activations=int(saved + work), logits=int(3 * 4 * n * vocab + batch),
        mesh=dict(mesh), microbatches=k, remat=remat)
