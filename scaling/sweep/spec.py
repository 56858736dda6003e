"""Sweep specifications: a small dataclass, expanded deterministically into FLOP-matched runs.

A study is a Python file under ``experiments/`` with ``get_sweep()`` returning a :class:`Sweep` (or a dict of
its fields). Every config key below is a dotted run-config field (``"model.retention.p"``, ``"train.lr"``):

``name``
    The sweep's name (the default sweep directory is ``sweeps/<name>``).
``base``
    A config file with ``get_config()``: a path relative to the repository root (or absolute), e.g.
    ``"configs/models/power_retention_tiny.py"``. Missing sections come from the defaults; ``None``: the defaults.
``overrides``
    ``{key: value}`` applied to every run.
``variants``
    The *union* of configurations to compare, e.g. one per mixer family and state size. A list of
    ``{key: value}`` dicts (labelled by their values) or a dict ``{label: {key: value}}``. Variants are not
    crossed with each other, since each mixer has its own state axis.
``axes``
    ``{key: [values]}``, crossed with each other and with every variant: context length, learning rate,
    seed, ... (any config key). Keys joined by commas move together: ``{"train.context,train.batch_size":
    [(256, 64), (1024, 16)]}`` (e.g. to keep the tokens per step fixed across contexts).
``budgets``
    Training FLOP budgets. For each run and budget the token budget is ``budget / (3 * flops_per_token)`` at
    the run's context (``scaling.accounting.flops_per_token``, forward FLOPs; training costs 3x), rounded
    to whole optimizer steps at the configured batch; the run gets ``train.steps`` and ``train.tokens = 0``.
    Empty: no FLOP matching, every run trains for its configured steps or tokens.
``sizes``, ``ratio_range``, ``ratio_params``
    Optional isoFLOP mode (Chinchilla approach 2). ``sizes`` are model size presets (a list of dicts or a
    dict ``{label: {key: value}}``, e.g. d_model and n_layers). For each budget, a size is kept when its
    token/parameter ratio D/N lies in ``ratio_range = (low, high)`` (all sizes when None); N counts
    ``ratio_params`` ("non_embedding" or "total") parameters.
``tolerance``
    The largest relative difference allowed between a run's FLOPs (whole steps) and its budget (0.05).
``seeds``
    Replicates: each point is run with ``train.seed`` = base seed + 0, 1, ..., seeds - 1 (model init and data
    order). The seed is recorded in the run's point; the analysis treats runs that differ only in seed as
    replicates of one point (mean +- standard error, error bars, every replicate a point of the fits).
``parts``
    A union of grids: a list of dicts of the fields above (variants, sizes, axes, budgets, seeds, ratio_range,
    overrides, ...), each expanded as this spec with those fields replaced (``overrides`` are merged), and the
    runs of all parts pooled (deduplicated by run id). E.g. a ladder of sizes x budgets, plus state sizes at one
    budget, plus three seeds at one point, plus one larger budget held out for prediction.
``figures``
    Study figures ``scaling analyze`` draws besides the generic ones, by name from
    ``scaling.analysis.figures.FIGURES`` (e.g. ``["recall_vs_state"]``).

Overrides are applied in the order base < overrides < size < variant < axes < budget, each on a fresh copy
of the base. A run's id is ``scaling.rundir.run_id(cfg)``, the hash of its resolved config, so editing a spec
(another axis value, another budget) adds runs and leaves the ids of the old ones unchanged; two points
that resolve to the same config are one run. Everything is validated during expansion, before any run
starts: unknown keys, empty axes, budgets below one step, bad values (``scaling.config.validate``).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from scaling import accounting
from scaling import config as _config

ROOT = Path(__file__).resolve().parents[2]  # the repository root (configs/, experiments/)

RATIO_PARAMS = ("non_embedding", "total")
# Scales of the paper reproductions (experiments/papers/): "cpu" finishes in minutes on a laptop's CPU on the
# embedded corpus, "full" is the paper's own setup for a GPU cluster on the user's tokenized data.
SCALES = ("cpu", "full")


class SpecError(_config.ConfigError):
    """A sweep spec is malformed; the message names the field, the run point or the budget."""


@dataclass
class Sweep:
    """A sweep specification (see the module docstring for each field)."""

    name: str
    base: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    variants: list[dict[str, Any]] | dict[str, dict[str, Any]] = field(default_factory=lambda: [{}])
    axes: dict[str, list] = field(default_factory=dict)
    budgets: list[float] = field(default_factory=list)
    sizes: list[dict[str, Any]] | dict[str, dict[str, Any]] = field(default_factory=list)
    ratio_range: tuple[float, float] | None = None
    ratio_params: str = "non_embedding"
    tolerance: float = 0.05
    description: str = ""
    figures: list[str] = field(default_factory=list)
    seeds: int = 1
    parts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RunPlan:
    """One expanded run: its resolved config and what it will cost.

    flops and budget are training FLOPs (3 x forward); tokens = steps * batch_size * context.
    """

    run_id: str
    cfg: ConfigDict
    variant: str
    size: str  # size preset label ("" outside isoFLOP mode)
    point: dict[str, Any]  # the axis values of this run, {key: value}
    budget: float | None  # the FLOP budget it is matched to, None without FLOP matching
    steps: int
    tokens: int
    flops: float
    flops_per_token: float  # forward FLOPs per token at the run's context
    params: int
    non_embedding_params: int
    state_size: int  # elements per sequence at the run's context
    context: int
    batch_size: int
    depends_on: str | None = None  # a run of the sweep that must finish first (train.init_from = "run:<id>")

    def summary(self) -> dict[str, Any]:
        """The run's columns for the results store (everything but the config)."""
        return {
            "id": self.run_id, "variant": self.variant, "size": self.size,
            "point": json.dumps(self.point, sort_keys=True, default=str), "budget": self.budget,
            "planned_flops": self.flops, "flops_per_token": self.flops_per_token, "total_steps": self.steps,
            "params": self.params, "non_embedding_params": self.non_embedding_params,
            "state_size": self.state_size, "context": self.context, "batch_size": self.batch_size,
            "depends_on": self.depends_on,
        }


