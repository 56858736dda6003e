"""Corpus sources: where documents come from, and the train / validation split.

A *document* is a :class:`Document`: a stable string ``key`` and a 1-D array ``ids`` of token ids *without*
BOS/EOS (the pipeline adds them). Byte sources hold ``np.uint8`` arrays of the raw file bytes; the
``tokens`` source holds views into a memory-mapped array of its ``token_dtype``.

Sources (``data.source``)
-------------------------
``stdlib`` (default, no download, on every machine)
    Every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]`` (the running Python's standard library,
    ~1,800 files / ~30 MB for CPython 3.11), skipping ``site-packages``, ``dist-packages``,
    ``__pycache__`` and any directory holding a ``pyvenv.cfg`` (a virtual environment). One file is one
    document; its key is its path relative to the stdlib root in POSIX form (``"json/decoder.py"``).
    ``data.path`` must be None.
``text_dir``
    Every file matching ``data.glob`` (default ``"**/*.txt"``, recursive) under the directory
    ``data.path``. One file is one document, keyed by its relative POSIX path. Bytes are taken as they are
    on disk (any encoding).
``jsonl``
    The file ``data.path``: one JSON object per line; the string field ``data.text_field`` (default
    ``"text"``) is one document, encoded as UTF-8. The key is the 1-based line number (``"line:12"``);
    blank lines are skipped.
``tokens``
    A pre-tokenized 1-D array of ids (scaling/data/tokens.py): ``data.path`` ending in ``.npy`` (read with
    ``np.load(mmap_mode="r")``, dtype from the file) or ``.bin`` (raw, read with ``np.memmap`` as
    ``data.token_dtype``, default ``uint16``). Its metadata ``<path>.meta.json`` (written by ``scaling tokenize``)
    names the tokenizer and its BOS / EOS / PAD ids; a file without one (nanoGPT's ``train.bin``) needs
    ``data.eos_id``, the id between its documents. Documents are the runs between EOS tokens (a leading BOS in a
    run is dropped, empty runs skipped), keyed ``"doc:<run index>"``; they enter the stream wrapped in the file's
    own BOS (if any) and EOS, and windows are padded with its PAD (else EOS). Without EOS the array is one long
    stream (key ``"stream"``). ``model.vocab_size`` must exceed the largest id (scaling.config.validate).

Empty documents (no bytes) are skipped everywhere.

Split
-----
A document goes to validation iff ``sha1(key)`` read as a fraction in [0, 1) is below ``data.val_fraction``,
so the split depends on neither file order nor machine. A single long ``tokens`` stream cannot be split by
key; its last ``ceil(val_fraction * n)`` tokens are the validation split. Both splits must come out
non-empty, else a ValueError names ``data.val_fraction``.

Loaded corpora are cached in-process (``functools.lru_cache`` keyed on the resolved config), so pipelines
built repeatedly in one process read the files once; ``load_corpus.cache_clear()`` drops the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scaling.data import tokens as _tokens
from scaling.data.synthetic import TASK_DEFAULTS, TASKS, task_params
from scaling.data.tokenizer import BOS, EOS, N_BYTES, PAD, VOCAB_SIZE

SOURCES = ("stdlib", "text_dir", "jsonl", "tokens")
TOKEN_DTYPES = ("uint8", "uint16", "uint32", "int32", "int64")
TOKEN_SUFFIXES = (".npy", ".bin")
STREAM_KEY = "stream"

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
    "packing": False,  # the stdlib files are long: whole-corpus window shuffle (see pipeline.py)
    # the fixed held-out evaluation set: ceil(eval_tokens / context) rows spread evenly over the validation
    # stream, the same rows for every run of that data source and context whatever its batch size
    "eval_tokens": 65536,
    # parameters of the synthetic tasks (data.source in scaling.data.synthetic.TASKS); text sources ignore them
    "task": dict(TASK_DEFAULTS),
}

_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: ``key`` (stable across machines and file orders) and ``ids`` ``[n]`` without BOS/EOS."""

    key: str
    ids: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Documents of one resolved data config, split into ``train`` and ``validation`` (both non-empty)."""

    source: str
    train: tuple[Document, ...]
    validation: tuple[Document, ...]
    # (BOS or None, EOS, PAD): the ids that wrap each document in the stream and pad windows
    specials: tuple[int | None, int, int] = (BOS, EOS, PAD)

    def split(self, name: str) -> tuple[Document, ...]:
        if name not in ("train", "validation"):
            raise ValueError(f"split = {name!r}: must be one of train, validation")
        return self.train if name == "train" else self.validation


# ----------------------------------------------------------------------------------------------------------
# Config validation


def _cfg_items(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        return dict(cfg.to_dict())
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"data config: got {type(cfg).__name__}; must be a ConfigDict or a mapping")


def check_eos_id(eos: Any, source: str, prefix: str = "data") -> None:
    """``data.eos_id``: None, or an integer >= 0 for source ``tokens`` (a token file without metadata)."""
    if eos is not None and (isinstance(eos, bool) or not isinstance(eos, int) or eos < 0):
        raise ValueError(f"{prefix}.eos_id = {eos!r}: must be None or an integer >= 0 (the id between the documents "
                         "of a token file)")
    if eos is not None and source != "tokens":
        raise ValueError(f"{prefix}.eos_id = {eos!r}: only for source 'tokens' (a token file without metadata); "
                         f"must be None for source {source!r}")


def validate_data_config(cfg: Any, *, prefix: str = "data") -> dict[str, Any]:
    """Checks a data config and returns it resolved: a plain dict with defaults filled in, path absolute.

    Raises ValueError naming the field (``data.source = 'foo': must be one of ...``) and FileNotFoundError
    for a path that does not exist. Nothing is read beyond a ``stat`` of ``data.path``.
    """
    given = _cfg_items(cfg)
    if set(given) == {prefix} and isinstance(given[prefix], Mapping):
        raise ValueError(f"data config: got a whole config with a {prefix!r} section; pass cfg.{prefix}")
    unknown = sorted(set(given) - set(DATA_DEFAULTS))
    if unknown:
        raise ValueError(
            f"{prefix}.{unknown[0]}: unknown field; accepted fields: {', '.join(DATA_DEFAULTS)}"
        )
    c = {**DATA_DEFAULTS, **given}
    c["task"] = task_params(c, prefix=prefix)

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"{prefix}.{field} = {c[field]!r}: {why}")

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
    if not isinstance(c["packing"], bool):
        raise bad("packing", "must be True or False")
    et = c["eval_tokens"]
    if isinstance(et, bool) or not isinstance(et, int) or et < 1:
        raise bad("eval_tokens", "must be an integer >= 1 (tokens of the held-out evaluation set)")

    source, path = c["source"], c["path"]
    if source == "stdlib" or source in TASKS:
        if path is not None:
            what = "the running Python's standard library" if source == "stdlib" else "a synthetic task"
            raise bad("path", f"must be None for source {source!r} ({what})")
        return c
    what = {
        "text_dir": "a directory of text files",
        "jsonl": "a .jsonl file",
        "tokens": "a .npy or .bin file",
    }
    if path is None or (isinstance(path, str) and not path):
        raise bad("path", f"required for source {source!r}: {what[source]}")
    if not isinstance(path, str | os.PathLike):
        raise bad("path", "must be a string path")
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise FileNotFoundError(f"{prefix}.path = {str(path)!r}: no such file or directory ({what[source]})")
    if source == "text_dir" and not p.is_dir():
        raise bad("path", "must be a directory for source 'text_dir'")
    if source in ("jsonl", "tokens") and not p.is_file():
        raise bad("path", f"must be a file for source {source!r}")
    if source == "tokens" and p.suffix not in TOKEN_SUFFIXES:
        raise bad("path", f"must end in one of {', '.join(TOKEN_SUFFIXES)} for source 'tokens'")
    c["path"] = str(p)
    return c


# ----------------------------------------------------------------------------------------------------------
# Sources


def stdlib_root() -> Path:
    """The running Python's standard library directory."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def stdlib_paths(root: Path | None = None) -> list[str]:
    """Relative POSIX paths of the stdlib ``*.py`` files, sorted; see the module docstring for exclusions."""
    root = stdlib_root() if root is None else Path(root)
    rel: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps os.walk out of installed packages and virtual environments.
        dirnames[:] = [
            d
            for d in dirnames
            if d not in _SKIP_DIRS and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))
        ]
        base = Path(dirpath).relative_to(root)
        rel.extend((base / f).as_posix() for f in filenames if f.endswith(".py"))
    return sorted(rel)


