"""The data config: every field's default and its validation, in one place.

A run's ``data`` section (``configs/data/stdlib.py`` spells the defaults out; formats in
:mod:`scaling.data.sources`, :mod:`scaling.data.tokens` and :mod:`scaling.data.pipeline`):

================  =============================================================================================
``source``        a corpus (:data:`SOURCES`) or a synthetic recall task (:data:`TASKS`, scaling/data/synthetic.py)
``path``          None for ``stdlib`` and the tasks; a directory (``text_dir``), a ``.jsonl`` / ``.jsonl.gz`` /
                  ``.jsonl.zst`` file (``jsonl``), a ``.parquet`` file or a directory of them (``parquet``), a
                  ``.npy`` / ``.bin`` token file (``tokens``)
``glob``          files read by ``text_dir``, relative to ``path``
``text_field``    the string field of each JSONL record, or the text column of the parquet files
``token_dtype``   dtype of a raw ``.bin`` token file (a ``.npy`` carries its own; a metadata file's dtype wins)
``eos_id``        the id between the documents of a token file without metadata, e.g. 50256 for GPT-2 ids
``val_fraction``  share of documents in validation, by a stable hash of the document key
``packing``       True: documents concatenated and cut into windows, kept apart by segment ids; False: windows
                  within documents, padded. None (default): :func:`default_packing` of the source
``eval_tokens``   size of the fixed held-out evaluation set (rows of ``context`` tokens spread over validation)
``task``          the synthetic tasks' parameters (:data:`TASK_DEFAULTS`); corpora ignore them
================  =============================================================================================

:func:`validate_data_config` returns the resolved config as a plain dict (defaults filled in, ``path`` absolute,
``packing`` a bool) or raises one ValueError naming the field and what it accepts (FileNotFoundError for a missing
path). Nothing is read beyond a ``stat`` of ``data.path``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

SOURCES = ("stdlib", "text_dir", "jsonl", "parquet", "tokens")
TASKS = ("mqar", "selective_copy", "induction", "needle")
TOKEN_DTYPES = ("uint8", "uint16", "uint32", "int32", "int64")
TOKEN_SUFFIXES = (".npy", ".bin")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIX = ".parquet"

# Defaults of every data.task field (each task reads the ones scaling/data/synthetic.py names).
TASK_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128,  # mqar / selective_copy / induction: tokens in [0, vocab_size)
    "num_kv_pairs": 8,  # mqar
    "num_queries": None,  # mqar: how many keys are queried; None = all num_kv_pairs
    "power_a": 0.01,  # mqar: query slot g drawn with probability ∝ g ** (power_a - 1)
    "num_tokens": 8,  # selective_copy: data tokens to copy
    "depth": None,  # needle: insertion depth in [0, 1]; None = uniform per example
    "needle_digits": 6,  # needle: digits of the value
    "eval_seed": 1234,  # held-out evaluation stream
}

# Defaults of every data config field; configs/data/stdlib.py spells the same values out.
DATA_DEFAULTS: dict[str, Any] = {
    "source": "stdlib",
    "path": None,
    "glob": "**/*.txt",
    "text_field": "text",
    "token_dtype": "uint16",
    # the id between the documents of a token file without metadata (50256 for GPT-2 ids); None: read the metadata
    "eos_id": None,
    "val_fraction": 0.02,
    "packing": None,  # None: default_packing(source)
    # the fixed held-out evaluation set: ceil(eval_tokens / context) rows spread evenly over the validation
    # stream, the same rows for every run of that data source and context whatever its batch size
    "eval_tokens": 65536,
    # parameters of the synthetic tasks (data.source in TASKS); text sources ignore them
    "task": dict(TASK_DEFAULTS),
}

# Sources whose documents are usually short (web text, token files of many documents): packed by default.
# The stdlib's files are long (18k bytes on average) and a text directory usually holds long files: windows within
# documents waste little on padding there and shuffle over the whole corpus (see scaling/data/pipeline.py).
PACKED_BY_DEFAULT = ("jsonl", "parquet", "tokens")


def default_packing(source: str) -> bool:
    """``data.packing`` when it is None: True for :data:`PACKED_BY_DEFAULT`, else False."""
    return source in PACKED_BY_DEFAULT


def _fail(field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{field} = {value!r}: {why}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def cfg_items(cfg: Any) -> dict[str, Any]:
    """A ConfigDict or mapping as a plain dict (None -> {})."""
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        return dict(cfg.to_dict())
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"data config: got {type(cfg).__name__}; must be a ConfigDict or a mapping")


def task_params(data: Mapping[str, Any], *, prefix: str = "data") -> dict[str, Any]:
    """``data.task`` with defaults filled in and every field checked (context-free checks only).

    ``data`` is the data config as a dict. Raises ValueError naming ``data.task.<field>``.
    """
    given = data.get("task") or {}
    if hasattr(given, "to_dict"):
        given = given.to_dict()
    if not isinstance(given, Mapping):
        raise _fail(f"{prefix}.task", given, f"must be a mapping with fields {', '.join(TASK_DEFAULTS)}")
    unknown = sorted(set(given) - set(TASK_DEFAULTS))
    if unknown:
        raise ValueError(f"{prefix}.task.{unknown[0]}: unknown field; accepted fields: {', '.join(TASK_DEFAULTS)}")
    p = {**TASK_DEFAULTS, **given}
    f = f"{prefix}.task"
    for name, lo in (("vocab_size", 4), ("num_kv_pairs", 1), ("num_tokens", 1), ("needle_digits", 1)):
        if not _is_int(p[name]) or p[name] < lo:
            raise _fail(f"{f}.{name}", p[name], f"must be an integer >= {lo}")
    if not _is_int(p["eval_seed"]) or not 0 <= p["eval_seed"] < 2**32:
        raise _fail(f"{f}.eval_seed", p["eval_seed"], "must be an integer in [0, 2**32 - 1]")
    nq = p["num_queries"]
    if nq is not None and (not _is_int(nq) or not 1 <= nq <= p["num_kv_pairs"]):
        raise _fail(f"{f}.num_queries", nq, f"must be None (all) or an integer in [1, num_kv_pairs = "
                                            f"{p['num_kv_pairs']}]")
    pa = p["power_a"]
    if isinstance(pa, bool) or not isinstance(pa, int | float) or not 0 < pa <= 1:
        raise _fail(f"{f}.power_a", pa, "must be a number in (0, 1] (1 = uniform query placement)")
    d = p["depth"]
    if d is not None and (isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d <= 1):
        raise _fail(f"{f}.depth", d, "must be None (uniform) or a number in [0, 1]")
    half = p["vocab_size"] // 2
    if data.get("source") == "mqar" and p["num_kv_pairs"] > half - 1:
        raise _fail(f"{f}.num_kv_pairs", p["num_kv_pairs"],
                    f"needs that many distinct keys in [1, vocab_size // 2 = {half}): at most {half - 1}; "
                    "raise data.task.vocab_size")
    return p


def check_eos_id(eos: Any, source: str, prefix: str = "data") -> None:
    """``data.eos_id``: None, or an integer >= 0 for source ``tokens`` (a token file without metadata)."""
    if eos is not None and (isinstance(eos, bool) or not isinstance(eos, int) or eos < 0):
        raise ValueError(f"{prefix}.eos_id = {eos!r}: must be None or an integer >= 0 (the id between the documents "
                         "of a token file)")
    if eos is not None and source != "tokens":
        raise ValueError(f"{prefix}.eos_id = {eos!r}: only for source 'tokens' (a token file without metadata); "
                         f"must be None for source {source!r}")


_WHAT = {
    "text_dir": "a directory of text files",
    "jsonl": f"a {' / '.join(JSONL_SUFFIXES)} file",
    "parquet": "a .parquet file or a directory of them",
    "tokens": "a .npy or .bin file",
}


def _check_path(c: dict[str, Any], prefix: str) -> None:
    source, path = c["source"], c["path"]
    bad = lambda why: _fail(f"{prefix}.path", path, why)
    if source == "stdlib" or source in TASKS:
        if path is not None:
            what = "the running Python's standard library" if source == "stdlib" else "a synthetic task"
            raise bad(f"must be None for source {source!r} ({what})")
        return
    if path is None or (isinstance(path, str) and not path):
        raise bad(f"required for source {source!r}: {_WHAT[source]}")
    if not isinstance(path, str | os.PathLike):
        raise bad("must be a string path")
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise FileNotFoundError(f"{prefix}.path = {str(path)!r}: no such file or directory ({_WHAT[source]})")
    if source == "text_dir" and not p.is_dir():
        raise bad("must be a directory for source 'text_dir'")
    if source in ("jsonl", "tokens") and not p.is_file():
        raise bad(f"must be a file for source {source!r}")
    if source == "tokens" and p.suffix not in TOKEN_SUFFIXES:
        raise bad(f"must end in one of {', '.join(TOKEN_SUFFIXES)} for source 'tokens'")
    if source == "jsonl" and not p.name.endswith(JSONL_SUFFIXES):
        raise bad(f"must end in one of {', '.join(JSONL_SUFFIXES)} for source 'jsonl'")
    if source == "parquet" and p.is_file() and p.suffix != PARQUET_SUFFIX:
        raise bad("must be a .parquet file or a directory of them for source 'parquet'")
    c["path"] = str(p)


def validate_data_config(cfg: Any, *, prefix: str = "data") -> dict[str, Any]:
    """Checks a data config and returns it resolved: a plain dict with defaults filled in, path absolute, packing
    a bool.

    Raises ValueError naming the field (``data.source = 'foo': must be one of ...``) and FileNotFoundError
    for a path that does not exist. Nothing is read beyond a ``stat`` of ``data.path``.
    """
    given = cfg_items(cfg)
    if set(given) == {prefix} and isinstance(given[prefix], Mapping):
        raise ValueError(f"data config: got a whole config with a {prefix!r} section; pass cfg.{prefix}")
    unknown = sorted(set(given) - set(DATA_DEFAULTS))
    if unknown:
        raise ValueError(f"{prefix}.{unknown[0]}: unknown field; accepted fields: {', '.join(DATA_DEFAULTS)}")
    c = {**DATA_DEFAULTS, **given}
    c["task"] = task_params(c, prefix=prefix)

    def bad(field: str, why: str) -> ValueError:
        return _fail(f"{prefix}.{field}", c[field], why)

    if c["source"] not in SOURCES + TASKS:
        raise bad("source", f"must be one of {', '.join(SOURCES)} (corpora) or {', '.join(TASKS)} "
                            "(synthetic tasks, scaling.data.synthetic)")
    for field in ("glob", "text_field"):
        if not isinstance(c[field], str) or not c[field]:
            raise bad(field, "must be a non-empty string")
    if c["token_dtype"] not in TOKEN_DTYPES:
        raise bad("token_dtype", f"must be one of {', '.join(TOKEN_DTYPES)}")
    check_eos_id(c["eos_id"], c["source"], prefix)
    vf = c["val_fraction"]
    if isinstance(vf, bool) or not isinstance(vf, int | float) or not 0.0 < vf < 1.0:
        raise bad("val_fraction", "must be a number in the open interval (0, 1)")
    if c["packing"] is None:
        c["packing"] = default_packing(c["source"])
    if not isinstance(c["packing"], bool):
        raise bad("packing", f"must be True, False or None (the source's default, {default_packing(c['source'])})")
    et = c["eval_tokens"]
    if isinstance(et, bool) or not isinstance(et, int) or et < 1:
        raise bad("eval_tokens", "must be an integer >= 1 (tokens of the held-out evaluation set)")
    _check_path(c, prefix)
    return c
