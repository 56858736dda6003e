"""Metamorphosis: a trained transformer's attention layers become another mixer's layers with the same weights.

Attention, power retention and GLA share their q/k/v/o projections (``scaling.models.layers.QKVO``: the same
parameter names and shapes), and Based's sliding-window branch has attention's q/k/v/o under its own names, so
converting a layer keeps every weight and adds only what the target has beside them (:data:`TARGETS`):

- R, power retention: the gate, initialised to a constant near 1 (kernel 0, bias logit(gate_init)), and the
  optional short conv (``retention.conv``) as the identity. With the gate at exactly 1 and p = 2, a converted
  layer computes power attention, softmax's exp(s) replaced by s^2 and normalised by the row sum, on the
  transformer's own q, k and v; retraining all weights then recovers the transformer's loss (Manifest AI's
  PowerCoder and Brumby "metamorphosis").
- G, GLA: the low-rank gate, the output gate and the head norm, from GLA's own initialisation; GLA has no RoPE,
  so the kept q and k lose their rotation (the source needs n_kv_heads = n_heads).
- B, Based: the Taylor branch's q and k (feature_dim a head), from Based's initialisation; attention's q/k/v/o
  become the window branch's (RoPE kept; n_kv_heads = n_heads), so with the Taylor branch's output removed a
  converted layer is attention restricted to the window.

- :func:`convert_config` maps a run config: pattern letters A -> the target, the target's heads (and RoPE)
  copied from the attention section, the rest of its section as configured.
- :func:`convert_params` maps parameters by name: every parameter of the new model is the source's
  parameter of the same name (or the target's renamed one) and shape, except the target's own; anything
  else is an error.
- ``train.init_from`` converts at the start of a run (scaling.train.init_params_from, with
  :func:`resolve_init_from` and :func:`convert_params`).
- ``scaling convert WORKDIR --to R|G|B --out NEWDIR`` (scaling.convert_run) writes a new run workdir: the
  converted config (``train.init_from`` = the source) and a step-0 checkpoint, so ``scaling train NEWDIR``
  retrains it.

This module needs no training code (scaling.train imports it); what reads or writes run directories is above it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scaling import config as _config

SOURCE = "A"  # the mixer whose weights a target takes
_LAYER = re.compile(r"^\['blocks'\]\[(\d+)\]")
RUN_PREFIX = "run:"


@dataclasses.dataclass(frozen=True)
class Target:
    """A mixer that takes attention's q/k/v/o weights.

    ``copy``: (target field, attention field) pairs that must agree for the weights to fit, copied from the
    source's attention section; ``same``: (attention field, attention field, why) pairs that must be equal in the
    source; ``value``: (attention field, value, why) the source must have; ``rename``: (target parameter, attention
    parameter) under ``['mixer']`` where the names differ; every other parameter of a converted layer that attention
    lacks starts from the target model's own initialisation (seed ``train.seed``), except power retention's gate
    (:func:`_gate_init`) and a short conv (the identity, :func:`_conv_identity`).
    """

    letter: str
    section: str
    name: str
    copy: tuple[tuple[str, str], ...]
    same: tuple[tuple[str, str, str], ...] = ()
    value: tuple[tuple[str, object, str], ...] = ()
    rename: tuple[tuple[str, str], ...] = ()


# GLA has no RoPE (the kept q and k lose their rotation); Based's window branch takes attention's q/k/v/o.
TARGETS = {t.letter: t for t in (
    Target("R", "retention", "power retention",
           copy=(("n_heads", "n_heads"), ("n_kv_heads", "n_kv_heads"), ("rope", "rope"), ("rope_theta", "rope_theta"))),
    Target("G", "gla", "gated linear attention", copy=(("n_heads", "n_heads"),),
           same=(("n_kv_heads", "n_heads", "GLA has one k and v head per q head"),)),
    Target("B", "based", "Based", copy=(("n_heads", "n_heads"), ("rope_theta", "rope_theta")),
           same=(("n_kv_heads", "n_heads", "Based has one k and v head per q head"),),
           value=(("rope", True, "Based's window branch uses RoPE"),),
           rename=(("['q']", "['proj']['q']"), ("['k']", "['proj']['k']"), ("['v']", "['proj']['v']"),
                   ("['o']", "['proj']['o']"))),
)}


class ConversionError(_config.ConfigError):
    """A conversion cannot be done; the message names the field, parameter or path and why."""


def _target(to: str) -> Target:
    if to not in TARGETS:
        raise ConversionError(f"--to {to!r}: must be one of {', '.join(TARGETS)} ("
                              + ", ".join(f"{k}: {v.name}" for k, v in TARGETS.items())
                              + "), the mixers that take attention's q/k/v/o weights")
    return TARGETS[to]


def _check_source(m, t: Target) -> None:
    a = m.attention
    for key, other, why in t.same:
        if a[key] != a[other]:
            raise ConversionError(f"model.attention.{key} = {a[key]!r}: must equal model.attention.{other} = "
                                  f"{a[other]!r} to convert to {t.letter} ({why})")
    for key, want, why in t.value:
        if a[key] != want:
            raise ConversionError(f"model.attention.{key} = {a[key]!r}: must equal {want!r} to convert to "
                                  f"{t.letter} ({why})")


def convert_config(src_cfg, to: str = "R", overrides=()):
    """The run config of ``src_cfg`` with every attention layer turned into ``to`` (a letter of :data:`TARGETS`).

    ``overrides`` (``"model.retention.p=4"`` strings or (key, value) pairs) apply after the conversion; they
    may not change the target's heads or RoPE away from the attention's. Raises ConversionError.
    """
    t = _target(to)
    m = src_cfg.model
    pattern = _config.layer_pattern(m)
    if SOURCE not in pattern:
        raise ConversionError(f"model.pattern = {m.pattern!r}: the source has no attention layer (A) to convert")
    _check_source(m, t)
    sec = t.section
    if to in pattern:
        for key, akey in t.copy:
            if m[sec][key] != m.attention[akey]:
                raise ConversionError(
                    f"model.{sec}.{key} = {m[sec][key]!r}: the source's own {to} layers use it, but its "
                    f"attention layers have model.attention.{akey} = {m.attention[akey]!r}; one {sec} section "
                    "cannot serve both, so this model cannot be converted")
    cfg = copy.deepcopy(src_cfg)
    cfg.model.pattern = m.pattern.replace(SOURCE, to)
    for key, akey in t.copy:
        cfg.model[sec][key] = m.attention[akey]
    cfg.model.name = f"{m.name}-to-{to}"
    _config.apply_overrides(cfg, overrides)
    for key, akey in t.copy:
        if cfg.model[sec][key] != m.attention[akey]:
            raise ConversionError(
                f"model.{sec}.{key} = {cfg.model[sec][key]!r}: must equal the source's "
                f"model.attention.{akey} = {m.attention[akey]!r} for its q/k/v/o weights to fit")
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
    """A converted layer's short conv (retention.conv, gla.conv or based.conv > 0) starts as the identity: the last
    tap 1, bias 0."""
    zeros = jnp.zeros(like.shape, like.dtype)
    return zeros.at[-1].set(1) if "['conv_w']" in path else zeros


def _source_path(path: str, layer: str, t: Target) -> str:
    """The attention parameter a converted layer's ``path`` takes (itself unless the target renames it)."""
    mixer = f"{layer}['mixer']"
    for dst, src in t.rename:
        if path.startswith(mixer + dst + "["):
            return mixer + src + path[len(mixer + dst):]
    return path