# ----------------------------------------------------------------------------------------------------
# Loading


def load_spec(path: str | Path, scale: str | None = None) -> Sweep:
    """Import a sweep file and return its ``get_sweep()`` as a :class:`Sweep` (a dict is converted).

    ``scale``: for a spec whose ``get_sweep(scale=...)`` takes a scale (the paper reproductions of
    ``experiments/papers/``: ``"cpu"``, a scaled-down version for a laptop, and ``"full"``, the paper's own
    setup), the scale to build; None takes the function's default. The accepted values are the module's
    ``SCALES`` tuple when it defines one, else :data:`SCALES`. A scale given to a spec without scales, or a
    value not accepted, is a SpecError naming ``--scale``.
    """
    path = Path(path)
    module = _config.import_file(path, "get_sweep", kind="sweep spec", error=SpecError)
    takes_scale = "scale" in inspect.signature(module.get_sweep).parameters
    if scale is not None and not takes_scale:
        raise SpecError(f"--scale {scale}: sweep spec {str(path)!r} has no scales (its get_sweep() takes no scale "
                        "argument); run it without --scale")
    accepted = tuple(getattr(module, "SCALES", SCALES))
    if scale is not None and scale not in accepted:
        raise SpecError(f"--scale {scale!r}: must be one of {', '.join(accepted)} for {str(path)!r}")
    with _config.file_errors(path, "sweep spec", SpecError):  # its own exceptions name the file and line
        return as_sweep(module.get_sweep(**({} if scale is None else {"scale": scale})))


