"""Convert text corpora into a memory-mapped token file for ``data.source = "tokens"`` (``scaling tokenize``).

Input: a directory of text files (``glob``, like ``data.source = "text_dir"``), a ``.jsonl`` file (one document per
line, field ``text_field``, like ``"jsonl"``) or a single text file (one document). Output: a raw ``.bin`` file
of token ids of the byte tokenizer (uint16 by default) where every document is written as ``BOS, bytes..., EOS``
so the ``tokens`` source splits it back into the same documents (scaling/data/corpus.py), or a ``.npy`` file
with the same ids. Documents stream through: one file, one JSONL line, or 16 MiB of a single text file at a time,
so memory stays flat whatever the corpus size. The output appears atomically (a temporary file, then a rename).

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

from scaling.data.corpus import TOKEN_SUFFIXES, jsonl_documents, text_dir_documents
from scaling.data.tokenizer import BOS, EOS

FORMATS = ("auto", "text_dir", "jsonl", "txt")
OUT_DTYPES = ("uint16", "uint32")
_CHUNK = 16 << 20  # bytes of a single text file read at a time


@dataclasses.dataclass
class TokenizeResult:
    out: Path
    format: str
    documents: int
    tokens: int  # ids written, BOS and EOS included
    input_bytes: int


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "text_dir"
    if path.suffix == ".jsonl":
        return "jsonl"
    return "txt"


def _pieces(path: Path, fmt: str, glob: str, text_field: str) -> Iterator[tuple[bool, bytes | np.ndarray, int]]:
    """(starts a document, its ids or bytes, input bytes consumed) in order; a document may come in pieces."""
    if fmt == "text_dir":
        for doc in text_dir_documents(path, glob):
            yield True, doc.ids, len(doc)
    elif fmt == "jsonl":
        for doc in jsonl_documents(path, text_field):
            yield True, doc.ids, len(doc)
    else:
        with open(path, "rb") as f:
            first = True
            while chunk := f.read(_CHUNK):
                yield first, chunk, len(chunk)
                first = False


def _total_bytes(path: Path, fmt: str, glob: str) -> int:
    if fmt == "text_dir":
        return sum(p.stat().st_size for p in path.glob(glob) if p.is_file())
    return path.stat().st_size


def tokenize(path, out, *, fmt: str = "auto", glob: str = "**/*.txt", text_field: str = "text",
             dtype: str = "uint16", progress: Callable[[int, int], None] | None = None) -> TokenizeResult:
    """Write the documents of ``path`` to the token file ``out`` (``.bin`` raw ids or ``.npy``).

    ``progress(done_bytes, total_bytes)`` is called as input is consumed. Raises ValueError naming the option
    for a bad format, dtype or output suffix, FileNotFoundError for a missing input, and ValueError for an input
    without any non-empty document.
    """
    path, out = Path(path).expanduser(), Path(out).expanduser()
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    if dtype not in OUT_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: must be one of {', '.join(OUT_DTYPES)}")
    if out.suffix not in TOKEN_SUFFIXES:
        raise ValueError(f"--out {str(out)!r}: must end in one of {', '.join(TOKEN_SUFFIXES)}")
    if not path.exists():
        raise FileNotFoundError(f"input {str(path)!r}: no such file or directory")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if (fmt == "text_dir") != path.is_dir():
        raise ValueError(f"--format {fmt!r}: {str(path)!r} is {'a directory' if path.is_dir() else 'a file'}")
    total = _total_bytes(path, fmt, glob)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    docs = n_ids = done = 0
    try:
        with os.fdopen(fd, "wb") as f:
            open_doc = False
            for starts, piece, consumed in _pieces(path, fmt, glob, text_field):
                ids = np.frombuffer(piece, np.uint8) if isinstance(piece, bytes) else np.asarray(piece)
                if starts:
                    if open_doc:
                        f.write(np.asarray([EOS], dtype).tobytes())
                        n_ids += 1
                    f.write(np.asarray([BOS], dtype).tobytes())
                    docs, n_ids, open_doc = docs + 1, n_ids + 1, True
                f.write(ids.astype(dtype).tobytes())
                n_ids += ids.size
                done += consumed
                if progress:
                    progress(done, total)
            if open_doc:
                f.write(np.asarray([EOS], dtype).tobytes())
                n_ids += 1
        if docs == 0 or n_ids == 2 * docs:
            raise ValueError(f"input {str(path)!r}: no non-empty document to tokenize"
                             + (f" (glob {glob!r})" if fmt == "text_dir" else ""))
        if out.suffix == ".npy":
            ids = np.memmap(tmp, dtype=dtype, mode="r")
            npy = Path(tmp).with_suffix(".npy.tmp")
            arr = np.lib.format.open_memmap(npy, mode="w+", dtype=dtype, shape=ids.shape)
            for a in range(0, ids.size, _CHUNK):
                arr[a: a + _CHUNK] = ids[a: a + _CHUNK]
            arr.flush()
            del arr, ids
            os.replace(npy, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return TokenizeResult(out=out, format=fmt, documents=docs, tokens=n_ids, input_bytes=done)