def _bytes_doc(key: str, data: bytes) -> Document | None:
    return Document(key, np.frombuffer(data, dtype=np.uint8)) if data else None


def stdlib_documents(root: Path | None = None) -> Iterator[Document]:
    """Yields one Document per stdlib ``*.py`` file (uint8 bytes), in sorted key order."""
    root = stdlib_root() if root is None else Path(root)
    for key in stdlib_paths(root):
        doc = _bytes_doc(key, (root / key).read_bytes())
        if doc is not None:
            yield doc


def text_dir_documents(path: str | Path, glob: str = "**/*.txt") -> Iterator[Document]:
    """Yields one Document per file matching ``glob`` under ``path`` (uint8 bytes), in sorted key order."""
    root = Path(path)
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.glob(glob) if p.is_file())
    for key, p in files:
        doc = _bytes_doc(key, p.read_bytes())
        if doc is not None:
            yield doc


def jsonl_documents(path: str | Path, text_field: str = "text") -> Iterator[Document]:
    """Yields one Document per non-blank line of a .jsonl file: the UTF-8 bytes of ``record[text_field]``."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"data.path = {str(path)!r}: line {lineno} is not valid JSON ({e})"
                ) from None
            if not isinstance(record, dict) or text_field not in record:
                fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(
                    f"data.text_field = {text_field!r}: line {lineno} of {str(path)!r} has no such field "
                    f"(it has: {fields})"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise ValueError(
                    f"data.text_field = {text_field!r}: line {lineno} of {str(path)!r} holds a "
                    f"{type(text).__name__}; must be a string"
                )
            doc = _bytes_doc(f"line:{lineno}", text.encode("utf-8"))
            if doc is not None:
                yield doc


def load_token_array(path: str | Path, token_dtype: str = "uint16", eos_id: int | None = None) -> np.ndarray:
    """Memory-maps a token file (see scaling/data/tokens.py): ``.npy`` or raw ``.bin``, ``[n]``."""
    return _tokens.open_tokens(_tokens.token_spec(path, token_dtype, eos_id))


def token_documents(path: str | Path, token_dtype: str = "uint16", eos_id: int | None = None) -> Iterator[Document]:
    """Yields the EOS-delimited documents of a token file, or one ``"stream"`` Document if it has no EOS."""
    spec = _tokens.token_spec(path, token_dtype, eos_id)
    for key, ids in _tokens.token_documents(spec, STREAM_KEY):
        yield Document(key, ids)


# ----------------------------------------------------------------------------------------------------------
# Split and loading


def hash_fraction(key: str) -> float:
    """``sha1(key)``'s first 8 bytes as a fraction in [0, 1): the same on every machine and Python."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def is_validation(key: str, val_fraction: float) -> bool:
    """Whether the document ``key`` belongs to the validation split."""
    return hash_fraction(key) < val_fraction