def as_sweep(obj) -> Sweep:
    if isinstance(obj, Sweep):
        return obj
    if isinstance(obj, dict):
        known = {f.name for f in dataclasses.fields(Sweep)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise SpecError(f"sweep spec: unknown field(s) {', '.join(unknown)}; fields are {', '.join(sorted(known))}")
        try:
            return Sweep(**obj)
        except TypeError as e:
            raise SpecError(f"sweep spec: {e}") from None
    raise SpecError(f"get_sweep() returned a {type(obj).__name__}: must return a Sweep or a dict of its fields")


def resolve_base(base: str) -> Path:
    """The base config file: absolute, else under the repository root (or a wheel's copy), else the working dir."""
    p = Path(base)
    for candidate in ([p] if p.is_absolute() else [_config.shipped(p), Path.cwd() / p]):
        if candidate.is_file():
            return candidate
    raise SpecError(f"sweep.base = {base!r}: no such config file (paths are relative to the repository root {ROOT})")


# Expansion


def _labelled(items, field_name: str) -> list[tuple[str, dict[str, Any]]]:
    """Variants or sizes as [(label, overrides)]: a dict keeps its labels, a list is labelled by values."""
    if isinstance(items, dict):
        pairs = list(items.items())
    elif isinstance(items, (list, tuple)):
        pairs = [(None, d) for d in items]
    else:
        raise SpecError(f"sweep.{field_name}: must be a list of {{key: value}} dicts or a dict {{label: {{...}}}}")
    out = []
    for i, (label, d) in enumerate(pairs):
        if not isinstance(d, dict):
            raise SpecError(f"sweep.{field_name}[{label if label is not None else i}] = {d!r}: must be a dict "
                            "of config overrides {key: value}")
        if label is None:
            label = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in d.items()) or "base"
        out.append((str(label), d))
    labels = [lab for lab, _ in out]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise SpecError(f"sweep.{field_name}: labels must be unique; repeated: {', '.join(dup)}")
    return out


def _check_spec(s: Sweep) -> None:
    if not isinstance(s.name, str) or not s.name.strip() or "/" in s.name:
        raise SpecError(f"sweep.name = {s.name!r}: must be a non-empty name without '/'")
    if isinstance(s.seeds, bool) or not isinstance(s.seeds, int) or s.seeds < 1:
        raise SpecError(f"sweep.seeds = {s.seeds!r}: must be an integer >= 1 (replicates of each point)")
    if s.seeds > 1 and any("train.seed" in [k.strip() for k in key.split(",")] for key in s.axes):
        raise SpecError("sweep.seeds: train.seed is also an axis; use one or the other")
    if not isinstance(s.overrides, dict):
        raise SpecError(f"sweep.overrides = {s.overrides!r}: must be a dict {{key: value}}")
    if not isinstance(s.axes, dict):
        raise SpecError(f"sweep.axes = {s.axes!r}: must be a dict {{key: [values]}}")
    for key, values in s.axes.items():
        if not isinstance(values, (list, tuple)):
            raise SpecError(f"sweep.axes[{key!r}] = {values!r}: must be a list of values")
        if len(values) == 0:
            raise SpecError(f"sweep.axes[{key!r}] is empty: give at least one value (or remove the axis)")
        n = len(key.split(","))
        if n > 1:
            for v in values:
                if not isinstance(v, (list, tuple)) or len(v) != n:
                    raise SpecError(f"sweep.axes[{key!r}]: value {v!r} must be a tuple of {n} values, one per key")
    if not isinstance(s.budgets, (list, tuple)):
        raise SpecError(f"sweep.budgets = {s.budgets!r}: must be a list of FLOP budgets")
    for b in s.budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
            raise SpecError(f"sweep.budgets: {b!r} is not a positive number of FLOPs")
    if len(set(s.budgets)) != len(s.budgets):
        raise SpecError(f"sweep.budgets = {list(s.budgets)}: repeated budget")
    if s.budgets:
        axis_keys = {k.strip() for key in s.axes for k in key.split(",")}
        for key in ("train.steps", "train.tokens"):
            if key in axis_keys or key in s.overrides:
                raise SpecError(f"sweep: {key} is set by the FLOP budgets; remove it from overrides/axes "
                                "(or drop the budgets)")
    if not isinstance(s.tolerance, (int, float)) or not 0 < s.tolerance < 1:
        raise SpecError(f"sweep.tolerance = {s.tolerance!r}: must be in (0, 1), e.g. 0.05 for 5%")
    if s.ratio_params not in RATIO_PARAMS:
        raise SpecError(f"sweep.ratio_params = {s.ratio_params!r}: must be one of {', '.join(RATIO_PARAMS)}")
    if s.sizes and not s.budgets:
        raise SpecError("sweep.sizes: isoFLOP mode needs sweep.budgets")
    from scaling.analysis import figures as _figures

    try:
        _figures.check_names(s.figures)
    except ValueError as e:
        raise SpecError(str(e)) from None
    if s.ratio_range is not None:
        if not s.sizes:
            raise SpecError("sweep.ratio_range: needs sweep.sizes (the model size presets to pick from)")
        try:
            lo, hi = s.ratio_range
            ok = 0 < lo <= hi
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise SpecError(f"sweep.ratio_range = {s.ratio_range!r}: must be (low, high) with 0 < low <= high")


