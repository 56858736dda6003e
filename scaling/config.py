"""Run configuration: loading config files, command-line overrides and validation.

A run config is an ``ml_collections.ConfigDict`` with three sections: ``model``, ``train`` and ``data``.
Config files are Python files with ``get_config()``. A file may define only some sections (a model
preset defines ``model``); :func:`load` fills the rest from the defaults here, applies overrides of the
form ``"model.retention.p=4"`` and validates the result. Every error is a :class:`ConfigError` that
names the field and the accepted values, raised before any compute starts.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import math
import sysconfig
import traceback
from pathlib import Path

import ml_collections
from ml_collections import ConfigDict

from scaling.fields import ConfigError, check_choice, check_int, fail  # noqa: F401 (ConfigError is re-exported)
from scaling.mixers import SPECS

# ----------------------------------------------------------------------------------------------------
# Where the shipped config files are

CHECKOUT = Path(__file__).resolve().parents[1]  # the repository root, when the package runs from its checkout
SHARE = Path(sysconfig.get_path("data")) / "share" / "statescale"  # an installed wheel's copy (pyproject data-files)


def shipped(rel: str | Path) -> Path:
    """A file or folder of the checkout's ``configs/`` (``rel`` relative to the repository root, e.g.
    ``configs/models``): the checkout's own where the package runs from it, else the copy a wheel installed under
    ``<prefix>/share/statescale/`` (pyproject.toml's data-files ship configs/models there)."""
    here = CHECKOUT / rel
    return here if here.exists() or not (SHARE / rel).exists() else SHARE / rel


# ----------------------------------------------------------------------------------------------------
# Defaults


def default_mixer_configs() -> dict[str, ConfigDict]:
    """Defaults for each mixer's section of the model config, from its spec (scaling/mixers/)."""
    return {spec.key: ConfigDict(spec.defaults()) for spec in SPECS.values()}


def default_model_config() -> ConfigDict:
    cfg = ConfigDict({
        "name": "model",
        "vocab_size": 259,  # bytes + PAD, BOS, EOS (scaling.data.tokenizer); a token file's ids must lie below it
        "d_model": 128,
        "n_layers": 2,
        "pattern": "A",
        "d_ff": 0,  # 0: SwiGLU hidden = 8/3 d_model rounded up to a multiple of 32
        "tie_embeddings": True,
        "dtype": "float32",  # compute dtype
        "param_dtype": "float32",
        "kernel": "xla",
        "norm_eps": 1e-6,
        "init_std": 0.02,
        # True: the whole repeats of the pattern run under one lax.scan over stacked parameters (compile time flat
        # in depth, same logits); its checkpoints load only into a scan_layers model. None: False (unhashed)
        "scan_layers": None,
        # True: an RMSNorm on the embeddings before the first block (the sympow article's extra norm); False: none
        "embed_norm": False,
        "mlp": True,  # False: blocks are the mixer alone, no SwiGLU MLP (Mamba's and Mamba-2's stacks)
    })
    for key, sub in default_mixer_configs().items():
        cfg[key] = sub
    return cfg


def default_train_config() -> ConfigDict:
    return ConfigDict({
        "steps": 200,  # optimizer steps; ignored when tokens > 0
        "tokens": 0,  # token budget: steps = ceil(tokens / (batch_size * context))
        "batch_size": 16, "context": 256,
        "lr": 3e-3,  # peak learning rate
        "min_lr_ratio": 0.1,  # cosine decays to lr * min_lr_ratio
        # an absolute floor of the cosine instead (e.g. 1e-5, Mamba's recipe); None: lr * min_lr_ratio
        "min_lr": None,
        # "cosine": linear warm-up then cosine decay to the floor; "constant": linear warm-up then lr to the end
        "schedule": "cosine",
        "warmup_steps": 20,
        "weight_decay": 0.1,  # AdamW; norms, biases and gains are not decayed
        "b1": 0.9, "b2": 0.95,
        "grad_clip": 1.0,  # global norm
        "eval_every": 50, "checkpoint_every": 50, "keep_checkpoints": 3, "log_every": 10,
        "seed": 0,
        # a run directory whose newest parameters start this run (fresh optimizer), converted where the layer
        # patterns differ (attention -> power retention, scaling/convert.py); "run:<id>" is a sibling run
        # directory (a sweep's runs/<id>). None: random initialisation.
        "init_from": None,
        # PowerCoder-style metamorphosis: the converted layers output (1 - a) softmax attention + a power retention
        # of the same q, k, v, a rising linearly from 0 to 1 over this many steps; None: the abrupt swap
        "blend_steps": None,
        # contexts (tokens) to evaluate at after the last step, e.g. (128, 256, 512, 1024): per-position loss
        # and the task accuracy at each go to <workdir>/eval_contexts.json (length generalisation); None: skip
        "eval_contexts": None,
        # the device mesh (scaling/sharding.py): axis sizes of data, fsdp, tensor, e.g. {"data": -1, "fsdp": 2};
        # None: data parallel over every device
        "mesh": None,
        # gradient accumulation: the batch runs as this many sequential microbatches (a lax.scan), then one
        # optimizer update equal to the full batch's; batch_size must be a multiple of microbatches x devices.
        # None: 1 (None keeps the run ids of runs recorded before the field)
        "microbatches": None,
        # activation recomputation in the backward pass: "none" | "block" (jax.checkpoint around each block) | an
        # argument-free jax.checkpoint_policies name ("dots_saveable", "nothing_saveable", ...). None: "none"
        "remat": None,
    })


def default_config() -> ConfigDict:
    """A complete run config with every section at its default."""
    from scaling.data.config import DATA_DEFAULTS

    cfg = ConfigDict()
    cfg.model = default_model_config()
    cfg.train = default_train_config()
    cfg.data = ConfigDict(dict(DATA_DEFAULTS))
    return cfg


# ----------------------------------------------------------------------------------------------------
# Loading


def import_file(path: str | Path, function: str, *, kind: str = "config file", error=None):
    """Import the Python file ``path`` (a config or sweep spec) and return the module; it must define
    ``function``. A missing file or function, a syntax error or an exception while importing raises ``error``
    (default ConfigError) naming ``kind``, the path and (for the last two) the line."""
    error = error or ConfigError
    path = Path(path)
    if path.is_dir():
        raise error(f"{kind} {str(path)!r} is a directory: give a Python file with {function}()")
    if not path.is_file():
        raise error(f"{kind} {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_statescale_{function}_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise error(f"{kind} {str(path)!r}: not a Python file (.py) with {function}()")
    module = importlib.util.module_from_spec(spec)
    with file_errors(path, kind, error):
        spec.loader.exec_module(module)
    if not hasattr(module, function):
        raise error(f"{kind} {str(path)!r} has no {function}()")
    return module


@contextlib.contextmanager
def file_errors(path: str | Path, kind: str = "config file", error=None):
    """Turn an exception raised by the code of the user's file ``path`` (importing it, or its get_config())
    into one ``error`` naming the file and the line: ``config file 'x.py' line 3: invalid syntax``.
    ConfigErrors (already naming a field) pass through."""
    error = error or ConfigError
    try:
        yield
    except ConfigError:
        raise
    except SyntaxError as e:  # the file itself does not parse
        where = f" line {e.lineno}" if e.lineno else ""
        raise error(f"{kind} {str(path)!r}{where}: {e.msg}") from None
    except Exception as e:
        target = Path(path).resolve()
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == target]
        where = f" line {lines[-1]}" if lines else ""
        text = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{kind} {str(path)!r}{where}: {text}") from None


def _load_file(path: str | Path) -> ConfigDict:
    module = import_file(path, "get_config")
    with file_errors(path):
        cfg = module.get_config()
    if not hasattr(cfg, "items"):
        raise ConfigError(f"config file {str(path)!r}: get_config() returned a value of type {type(cfg).__name__}; "
                          "it must return a ConfigDict (or dict) of model / train / data sections")
    return cfg


def merge(base: ConfigDict, update: ConfigDict | dict, prefix: str = "") -> ConfigDict:
    """Recursively overlay ``update`` on ``base``; unknown keys are a ConfigError."""
    for key, value in update.items():
        field = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{field}: unknown field; known fields here: {', '.join(sorted(base.keys()))}")
        if isinstance(base[key], ConfigDict) and isinstance(value, (ConfigDict, dict)):
            merge(base[key], value, prefix=f"{field}.")
        else:
            base[key] = value
    return base


def parse_override(text: str) -> tuple[str, object]:
    """``"model.retention.p=4"`` -> ("model.retention.p", 4). Values are Python literals or bare strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: must look like key=value, e.g. model.retention.p=4")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def apply_overrides(cfg: ConfigDict, overrides) -> ConfigDict:
    for item in overrides or ():
        key, value = parse_override(item) if isinstance(item, str) else item
        *parents, leaf = key.split(".")
        node = cfg
        for i, part in enumerate(parents):
            if part not in node or not isinstance(node[part], ConfigDict):
                known = ", ".join(sorted(k for k in node.keys() if isinstance(node[k], ConfigDict))) or "none"
                raise ConfigError(f"{'.'.join(parents[: i + 1])}: unknown config section in override {key!r}; "
                                  f"sections here: {known}")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"{key}: unknown field; known fields here: {', '.join(sorted(node.keys()))}")
        old = node[leaf]
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            node[leaf] = value
        except TypeError as e:
            kind = type(old).__name__
            raise ConfigError(f"{key} = {value!r}: expected a{'n' if kind[0] in 'aeiou' else ''} {kind}") from e
    return cfg


def load(path: str | Path | None = None, overrides=None) -> ConfigDict:
    """Load a config file, fill missing sections with defaults, apply overrides, validate.

    Args:
      path: a Python file with ``get_config()``, or None for the defaults alone.
      overrides: strings ``"a.b=value"`` or (key, value) pairs, applied in order.
    Raises:
      ConfigError naming the first bad field.
    """
    cfg = default_config()
    if path is not None:
        merge(cfg, _load_file(path))
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------------
# Validation

DTYPES = ("float32", "bfloat16")
KERNELS = ("xla", "pallas")  # "pallas": the chunked forms run pallas_kernels (docs/kernels.md)
SCHEDULES = ("cosine", "constant")  # train.schedule


def validate_model(m: ConfigDict, prefix: str = "model") -> None:
    check_int(f"{prefix}.vocab_size", m.vocab_size)
    check_int(f"{prefix}.d_model", m.d_model)
    check_int(f"{prefix}.n_layers", m.n_layers)
    check_int(f"{prefix}.d_ff", m.d_ff, lo=0)
    check_choice(f"{prefix}.dtype", m.dtype, DTYPES)
    check_choice(f"{prefix}.param_dtype", m.param_dtype, DTYPES)
    check_choice(f"{prefix}.kernel", m.kernel, KERNELS)
    if not isinstance(m.pattern, str) or not m.pattern:
        fail(f"{prefix}.pattern", m.pattern, f"must be a non-empty string of letters {', '.join(SPECS)}")
    for letter in m.pattern:
        if letter not in SPECS:
            accepted = ", ".join(f"{k} ({v.key})" for k, v in SPECS.items())
            fail(f"{prefix}.pattern", m.pattern, f"unknown letter {letter!r}; letters are {accepted}")
    if m.get("scan_layers") not in (None, True, False):
        fail(f"{prefix}.scan_layers", m.scan_layers, "must be True, False or None (False)")
    for name in ("embed_norm", "mlp"):
        if m.get(name, name == "mlp") not in (True, False):
            fail(f"{prefix}.{name}", m[name], "must be True or False")
    if m.norm_eps <= 0:
        fail(f"{prefix}.norm_eps", m.norm_eps, "must be > 0")
    for letter in sorted(set(m.pattern)):
        spec = SPECS[letter]
        spec.validate(m, m[spec.key], f"{prefix}.{spec.key}")


def validate_train(t: ConfigDict, prefix: str = "train") -> None:
    for name in ("steps", "tokens", "eval_every", "checkpoint_every", "keep_checkpoints", "log_every",
                 "warmup_steps", "seed"):
        check_int(f"{prefix}.{name}", t[name], lo=0)
    for name in ("batch_size", "context"):
        check_int(f"{prefix}.{name}", t[name])
    if t.steps == 0 and t.tokens == 0:
        fail(f"{prefix}.steps", t.steps, "must be >= 1 unless train.tokens sets a token budget")
    for name in ("eval_every", "checkpoint_every", "log_every", "keep_checkpoints"):
        if t[name] < 1:
            fail(f"{prefix}.{name}", t[name], "must be an integer >= 1")
    if not t.lr > 0:
        fail(f"{prefix}.lr", t.lr, "must be > 0")
    if not 0 <= t.min_lr_ratio <= 1:
        fail(f"{prefix}.min_lr_ratio", t.min_lr_ratio, "must be in [0, 1]")
    lo = t.get("min_lr")
    if lo is not None and (isinstance(lo, bool) or not isinstance(lo, (int, float)) or not 0 <= lo <= t.lr):
        fail(f"{prefix}.min_lr", lo, f"must be None (lr * min_lr_ratio) or a learning rate in [0, train.lr = {t.lr}]")
    check_choice(f"{prefix}.schedule", t.get("schedule", "cosine"), SCHEDULES)
    if t.weight_decay < 0:
        fail(f"{prefix}.weight_decay", t.weight_decay, "must be >= 0")
    for name in ("b1", "b2"):
        if not 0 <= t[name] < 1:
            fail(f"{prefix}.{name}", t[name], "must be in [0, 1)")
    if not t.grad_clip > 0:
        fail(f"{prefix}.grad_clip", t.grad_clip, "must be > 0")
    init_from = t.get("init_from")
    if init_from is not None and (not isinstance(init_from, str) or not init_from.strip()):
        fail(f"{prefix}.init_from", init_from, "must be None or a run directory (a path, or run:<id> for a "
              "sibling run of a sweep)")
    blend = t.get("blend_steps")
    if blend is not None and (isinstance(blend, bool) or not isinstance(blend, int) or blend < 1 or not init_from):
        fail(f"{prefix}.blend_steps", blend, "must be None or an integer >= 1 of a converted run (train.init_from "
              "set): the steps over which its attention output blends into power retention")
    from scaling.sharding import MeshError, check_mesh

    try:
        check_mesh(t.get("mesh"))
    except MeshError as e:
        raise ConfigError(str(e)) from None
    k = t.get("microbatches")
    if k is not None:
        check_int(f"{prefix}.microbatches", k)
        if t.batch_size % k:
            fail(f"{prefix}.microbatches", k, f"must divide train.batch_size = {t.batch_size}")
    remat = t.get("remat")
    if remat is not None:
        from scaling.steps import remat_choices

        check_choice(f"{prefix}.remat", remat, remat_choices())
    ec = t.get("eval_contexts")
    if ec is not None:
        if isinstance(ec, str) or not isinstance(ec, (list, tuple)) or not ec or \
                any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in ec):
            fail(f"{prefix}.eval_contexts", ec, "must be None or a non-empty list of positive integers (tokens)")


def validate(cfg: ConfigDict) -> None:
    """Check every section of a run config; raise ConfigError naming the first bad field."""
    from scaling.data.config import validate_data_config

    validate_model(cfg.model)
    if cfg.model.param_dtype != "float32":  # a run config trains: AdamW updates float32 master parameters
        fail("model.param_dtype", cfg.model.param_dtype, "training keeps float32 parameters and optimizer state; "
              "set model.dtype = 'bfloat16' for bf16 compute (mixed precision)")
    validate_train(cfg.train)
    if cfg.model.get("scan_layers") and cfg.train.get("init_from"):
        fail("model.scan_layers", True, "train.init_from reads (and converts) unstacked parameters; "
              "initialise a model without scan_layers")
    from scaling.data.synthetic import check_task

    try:
        c = validate_data_config(cfg.data)
        # a synthetic task must fit the context(s) it runs at and the model's vocabulary
        check_task(cfg.data, context=cfg.train.context, vocab_size=cfg.model.vocab_size)
        for ctx in cfg.train.get("eval_contexts") or ():
            check_task(cfg.data, context=ctx, field="train.eval_contexts")
        if c["source"] == "tokens":
            check_token_vocab(c, cfg.model.vocab_size)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None


def check_token_vocab(c: dict, vocab_size: int) -> None:
    """A token file (its metadata, or a scan for its largest id) must fit ``model.vocab_size``: one ConfigError
    naming both values, before any compute."""
    from scaling.data.tokens import spec_of

    spec = spec_of(c)
    if vocab_size <= spec.top_id:
        hint = f"; its tokenizer has {spec.vocab_size:,} tokens" if spec.vocab_size else ""
        raise ConfigError(f"model.vocab_size = {vocab_size}: smaller than the largest token id {spec.top_id} of "
                          f"data.path = {c['path']!r}; must be >= {spec.top_id + 1}{hint}")


def total_steps(t: ConfigDict) -> int:
    """Optimizer steps of a run: train.steps, or the token budget in whole steps (rounded up)."""
    return -(-t.tokens // (t.batch_size * t.context)) if t.tokens else t.steps


def d_ff(m: ConfigDict) -> int:
    """SwiGLU hidden width: explicit, or 8/3 d_model rounded up to a multiple of 32."""
    return m.d_ff if m.d_ff else int(math.ceil(8 * m.d_model / 3 / 32) * 32)


def layer_pattern(m: ConfigDict) -> str:
    """The pattern repeated (and cut) to n_layers letters: "MMMA" with 8 layers -> "MMMAMMMA"."""
    reps = -(-m.n_layers // len(m.pattern))
    return (m.pattern * reps)[: m.n_layers]


def load_run_config(workdir: str | Path, overrides=None) -> ConfigDict:
    """The config of a run workdir (its config.json, read by scaling.rundir), with overrides applied and validated."""
    from scaling import rundir

    if not rundir.has_config(workdir):
        raise ConfigError(f"{str(workdir)!r} is a directory without config.json: give a config file or a run workdir")
    try:
        d = rundir.read_config(workdir)["config"]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg = default_config()
    merge(cfg, _tuples(d))
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def from_dict(d: dict) -> ConfigDict:
    """A run config from its JSON form (config.json): defaults overlaid with it, then validated."""
    cfg = default_config()
    merge(cfg, _tuples(d))
    validate(cfg)
    return cfg


def _tuples(d):
    """JSON turns tuples into lists; ConfigDict fields typed as tuples want them back."""
    if isinstance(d, dict):
        return {k: _tuples(v) for k, v in d.items()}
    return tuple(d) if isinstance(d, list) else d


def to_dict(cfg: ConfigDict) -> dict:
    return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
