"""Corpora: the documents of a data config, split into train and validation, and their statistics.

Sources (``data.source``; readers in :mod:`scaling.data.sources`, token files in :mod:`scaling.data.tokens`)
-----------------------------------------------------------------------------------------------------------
``stdlib`` (default, no download, on every machine): the running Python's standard library, one ``*.py`` file a
document. ``data.path`` must be None.
``text_dir``: every file matching ``data.glob`` under the directory ``data.path``, one file a document.
``jsonl``: the file ``data.path`` (``.jsonl``, ``.jsonl.gz`` or ``.jsonl.zst``), the string field
``data.text_field`` of each line a document.
``parquet``: the string column ``data.text_field`` of the ``.parquet`` file (or every ``*.parquet`` under the
directory) ``data.path``, one value a document.
``tokens``: a pre-tokenized 1-D array of ids, ``.npy`` or raw ``.bin`` (``data.token_dtype``), with its metadata
``<path>.meta.json`` (written by ``scaling tokenize``: the tokenizer, its BOS / EOS / PAD ids) or, for a file from
another tool (nanoGPT's ``train.bin``), ``data.eos_id``, the id between its documents. Documents are the runs
between EOS tokens (a leading BOS in a run is dropped, empty runs skipped), keyed ``"doc:<run index>"``; they enter
the stream wrapped in the file's own BOS (if any) and EOS, and windows are padded with its PAD (else EOS). Without
EOS the array is one long stream (key ``"stream"``). ``model.vocab_size`` must exceed the largest id.

Text sources hold every document's bytes in memory (a corpus of a few GB); for more, ``scaling tokenize`` streams
the corpus into a token file, which training reads memory-mapped.

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
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from scaling.data import tokens as _tokens
from scaling.data.config import TASKS, validate_data_config
from scaling.data.sources import (
    Document,
    jsonl_documents,
    parquet_documents,
    stdlib_documents,
    stdlib_root,
    text_dir_documents,
)
from scaling.data.tokenizer import BOS, EOS, N_BYTES, PAD, VOCAB_SIZE

STREAM_KEY = "stream"


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
# Token files as documents


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
    if source in ("jsonl", "parquet"):
        return _CorpusKey(source, vf, root=c["path"], text_field=c["text_field"])
    return _CorpusKey(source, vf, root=c["path"], token_dtype=c["token_dtype"], eos_id=c["eos_id"])


def _documents(k: _CorpusKey) -> list[Document]:
    if k.source == "stdlib":
        return list(stdlib_documents(Path(k.root)))
    if k.source == "text_dir":
        return list(text_dir_documents(k.root, k.glob))
    if k.source == "jsonl":
        return list(jsonl_documents(k.root, k.text_field))
    if k.source == "parquet":
        return list(parquet_documents(k.root, k.text_field))
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
            "parquet": f"no non-empty values in the column {k.text_field!r} of {k.root!r}",
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