def _apply(cfg: ConfigDict, overrides: dict[str, Any], where: str) -> None:
    try:
        _config.apply_overrides(cfg, list(overrides.items()))
    except _config.ConfigError as e:
        raise SpecError(f"{where}: {e}") from None


def _points(axes: dict[str, list]) -> list[dict[str, Any]]:
    """The crossed axis points, each {config key: value}; a comma-joined key spreads its tuples over its keys."""
    keys = list(axes)
    points = []
    for values in itertools.product(*(axes[k] for k in keys)):
        point: dict[str, Any] = {}
        for key, value in zip(keys, values, strict=True):
            subkeys = [k.strip() for k in key.split(",")]
            point.update(zip(subkeys, value, strict=True) if len(subkeys) > 1 else [(key, value)])
        points.append(point)
    return points


def _point_label(variant: str, size: str, point: dict[str, Any]) -> str:
    parts = [f"variant {variant!r}"] + ([f"size {size!r}"] if size else [])
    parts += [f"{k}={v!r}" for k, v in point.items()]
    return ", ".join(parts)


def _plan(cfg, variant, size, point, budget) -> RunPlan:
    from scaling.rundir import run_id

    t = cfg.train
    fpt = float(accounting.flops_per_token(cfg, t.context))
    steps = _config.total_steps(t)
    counts = accounting.params(cfg)
    return RunPlan(
        run_id=run_id(cfg), cfg=cfg, variant=variant, size=size, point=dict(point), budget=budget, steps=steps,
        tokens=steps * t.batch_size * t.context, flops=train_flops(steps, t.batch_size, t.context, fpt),
        flops_per_token=fpt, params=counts["total"], non_embedding_params=counts["non_embedding"],
        state_size=accounting.state_size(cfg, t.context), context=t.context, batch_size=t.batch_size)


def train_flops(steps: int, batch_size: int, context: int, flops_per_token: float) -> float:
    """Training FLOPs of ``steps`` optimizer steps: steps x batch x context tokens x 3 x forward FLOPs/token."""
    return float(steps) * batch_size * context * 3.0 * flops_per_token


def match_budget(cfg: ConfigDict, budget: float) -> tuple[int, float]:
    """(steps, forward FLOPs per token) spending ``budget`` training FLOPs at the config's batch and context.

    steps = round(budget / (3 * flops_per_token * batch_size * context)), at least one step's worth needed.
    """
    t = cfg.train
    fpt = float(accounting.flops_per_token(cfg, t.context))
    step_flops = train_flops(1, t.batch_size, t.context, fpt)
    return int(math.floor(budget / step_flops + 0.5)), fpt


