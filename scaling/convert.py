"""Metamorphosis: a trained transformer's attention layers become power retention layers with the same weights.

Attention and power retention share their q/k/v/o projections (``scaling.models.layers.QKVO``: the same
parameter names, shapes, RoPE and 1/sqrt(head_dim) score scale), so converting a layer keeps every weight
and adds only the retention gate, initialised to a constant near 1 (kernel 0, bias logit(gate_init)), and
the optional short conv (``retention.conv``) as the identity. With
the gate at exactly 1 and p = 2, a converted layer computes power attention, softmax's exp(s) replaced by
s^2 and normalised by the row sum, on the transformer's own q, k and v; retraining all weights then
recovers the transformer's loss (Manifest AI's PowerCoder and Brumby "metamorphosis").

- :func:`convert_config` maps a run config: pattern letters A -> R, the retention heads and RoPE copied
  from the attention section, the rest of the retention section (p, chunk size, gate_init) as configured.
- :func:`convert_params` maps parameters by name: every parameter of the new model is the source's
  parameter of the same name and shape, except the gates of converted layers; anything else is an error.
- ``train.init_from`` converts at the start of a run (scaling.train.init_params_from, with
  :func:`resolve_init_from` and :func:`convert_params`).
- ``scaling convert WORKDIR --to R --out NEWDIR`` (scaling.convert_run) writes a new run workdir: the
  converted config (``train.init_from`` = the source) and a step-0 checkpoint, so ``scaling train NEWDIR``
  retrains it.

This module needs no training code (scaling.train imports it); what reads or writes run directories is above it.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scaling import config as _config

TARGETS = {"R": "power retention"}
SOURCE = "A"  # the mixer whose weights a target takes
_SHARED = ("n_heads", "n_kv_heads", "rope", "rope_theta")  # must agree for the q/k/v/o weights to fit
_LAYER = re.compile(r"^\['blocks'\]\[(\d+)\]")
RUN_PREFIX = "run:"


class ConversionError(_config.ConfigError):
    """A conversion cannot be done; the message names the field, parameter or path and why."""


def convert_config(src_cfg, to: str = "R", overrides=()):
    """The run config of ``src_cfg`` with every attention layer turned into ``to`` (only "R").

    ``overrides`` (``"model.retention.p=4"`` strings or (key, value) pairs) apply after the conversion; they
    may not change the retention heads or RoPE away from the attention's. Raises ConversionError.
    """
    if to not in TARGETS:
        raise ConversionError(f"--to {to!r}: must be one of {', '.join(TARGETS)} ("
                              + ", ".join(f"{k}: {v}" for k, v in TARGETS.items())
                              + "), the mixers that take attention's q/k/v/o weights")
    m = src_cfg.model
    pattern = _config.layer_pattern(m)
    if SOURCE not in pattern:
        raise ConversionError(f"model.pattern = {m.pattern!r}: the source has no attention layer (A) to convert")
    if to in pattern:
        for key in _SHARED:
            if m.retention[key] != m.attention[key]:
                raise ConversionError(
                    f"model.retention.{key} = {m.retention[key]!r}: the source's own {to} layers use it, but its "
                    f"attention layers have model.attention.{key} = {m.attention[key]!r}; one retention section "
                    "cannot serve both, so this model cannot be converted")
    cfg = copy.deepcopy(src_cfg)
    cfg.model.pattern = m.pattern.replace(SOURCE, to)
    for key in _SHARED:
        cfg.model.retention[key] = m.attention[key]
    cfg.model.name = f"{m.name}-to-{to}"
    _config.apply_overrides(cfg, overrides)
    for key in _SHARED:
        if cfg.model.retention[key] != m.attention[key]:
            raise ConversionError(
                f"model.retention.{key} = {cfg.model.retention[key]!r}: must equal the source's "
                f"model.attention.{key} = {m.attention[key]!r} for its q/k/v/o weights to fit")
    if _config.layer_pattern(cfg.model) != _config.layer_pattern(m).replace(SOURCE, to):
        raise ConversionError(f"model.pattern / model.n_layers: overrides changed the layer pattern to "
                              f"{_config.layer_pattern(cfg.model)!r}; a conversion keeps the source's layers")
    _config.validate(cfg)
    return cfg


def _gate_init(path: str, like, gate_init: float):
    if path.endswith("['kernel'].value"):
        return jnp.zeros(like.shape, like.dtype)  # a constant gate: sigmoid(bias) at every token
    return jnp.full(like.shape, math.log(gate_init / (1 - gate_init)), like.dtype)


def _conv_identity(path: str, like):
    """A converted layer's short conv (retention.conv > 0) starts as the identity: the last tap 1, bias 0."""
    zeros = jnp.zeros(like.shape, like.dtype)
    return zeros.at[-1].set(1) if "['conv_w']" in path else zeros