@dataclasses.dataclass(frozen=True)
class _CorpusKey:
    """The resolved fields a source reads (others None), so e.g. a changed glob does not reload the stdlib."""

    source: str
    val_fraction: float
    root: str | None = None  # stdlib root or data.path
    glob: str | None = None
    text_field: str | None = None
    token_dtype: str | None = None
    eos_id: int | None = None


def _cache_key(c: dict[str, Any]) -> _CorpusKey:
    source, vf = c["source"], float(c["val_fraction"])
    if source == "stdlib":
        return _CorpusKey(source, vf, root=str(stdlib_root()))
    if source == "text_dir":
        return _CorpusKey(source, vf, root=c["path"], glob=c["glob"])
    if source == "jsonl":
        return _CorpusKey(source, vf, root=c["path"], text_field=c["text_field"])
    return _CorpusKey(source, vf, root=c["path"], token_dtype=c["token_dtype"], eos_id=c["eos_id"])


def _documents(k: _CorpusKey) -> list[Document]:
    if k.source == "stdlib":
        return list(stdlib_documents(Path(k.root)))
    if k.source == "text_dir":
        return list(text_dir_documents(k.root, k.glob))
    if k.source == "jsonl":
        return list(jsonl_documents(k.root, k.text_field))
    return list(token_documents(k.root, k.token_dtype, k.eos_id))