def expand(spec: Sweep | dict, *, check_data: bool = True) -> list[RunPlan]:
    """All runs of a spec in a deterministic order (variant, size, axis point, budget), deduplicated by run id.

    ``check_data=False`` (``scaling sweep --dry-run``) checks every data field but ``data.path``, so that a
    paper-scale spec pointing at the user's tokenized data can be planned before the data exists.
    Raises SpecError (a ConfigError) naming the problem before anything runs.
    """
    s = as_sweep(spec)
    if s.parts:
        return _expand_parts(s, check_data)
    _check_spec(s)
    base = _config.load(resolve_base(s.base) if s.base is not None else None)
    _apply(base, s.overrides, "sweep.overrides")
    if s.seeds > 1:  # replicates: train.seed = base seed + 0..seeds-1, recorded in each point
        s = dataclasses.replace(s, axes={**s.axes, "train.seed": [int(base.train.seed) + k for k in range(s.seeds)]})
    variants = _labelled(s.variants, "variants")
    if not variants:
        raise SpecError("sweep.variants is empty: give at least one variant ({} for the base config)")
    sizes = _labelled(s.sizes, "sizes") if s.sizes else [("", {})]
    points = _points(s.axes)

    plans: list[RunPlan] = []
    seen: set[str] = set()
    missing: list[tuple[str, float]] = []  # isoFLOP: (point, budget) where no size is in the ratio range
    for variant, var_over in variants:
        for size, size_over in sizes:
            for point in points:
                where = _point_label(variant, size, point)
                cfg = copy.deepcopy(base)
                _apply(cfg, size_over, f"sweep.sizes[{size!r}]")
                _apply(cfg, var_over, f"sweep.variants[{variant!r}]")
                _apply(cfg, point, where)
                _validate(cfg, where, check_data)
                for budget in (s.budgets or [None]):
                    plan = _plan_budget(s, cfg, variant, size, point, budget, where, check_data)
                    if plan is None:
                        missing.append((_point_label(variant, "", point), budget))
                    elif plan.run_id not in seen:
                        seen.add(plan.run_id)
                        plans.append(plan)
    if s.sizes and s.ratio_range is not None:
        _check_isoflop_coverage(s, sizes, missing)
    return _resolve_init_from(plans)


PART_FIELDS = ("variants", "sizes", "axes", "budgets", "seeds", "ratio_range", "ratio_params", "overrides",
               "tolerance")


def _expand_parts(s: Sweep, check_data: bool) -> list[RunPlan]:
    if not isinstance(s.parts, (list, tuple)):
        raise SpecError(f"sweep.parts = {s.parts!r}: must be a list of dicts of sweep fields")
    plans: list[RunPlan] = []
    seen: set[str] = set()
    for i, part in enumerate(s.parts):
        if not isinstance(part, dict):
            raise SpecError(f"sweep.parts[{i}] = {part!r}: must be a dict of sweep fields")
        unknown = sorted(set(part) - set(PART_FIELDS))
        if unknown:
            raise SpecError(f"sweep.parts[{i}]: unknown field(s) {', '.join(unknown)}; a part may set "
                            f"{', '.join(PART_FIELDS)}")
        fields = {**part, "overrides": {**s.overrides, **part.get("overrides", {})}}
        try:
            for plan in expand(dataclasses.replace(s, parts=[], **fields), check_data=check_data):
                if plan.run_id not in seen:
                    seen.add(plan.run_id)
                    plans.append(plan)
        except SpecError as e:
            raise SpecError(f"sweep.parts[{i}]: {e}") from None
    return plans  # each part resolved its own train.init_from


VARIANT_PREFIX = "variant:"


def _resolve_init_from(plans: list[RunPlan]) -> list[RunPlan]:
    """``train.init_from = "variant:<label>"`` names the run of that variant at the same size, axis point and
    budget; it becomes ``"run:<id>"`` (a sibling run directory) and the plan depends on that run, so the
    launcher claims it only once that run is done. Changing init_from changes the run id."""
    by_key = {(p.variant, p.size, json.dumps(p.point, sort_keys=True, default=str), p.budget): p for p in plans}
    out: list[RunPlan] = []
    for p in plans:
        ref = p.cfg.train.get("init_from")
        if not (isinstance(ref, str) and ref.startswith(VARIANT_PREFIX)):
            out.append(p)
            continue
        label = ref[len(VARIANT_PREFIX):]
        where = _point_label(p.variant, p.size, p.point)
        src = by_key.get((label, p.size, json.dumps(p.point, sort_keys=True, default=str), p.budget))
        if src is None:
            variants = sorted({q.variant for q in plans})
            raise SpecError(f"{where}: train.init_from = {ref!r}: no run of variant {label!r} at this point "
                            f"(variants: {', '.join(variants)})")
        if src.cfg.train.get("init_from"):
            raise SpecError(f"{where}: train.init_from = {ref!r}: that run is itself initialised from another "
                            "run; chains are not supported")
        from scaling.convert import check_convertible

        try:
            check_convertible(src.cfg, p.cfg)
        except _config.ConfigError as e:
            raise SpecError(f"{where}: train.init_from = {ref!r}: {e}") from None
        cfg = copy.deepcopy(p.cfg)
        cfg.train.init_from = f"run:{src.run_id}"
        plan = _plan(cfg, p.variant, p.size, p.point, p.budget)
        out.append(dataclasses.replace(plan, depends_on=src.run_id))
    return out