def convert_params(src_cfg, src_params, dst_cfg):
    """The parameters of ``dst_cfg``'s model from a source model's parameters (an ``nnx.State`` of Params).

    Layers keep their mixer or turn from attention (A) into power retention (R). Raises ConversionError
    naming the parameter when a shape or dtype differs, a parameter has no source, or a source parameter
    would be dropped.
    """
    from scaling.checkpoint import flat_tree, unflat_tree
    from scaling.models import build

    src_pat, dst_pat = _config.layer_pattern(src_cfg.model), _config.layer_pattern(dst_cfg.model)
    if len(src_pat) != len(dst_pat):
        raise ConversionError(f"model.n_layers = {dst_cfg.model.n_layers}: the source has {len(src_pat)} layers")
    for i, (a, b) in enumerate(zip(src_pat, dst_pat, strict=True)):
        if a != b and (a, b) != (SOURCE, "R"):
            raise ConversionError(f"model.pattern: layer {i} is {a!r} in the source and {b!r} here; layers keep "
                                  f"their mixer or turn from A (attention) into R (power retention)")
    # Built abstractly: only the structure, shapes and dtypes of the target are needed.
    dst_like = nnx.state(nnx.eval_shape(lambda: build(dst_cfg.model)), nnx.Param)
    src_flat, dst_flat = flat_tree(src_params), flat_tree(dst_like)
    out, used = {}, set()
    for path, like in dst_flat.items():
        layer = _LAYER.match(path)
        converted = layer is not None and src_pat[int(layer.group(1))] != dst_pat[int(layer.group(1))]
        if converted and path.startswith(f"{layer.group(0)}['mixer']['gate']"):
            out[path] = _gate_init(path, like, dst_cfg.model.retention.gate_init)
            continue
        if converted and path.startswith((f"{layer.group(0)}['mixer']['conv_w']",
                                          f"{layer.group(0)}['mixer']['conv_b']")):
            out[path] = _conv_identity(path, like)
            continue
        if path not in src_flat:
            raise ConversionError(f"parameter {path} of the new model has no counterpart in the source model")
        a = src_flat[path]
        if tuple(a.shape) != tuple(like.shape) or np.dtype(a.dtype) != np.dtype(like.dtype):
            raise ConversionError(f"parameter {path}: the source's is {np.dtype(a.dtype)}{list(a.shape)}, the new "
                                  f"model needs {np.dtype(like.dtype)}{list(like.shape)}")
        out[path] = a if isinstance(a, jax.ShapeDtypeStruct) else jnp.asarray(a)
        used.add(path)
    dropped = sorted(set(src_flat) - used)
    if dropped:
        raise ConversionError(f"the conversion would drop {len(dropped)} source parameter(s), e.g. {dropped[0]}")
    return unflat_tree(out, dst_like)


def check_convertible(src_cfg, dst_cfg) -> None:
    """Raise ConversionError unless a run of ``src_cfg`` can initialise ``dst_cfg`` (shapes only, no compute)."""
    from scaling.models import build

    src_like = nnx.state(nnx.eval_shape(lambda: build(src_cfg.model)), nnx.Param)
    convert_params(src_cfg, src_like, dst_cfg)


def resolve_init_from(value: str, workdir) -> Path:
    """The run directory ``train.init_from`` names: ``run:<id>`` is a sibling of ``workdir`` (a sweep's
    runs/<id>); anything else is a path (relative to the current directory)."""
    if value.startswith(RUN_PREFIX):
        return Path(workdir).resolve().parent / value[len(RUN_PREFIX):]
    return Path(value).expanduser().resolve()