@functools.lru_cache(maxsize=4)
def _load_cached(k: _CorpusKey) -> Corpus:
    source, vf = k.source, k.val_fraction
    docs = _documents(k)
    if not docs:
        where = {
            "stdlib": f"no *.py files with text under {k.root}",
            "text_dir": f"no non-empty files match data.glob = {k.glob!r} under {k.root!r}",
            "jsonl": f"no non-empty {k.text_field!r} fields in {k.root!r}",
            "tokens": f"no tokens besides BOS/EOS in {k.root!r}",
        }[source]
        raise ValueError(f"data.source = {source!r}: empty corpus ({where})")
    if source == "tokens" and len(docs) == 1 and docs[0].key == STREAM_KEY:
        stream = docs[0].ids
        n_val = math.ceil(vf * stream.size)
        cut = stream.size - n_val
        train = (Document(f"{STREAM_KEY}[0:{cut}]", stream[:cut]),) if cut > 0 else ()
        val = (Document(f"{STREAM_KEY}[{cut}:{stream.size}]", stream[cut:]),)
    else:
        flags = [is_validation(d.key, vf) for d in docs]
        train = tuple(d for d, v in zip(docs, flags, strict=True) if not v)
        val = tuple(d for d, v in zip(docs, flags, strict=True) if v)
    for name, split in (("validation", val), ("train", train)):
        if not split:
            raise ValueError(
                f"data.val_fraction = {vf!r}: the {name} split of the {len(docs)} document(s) "
                "came out empty; "
                + ("raise data.val_fraction or add documents" if name == "validation" else "lower it")
            )
    specials = (BOS, EOS, PAD)
    if source == "tokens":
        spec = _tokens.token_spec(k.root, k.token_dtype, k.eos_id)
        specials = (spec.bos_id, spec.eos_id, spec.pad)
    return Corpus(source=source, train=train, validation=val, specials=specials)


def load_corpus(data_cfg: Any) -> Corpus:
    """Validates ``data_cfg``, reads its documents once per process and splits them (see module docstring)."""
    c = validate_data_config(data_cfg)
    if c["source"] in TASKS:
        raise ValueError(f"data.source = {c['source']!r}: a synthetic task has no corpus; use "
                         "scaling.data.pipeline.make_train_iterator / make_eval_batches")
    return _load_cached(_cache_key(c))


load_corpus.cache_clear = _load_cached.cache_clear  # type: ignore[attr-defined]


def _byte_counts(docs: tuple[Document, ...]) -> np.ndarray:
    counts = np.zeros(VOCAB_SIZE, dtype=np.int64)
    chunk: list[np.ndarray] = []
    size = 0
    # Bincount over concatenated chunks: one call per document is slow for many small token documents,
    # one call over everything can need a copy of the whole corpus.
    for d in (*docs, None):
        if d is not None:
            chunk.append(np.asarray(d.ids))
            size += len(d)
        if chunk and (d is None or size >= 1 << 24):
            counts += np.bincount(np.concatenate(chunk), minlength=VOCAB_SIZE)[:VOCAB_SIZE]
            chunk, size = [], 0
    return counts


def unigram_entropy_bits(docs: tuple[Document, ...]) -> float:
    """Entropy in bits of the empirical distribution of byte ids (0..255) over ``docs``; specials ignored."""
    counts = _byte_counts(docs)[:N_BYTES].astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def corpus_stats(data_cfg: Any) -> dict[str, Any]:
    """Sizes of both splits and the train split's unigram byte entropy.

    Returns a dict: ``source``; ``train`` and ``validation``, each ``{"n_documents", "n_bytes",
    "n_tokens"}`` where ``n_bytes`` counts document ids and ``n_tokens = n_bytes + 2 * n_documents`` counts
    them as the pipeline streams them (with BOS and EOS); ``unigram_entropy_bits_per_byte`` of the train
    split and the same in nats (``unigram_entropy_nats_per_byte``), the loss a model that ignores context
    would reach on the bytes: a validation loss well below it shows the model uses context.
    """
    corpus = load_corpus(data_cfg)
    out: dict[str, Any] = {"source": corpus.source}
    for name in ("train", "validation"):
        docs = corpus.split(name)
        n_bytes = int(sum(len(d) for d in docs))
        out[name] = {"n_documents": len(docs), "n_bytes": n_bytes, "n_tokens": n_bytes + 2 * len(docs)}
    h = unigram_entropy_bits(corpus.train)
    out["unigram_entropy_bits_per_byte"] = h
    out["unigram_entropy_nats_per_byte"] = h * math.log(2.0)
    return out
