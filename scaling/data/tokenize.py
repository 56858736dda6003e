"""Convert text corpora into a memory-mapped token file for ``data.source = "tokens"`` (``scaling tokenize``).

Input: ``"stdlib"`` (the running Python's standard library, like ``data.source = "stdlib"``), a directory of text
files (``glob``, like ``"text_dir"``), a ``.jsonl`` file (one document per line, field ``text_field``, like
``"jsonl"``) or a single text file (one document); ``max_bytes`` keeps only the first documents (a slice).
Tokenizer: ``"bytes"`` (scaling/data/tokenizer.py, the default) or a Hugging Face ``tokenizer.json``
(scaling/data/bpe.py). Output: a raw ``.bin`` file of ids (uint16 by default) or a ``.npy`` file, where every
document is written as ``[BOS,] ids..., EOS`` with the tokenizer's own specials, and beside it the metadata
``<out>.meta.json`` (tokenizer, its sha256, vocabulary size, BOS/EOS/PAD ids, dtype, documents, tokens, the UTF-8
bytes encoded, the largest id: scaling/data/tokens.py), so the ``tokens`` source splits it back into the same
documents and reports bits per byte. Documents stream through: a batch of documents (about 4 MiB), or 16 MiB of a
single text file cut at a line end, at a time, so memory stays flat whatever the corpus size. Both files appear
atomically (temporary files, then renames); on any error nothing is left behind.

The train / validation split of the ``tokens`` source hashes the document's index (``doc:<i>``), not its path or
line number, so it differs from the split the text source would make of the same documents.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from scaling.data import tokens as _tokens
from scaling.data.bpe import load_tokenizer
from scaling.data.corpus import TOKEN_SUFFIXES, jsonl_documents, stdlib_documents, stdlib_root, text_dir_documents

FORMATS = ("auto", "stdlib", "text_dir", "jsonl", "txt")
OUT_DTYPES = ("uint16", "uint32")
_CHUNK = 16 << 20  # bytes of a single text file read at a time
_BATCH = 4 << 20  # bytes of documents encoded in one call


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


def detect_format(path: Path) -> str:
    if str(path) == "stdlib" and not path.exists():
        return "stdlib"
    if path.is_dir():
        return "text_dir"
    if path.suffix == ".jsonl":
        return "jsonl"
    return "txt"


def _check_input(path, fmt: str) -> tuple[Path, str]:
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "stdlib":
        return path, fmt
    if not path.exists():
        raise FileNotFoundError(f"input {str(path)!r}: no such file or directory (or 'stdlib', the embedded corpus)")
    if (fmt == "text_dir") != path.is_dir():
        raise ValueError(f"--format {fmt!r}: {str(path)!r} is {'a directory' if path.is_dir() else 'a file'}")
    return path, fmt


def corpus_pieces(path, fmt: str = "auto", glob: str = "**/*.txt", text_field: str = "text",
                  max_bytes: int | None = None) -> Iterator[tuple[bool, bytes, int, int]]:
    """(starts a document, its bytes, input bytes consumed, total input bytes) in order; a single text file comes in
    pieces cut at line ends. Stops after the piece that reaches ``max_bytes`` (None: everything)."""
    path, fmt = _check_input(path, fmt)
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"--max-bytes {max_bytes!r}: must be an integer >= 1 (or omitted: the whole corpus)")
    if fmt == "stdlib":
        root = stdlib_root()
        docs, total = stdlib_documents(root), None
    elif fmt == "text_dir":
        docs = text_dir_documents(path, glob)
        total = sum(p.stat().st_size for p in path.glob(glob) if p.is_file())
    elif fmt == "jsonl":
        docs, total = jsonl_documents(path, text_field), path.stat().st_size
    else:
        docs, total = None, path.stat().st_size
    if total is None:  # the stdlib: sized once, cheaply
        from scaling.data.corpus import stdlib_paths

        total = sum((root / k).stat().st_size for k in stdlib_paths(root))
    total = total if max_bytes is None else min(total, max_bytes)
    done = 0
    if docs is not None:
        for doc in docs:
            done += len(doc)
            yield True, doc.ids.tobytes(), len(doc), total
            if max_bytes is not None and done >= max_bytes:
                return
        return
    with open(path, "rb") as f:
        first, buf = True, b""
        while chunk := f.read(_CHUNK):
            buf += chunk
            cut = buf.rfind(b"\n") + 1 or len(buf)
            piece, buf = buf[:cut], buf[cut:]
            done += len(piece)
            yield first, piece, len(piece), total
            first = False
            if max_bytes is not None and done >= max_bytes:
                return
        if buf:
            yield first, buf, len(buf), total


def _batches(pieces, size: int = _BATCH):
    batch, n = [], 0
    for item in pieces:
        batch.append(item)
        n += len(item[1])
        if n >= size:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def tokenize(path, out, *, fmt: str = "auto", glob: str = "**/*.txt", text_field: str = "text",
             dtype: str = "uint16", tokenizer: str = "bytes", max_bytes: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> TokenizeResult:
    """Write the documents of ``path`` to the token file ``out`` (``.bin`` raw ids or ``.npy``) and its metadata.

    ``tokenizer``: ``"bytes"`` or a tokenizer.json. ``progress(done_bytes, total_bytes)`` is called as input is
    consumed. Raises ValueError naming the option for a bad format, dtype, tokenizer or output suffix,
    FileNotFoundError for a missing input or tokenizer file, and ValueError for an input without any non-empty
    document. Nothing is written when it raises.
    """
    out = Path(out).expanduser()
    if dtype not in OUT_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: must be one of {', '.join(OUT_DTYPES)}")
    if out.suffix not in TOKEN_SUFFIXES:
        raise ValueError(f"--out {str(out)!r}: must end in one of {', '.join(TOKEN_SUFFIXES)}")
    path, fmt = _check_input(path, fmt)
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
            for batch in _batches(pieces):
                encoded = tok.encode_pieces([piece for _, piece, _, _ in batch])
                for (starts, _, consumed, _total), (ids, n_bytes) in zip(batch, encoded, strict=True):
                    if starts:
                        if open_doc:
                            f.write(eos)
                        f.write(bos)
                        docs, n_ids, open_doc = docs + 1, n_ids + (open_doc + bool(bos)), True
                    if ids.size:
                        f.write(ids.astype(dtype).tobytes())
                        max_id = max(max_id, int(ids.max()))
                    n_ids += ids.size
                    text_bytes += n_bytes
                    done += consumed
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
                "max_id": max(max_id, tok.eos_id, tok.bos_id if tok.bos_id is not None else 0)}
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
