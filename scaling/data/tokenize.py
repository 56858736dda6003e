"""Convert text corpora into a memory-mapped token file for ``data.source = "tokens"`` (``scaling tokenize``).

Input (scaling/data/sources.py): ``"stdlib"`` (the running Python's standard library), a directory of text files
(``glob``), a ``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.zst`` file (field ``text_field``), a ``.parquet`` file or
directory of them (column ``text_field``) or a single text file (one document); ``max_bytes`` keeps only the first
documents (a slice). ``workers`` processes encode batches of documents in parallel; the main process reads and
writes in order, so the file does not depend on the worker count.
Tokenizer: ``"bytes"`` (scaling/data/tokenizer.py, the default) or a Hugging Face ``tokenizer.json``
(scaling/data/bpe.py). Output: a raw ``.bin`` file of ids (uint16 by default) or a ``.npy`` file, where every
document is written as ``[BOS,] ids..., EOS`` with the tokenizer's own specials, and beside it the metadata
``<out>.meta.json`` (tokenizer, its sha256, vocabulary size, BOS/EOS/PAD ids, dtype, documents, tokens, the UTF-8
bytes encoded, the largest id: scaling/data/tokens.py), so the ``tokens`` source splits it back into the same
documents and reports bits per byte. Documents stream through: a batch of documents (about 4 MiB; two a
worker in flight), or 16 MiB of a single text file cut at a line end, at a time, so memory stays flat whatever the
corpus size. Both files appear atomically (temporary files, then renames); on any error nothing is left behind.

The train / validation split of the ``tokens`` source hashes the document's index (``doc:<i>``), not its path or
line number, so it differs from the split the text source would make of the same documents.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from scaling.data import tokens as _tokens
from scaling.data.bpe import load_tokenizer
from scaling.data.config import TOKEN_SUFFIXES
from scaling.data.sources import FORMATS, check_input, corpus_pieces

__all__ = ["FORMATS", "OUT_DTYPES", "TokenizeResult", "tokenize"]

OUT_DTYPES = ("uint16", "uint32")
_BATCH = 4 << 20  # bytes of documents encoded in one call (one task of a worker process)
_CHUNK = 16 << 20  # ids copied at a time into a .npy


@dataclasses.dataclass
class TokenizeResult:
    out: Path
    format: str
    documents: int
    tokens: int  # ids written, specials included
    input_bytes: int
    meta: Path | None = None
    tokenizer: str = "bytes"
    text_bytes: int = 0  # UTF-8 bytes encoded (the metadata's "bytes")


def _batches(pieces, size: int | None = None):
    size = _BATCH if size is None else size
    batch, n = [], 0
    for item in pieces:
        batch.append(item)
        n += len(item[1])
        if n >= size:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


_WORKER_TOKENIZER = None


def _init_worker(spec: str) -> None:
    global _WORKER_TOKENIZER
    # one process per core: the tokenizers library's own threads would only contend with the other workers
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER = load_tokenizer(spec)


def _encode(pieces: list[bytes], dtype: str) -> list[tuple[np.ndarray, int]]:
    return [(ids.astype(dtype), n) for ids, n in _WORKER_TOKENIZER.encode_pieces(pieces)]


def _encoded_batches(batches, tokenizer: str, tok, dtype: str, workers: int):
    """(batch, its encodings) in order; with ``workers > 1`` the encoding runs in that many processes, with at most
    two batches a worker in flight, so memory stays flat."""
    if workers == 1:
        for batch in batches:
            yield batch, [(ids.astype(dtype), n) for ids, n in tok.encode_pieces([p for _, p, _, _ in batch])]
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold the tokenizers' threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        pending = collections.deque()
        for batch in batches:
            pending.append((batch, pool.submit(_encode, [p for _, p, _, _ in batch], dtype)))
            if len(pending) >= 2 * workers:
                done, fut = pending.popleft()
                yield done, fut.result()
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result()


def check_workers(workers) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ValueError(f"--workers {workers!r}: must be an integer in [1, 256] (processes that encode)")
    return workers


def tokenize(path, out, *, fmt: str = "auto", glob: str = "**/*.txt", text_field: str = "text",
             dtype: str = "uint16", tokenizer: str = "bytes", max_bytes: int | None = None, workers: int = 1,
             progress: Callable[[int, int], None] | None = None) -> TokenizeResult:
    """Write the documents of ``path`` to the token file ``out`` (``.bin`` raw ids or ``.npy``) and its metadata.

    ``tokenizer``: ``"bytes"`` or a tokenizer.json. ``workers``: processes that encode (1: in this process; the
    file is the same byte for byte whatever the count). ``progress(done_bytes, total_bytes)`` is called as input is
    consumed. Raises ValueError naming the option for a bad format, dtype, tokenizer, worker count or output
    suffix, FileNotFoundError for a missing input or tokenizer file, and ValueError for an input without any
    non-empty document. Nothing is written when it raises.
    """
    out = Path(out).expanduser()
    if dtype not in OUT_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: must be one of {', '.join(OUT_DTYPES)}")
    if out.suffix not in TOKEN_SUFFIXES:
        raise ValueError(f"--out {str(out)!r}: must end in one of {', '.join(TOKEN_SUFFIXES)}")
    workers = check_workers(workers)
    path, fmt = check_input(path, fmt)
    tok = load_tokenizer(tokenizer)
    top = max(tok.vocab_size - 1, tok.eos_id, tok.bos_id or 0, tok.pad_id or 0)
    if top > np.iinfo(dtype).max:
        raise ValueError(f"--dtype {dtype!r}: ids of --tokenizer {tok.name!r} reach {top} (vocabulary "
                         f"{tok.vocab_size:,}), beyond {dtype}'s {np.iinfo(dtype).max}; use --dtype uint32")
    pieces = corpus_pieces(path, fmt, glob, text_field, max_bytes)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    docs = n_ids = done = text_bytes = max_id = 0
    eos = np.asarray([tok.eos_id], dtype).tobytes()
    bos = b"" if tok.bos_id is None else np.asarray([tok.bos_id], dtype).tobytes()
    try:
        with os.fdopen(fd, "wb") as f:
            open_doc = False
            for batch, encoded in _encoded_batches(_batches(pieces), str(tokenizer), tok, dtype, workers):
                for (starts, _, read, _total), (ids, n_bytes) in zip(batch, encoded, strict=True):
                    if starts:
                        if open_doc:
                            f.write(eos)
                        f.write(bos)
                        docs, n_ids, open_doc = docs + 1, n_ids + (open_doc + bool(bos)), True
                    if ids.size:
                        f.write(ids.tobytes())
                        max_id = max(max_id, int(ids.max()))
                    n_ids += ids.size
                    text_bytes += n_bytes
                    done = read
                if progress:
                    progress(done, batch[-1][3])
            if open_doc:
                f.write(eos)
                n_ids += 1
        if docs == 0 or text_bytes == 0:
            raise ValueError(f"input {str(path)!r}: no non-empty document to tokenize"
                             + (f" (glob {glob!r})" if fmt == "text_dir" else ""))
        if out.suffix == ".npy":
            _to_npy(tmp, dtype)
        meta = {"tokenizer": tok.name, "tokenizer_sha256": tok.sha256, "vocab_size": tok.vocab_size,
                "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "dtype": dtype, "documents": docs,
                "tokens": n_ids, "bytes": text_bytes,
                "max_id": max(max_id, tok.eos_id, tok.bos_id if tok.bos_id is not None else 0),
                "token_bytes": tok.token_bytes()}
        _tokens.meta_path(out).unlink(missing_ok=True)  # never a stale metadata file beside the new ids
        os.replace(tmp, out)
        meta_file = _tokens.write_metadata(out, meta)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return TokenizeResult(out=out, format=fmt, documents=docs, tokens=n_ids, input_bytes=done, meta=meta_file,
                          tokenizer=tok.name, text_bytes=text_bytes)


def _to_npy(tmp: str, dtype: str) -> None:
    ids = np.memmap(tmp, dtype=dtype, mode="r")
    npy = Path(tmp).with_suffix(".npy.tmp")
    try:
        arr = np.lib.format.open_memmap(npy, mode="w+", dtype=dtype, shape=ids.shape)
        for a in range(0, ids.size, _CHUNK):
            arr[a: a + _CHUNK] = ids[a: a + _CHUNK]
        arr.flush()
        del arr, ids
        os.replace(npy, tmp)
    except BaseException:
        npy.unlink(missing_ok=True)
        raise