def convert_params(src_cfg, src_params, dst_cfg):
    """The parameters of ``dst_cfg``'s model from a source model's parameters (an ``nnx.State`` of Params).

    Layers keep their mixer or turn from attention (A) into a target of :data:`TARGETS`. A converted layer's
    parameters that attention lacks start from the target's initialisation (power retention: gate near 1, conv
    the identity). Raises ConversionError naming the parameter when a shape or dtype differs, a parameter of a
    kept layer has no source, or a source parameter would be dropped.
    """
    from scaling.checkpoint import flat_tree, unflat_tree
    from scaling.models import build

    src_pat, dst_pat = _config.layer_pattern(src_cfg.model), _config.layer_pattern(dst_cfg.model)
    if len(src_pat) != len(dst_pat):
        raise ConversionError(f"model.n_layers = {dst_cfg.model.n_layers}: the source has {len(src_pat)} layers")
    for i, (a, b) in enumerate(zip(src_pat, dst_pat, strict=True)):
        if a != b and not (a == SOURCE and b in TARGETS):
            raise ConversionError(f"model.pattern: layer {i} is {a!r} in the source and {b!r} here; layers keep "
                                  f"their mixer or turn from A (attention) into one of {', '.join(TARGETS)}")
    # Built abstractly: only the structure, shapes and dtypes of the target are needed, unless a converted layer
    # has parameters of its own to initialise (and the source is concrete).
    dst_like = nnx.state(nnx.eval_shape(lambda: build(dst_cfg.model)), nnx.Param)
    src_flat, dst_flat = flat_tree(src_params), flat_tree(dst_like)
    abstract = any(isinstance(a, jax.ShapeDtypeStruct) for a in src_flat.values())
    fresh = None
    out, used = {}, set()
    for path, like in dst_flat.items():
        layer = _LAYER.match(path)
        i = None if layer is None else int(layer.group(1))
        if i is None or src_pat[i] == dst_pat[i]:
            src_path = path
        else:
            t, mixer = TARGETS[dst_pat[i]], f"{layer.group(0)}['mixer']"
            src_path = _source_path(path, layer.group(0), t)
            if t.letter == "R" and path.startswith(f"{mixer}['gate']"):
                out[path] = _gate_init(path, like, dst_cfg.model.retention.gate_init)
                continue
            if path.startswith((f"{mixer}['conv_w']", f"{mixer}['conv_b']")):  # any target's short conv
                out[path] = _conv_identity(path, like)
                continue
            if src_path not in src_flat and path.startswith(mixer):  # the target's own: its initialisation
                if abstract:
                    out[path] = like
                    continue
                if fresh is None:
                    fresh = flat_tree(nnx.state(build(dst_cfg.model, seed=int(dst_cfg.train.seed)), nnx.Param))
                out[path] = jnp.asarray(fresh[path])
                continue
        if src_path not in src_flat:
            raise ConversionError(f"parameter {path} of the new model has no counterpart in the source model")
        a = src_flat[src_path]
        if tuple(a.shape) != tuple(like.shape) or np.dtype(a.dtype) != np.dtype(like.dtype):
            raise ConversionError(f"parameter {path}: the source's is {np.dtype(a.dtype)}{list(a.shape)}, the new "
                                  f"model needs {np.dtype(like.dtype)}{list(like.shape)}")
        out[path] = a if isinstance(a, jax.ShapeDtypeStruct) else jnp.asarray(a)
        used.add(src_path)
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