def _validate(cfg: ConfigDict, where: str, check_data: bool = True) -> None:
    """scaling.config.validate, as a SpecError naming the run point; a missing data path says how to pass one.

    check_data=False: data.path is not looked at (the other data fields are still checked)."""
    try:
        if check_data:
            _config.validate(cfg)
        else:
            _config.validate_model(cfg.model)
            _config.validate_train(cfg.train)
            from scaling.data.config import SOURCES, check_eos_id, validate_data_config

            data = cfg.data.to_dict()
            if data.get("source") not in SOURCES:
                validate_data_config(data)  # names the field and the accepted sources
            validate_data_config({**data, "source": "stdlib", "path": None, "eos_id": None})
            check_eos_id(data.get("eos_id"), data.get("source"))
    except (_config.ConfigError, ValueError, FileNotFoundError) as e:
        msg = f"{where}: {e}"
        if str(e).startswith("data.path") and ("required for source" in str(e) or "no such file" in str(e)):
            msg += ("; pass your data to every run with `scaling sweep SPEC --set data.path=/path/to/tokens.bin` "
                    "(`--dry-run` plans without it)")
        raise SpecError(msg) from None


def _plan_budget(s: Sweep, cfg, variant, size, point, budget, where, check_data: bool = True) -> RunPlan | None:
    if budget is None:
        return _plan(cfg, variant, size, point, None)
    cfg = copy.deepcopy(cfg)
    steps, fpt = match_budget(cfg, budget)
    t = cfg.train
    one_step = train_flops(1, t.batch_size, t.context, fpt)
    if budget < one_step:
        raise SpecError(
            f"budget {budget:.3e} FLOPs is too small for {where}: one step of {t.batch_size} x {t.context} "
            f"tokens costs {one_step:.3e} FLOPs (3 x {fpt:,.0f} FLOPs/token); the minimum budget is "
            f"{one_step:.3e}")
    spent = train_flops(steps, t.batch_size, t.context, fpt)
    if abs(spent / budget - 1) > s.tolerance:
        need = one_step * (0.5 / s.tolerance)
        raise SpecError(
            f"budget {budget:.3e} FLOPs for {where} rounds to {steps} steps = {spent:.3e} FLOPs, "
            f"{100 * (spent / budget - 1):+.1f}% off (sweep.tolerance {100 * s.tolerance:.0f}%); raise the budget "
            f"to at least {need:.3e} FLOPs or lower train.batch_size")
    if s.sizes and s.ratio_range is not None:
        n = accounting.params(cfg)[s.ratio_params]
        ratio = steps * t.batch_size * t.context / n
        lo, hi = s.ratio_range
        if not lo <= ratio <= hi:
            return None
    t.steps, t.tokens = steps, 0
    _validate(cfg, f"{where}, budget {budget:.3e}", check_data)
    return _plan(cfg, variant, size, point, float(budget))


def _check_isoflop_coverage(s: Sweep, sizes, missing) -> None:
    """Every (variant, point, budget) keeps at least one size, else name the budget and the point."""
    n_sizes = len(sizes)
    for where, budget in dict.fromkeys(missing):
        if missing.count((where, budget)) == n_sizes:
            lo, hi = s.ratio_range
            raise SpecError(
                f"budget {budget:.3e} FLOPs, {where}: no size in sweep.sizes ({', '.join(lab for lab, _ in sizes)}) "
                f"gives D/N in [{lo}, {hi}]; add sizes or widen sweep.ratio_range")
