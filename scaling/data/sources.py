"""Where documents come from: the readers of every text source, for training and for ``scaling tokenize``.

A *document* is a :class:`Document`: a stable string ``key`` and a 1-D array ``ids`` of token ids *without*
BOS/EOS (the pipeline adds them). Text sources yield ``np.uint8`` arrays of the document's bytes.

=============  =================================================================================================
``stdlib``     every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]`` (the running Python's standard
               library, ~1,800 files / ~30 MB for CPython 3.11), skipping ``site-packages``, ``dist-packages``,
               ``__pycache__`` and any directory holding a ``pyvenv.cfg``; key: the path relative to the stdlib
               root in POSIX form (``"json/decoder.py"``)
``text_dir``   every file matching ``glob`` (default ``"**/*.txt"``) under a directory, bytes as on disk; key: its
               relative POSIX path
``jsonl``      one JSON object per line of a ``.jsonl``, ``.jsonl.gz`` or ``.jsonl.zst`` file (decompressed as a
               stream); the string field ``text_field`` is one document, as UTF-8; key ``"line:<n>"`` (1-based);
               blank lines are skipped
``parquet``    the string column ``text_field`` of a ``.parquet`` file or of every ``*.parquet`` under a
               directory (sorted), read a record batch at a time; key ``"row:<i>"`` (``"<file>:row:<i>"`` for a
               directory); null values are skipped
=============  =================================================================================================

Every reader streams: it holds one document (or one parquet record batch, or one 16 MiB piece of a single text
file) at a time, so ``scaling tokenize`` runs in memory flat in the corpus size. Empty documents are skipped. A
problem with the input is a ValueError of one line naming the file and ``where`` (``data.path`` or ``input``)
and ``field`` (``data.text_field`` or ``--text-field``).

:func:`corpus_pieces` is the input side of ``scaling tokenize`` and ``scaling tokenizer train``: the same sources,
plus a single text file (one document, read in pieces cut at line ends), with the progress in bytes read from disk.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from scaling.data.config import JSONL_SUFFIXES, PARQUET_SUFFIX

FORMATS = ("auto", "stdlib", "text_dir", "jsonl", "parquet", "txt")
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_CHUNK = 16 << 20  # bytes of a single text file read at a time
PARQUET_BATCH_ROWS = 1024  # rows of a parquet file decoded at a time


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: ``key`` (stable across machines and file orders) and ``ids`` ``[n]`` without BOS/EOS."""

    key: str
    ids: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _bytes_doc(key: str, data: bytes) -> Document | None:
    return Document(key, np.frombuffer(data, dtype=np.uint8)) if data else None


# ----------------------------------------------------------------------------------------------------------
# stdlib and text directories


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
            d for d in dirnames if d not in _SKIP_DIRS and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))
        ]
        base = Path(dirpath).relative_to(root)
        rel.extend((base / f).as_posix() for f in filenames if f.endswith(".py"))
    return sorted(rel)


def stdlib_documents(root: Path | None = None) -> Iterator[Document]:
    """Yields one Document per stdlib ``*.py`` file (uint8 bytes), in sorted key order."""
    root = stdlib_root() if root is None else Path(root)
    for key in stdlib_paths(root):
        doc = _bytes_doc(key, (root / key).read_bytes())
        if doc is not None:
            yield doc


def text_dir_files(path: str | Path, glob: str = "**/*.txt") -> list[tuple[str, Path]]:
    """(relative POSIX key, path) of every file matching ``glob`` under ``path``, sorted by key."""
    root = Path(path)
    return sorted((p.relative_to(root).as_posix(), p) for p in root.glob(glob) if p.is_file())


def text_dir_documents(path: str | Path, glob: str = "**/*.txt") -> Iterator[Document]:
    """Yields one Document per file matching ``glob`` under ``path`` (uint8 bytes), in sorted key order."""
    for key, p in text_dir_files(path, glob):
        doc = _bytes_doc(key, p.read_bytes())
        if doc is not None:
            yield doc


# ----------------------------------------------------------------------------------------------------------
# JSONL, plain or compressed


def _open_text(raw, name: str):
    """A text stream over the binary file ``raw``, decompressing ``.gz`` and ``.zst`` by their suffix."""
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8")
    if name.endswith(".zst"):
        import zstandard

        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, closefd=False), encoding="utf-8")
    return io.TextIOWrapper(raw, encoding="utf-8")


def _stream_errors():
    import zstandard

    return (OSError, EOFError, UnicodeDecodeError, zstandard.ZstdError)


def jsonl_records(path: str | Path, text_field: str = "text", *, where: str = "data.path",
                  field: str = "data.text_field") -> Iterator[tuple[int, str, int]]:
    """(line number, text, bytes of the file read so far) of every non-blank line, streaming."""
    path = Path(path)
    lineno = 0
    try:
        with open(path, "rb") as raw, _open_text(raw, path.name) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where} = {str(path)!r}: line {lineno} is not valid JSON ({e})") from None
                if not isinstance(record, dict) or text_field not in record:
                    fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                    raise ValueError(f"{field} = {text_field!r}: line {lineno} of {str(path)!r} has no such field "
                                     f"(it has: {fields})")
                text = record[text_field]
                if not isinstance(text, str):
                    raise ValueError(f"{field} = {text_field!r}: line {lineno} of {str(path)!r} holds a "
                                     f"{type(text).__name__}; must be a string")
                yield lineno, text, raw.tell()
    except _stream_errors() as e:
        kind = "compressed " if path.name.endswith((".gz", ".zst")) else ""
        raise ValueError(f"{where} = {str(path)!r}: unreadable {kind}JSONL after line {lineno} "
                         f"({type(e).__name__}: {e})") from None


def jsonl_documents(path: str | Path, text_field: str = "text", **labels: str) -> Iterator[Document]:
    """Yields one Document per non-blank line of a JSONL file: the UTF-8 bytes of ``record[text_field]``."""
    for lineno, text, _ in jsonl_records(path, text_field, **labels):
        doc = _bytes_doc(f"line:{lineno}", text.encode("utf-8"))
        if doc is not None:
            yield doc


# ----------------------------------------------------------------------------------------------------------
# Parquet


def parquet_files(path: str | Path, *, where: str = "data.path") -> list[tuple[str, Path]]:
    """(key prefix, file) of a ``.parquet`` file (prefix "") or of every ``*.parquet`` under a directory."""
    p = Path(path)
    if p.is_file():
        return [("", p)]
    files = sorted(p.rglob(f"*{PARQUET_SUFFIX}"))
    if not files:
        raise ValueError(f"{where} = {str(path)!r}: no *{PARQUET_SUFFIX} files under this directory")
    return [(f.relative_to(p).as_posix() + ":", f) for f in files]


def _parquet_file(f: Path, text_field: str, where: str, field: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{where} = {str(f)!r}: not a readable parquet file ({e})") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise ValueError(f"{field} = {text_field!r}: parquet file {str(f)!r} has no such column (it has: "
                         f"{', '.join(schema.names)})")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise ValueError(f"{field} = {text_field!r}: column of parquet file {str(f)!r} holds {kind}; must be a "
                         "string column")
    return pf


def parquet_records(path: str | Path, text_field: str = "text", *, where: str = "data.path",
                    field: str = "data.text_field") -> Iterator[tuple[str, str, int]]:
    """(key, text, bytes of the files read so far, by rows) of every non-null value of the column ``text_field``,
    one record batch of :data:`PARQUET_BATCH_ROWS` rows in memory at a time."""
    import pyarrow as pa

    files = parquet_files(path, where=where)
    pfs = [(prefix, f, _parquet_file(f, text_field, where, field)) for prefix, f in files]  # all checked first
    done = 0
    for prefix, f, pf in pfs:
        size, n_rows, row = f.stat().st_size, max(pf.metadata.num_rows, 1), 0
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
                for text in batch.column(0).to_pylist():
                    if text is not None:
                        yield f"{prefix}row:{row}", text, done + size * (row + 1) // n_rows
                    row += 1
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{where} = {str(f)!r}: unreadable parquet data at row {row} ({e})") from None
        done += size


def parquet_documents(path: str | Path, text_field: str = "text", **labels: str) -> Iterator[Document]:
    """Yields one Document per non-null value of the parquet column ``text_field`` (UTF-8 bytes)."""
    for key, text, _ in parquet_records(path, text_field, **labels):
        doc = _bytes_doc(key, text.encode("utf-8"))
        if doc is not None:
            yield doc


# ----------------------------------------------------------------------------------------------------------
# The input of scaling tokenize


def detect_format(path: Path) -> str:
    """``--format auto``: stdlib, a directory of parquet files or of text files, a JSONL file, a parquet file or
    a text file."""
    if str(path) == "stdlib" and not path.exists():
        return "stdlib"
    if path.is_dir():
        return "parquet" if next(path.rglob(f"*{PARQUET_SUFFIX}"), None) is not None else "text_dir"
    if path.name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if path.suffix == PARQUET_SUFFIX:
        return "parquet"
    return "txt"


def check_input(path, fmt: str) -> tuple[Path, str]:
    """The input path and its format for ``scaling tokenize``; one-line errors naming ``--format`` or ``input``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "stdlib":
        return path, fmt
    if not path.exists():
        raise FileNotFoundError(f"input {str(path)!r}: no such file or directory (or 'stdlib', the embedded corpus)")
    if fmt == "text_dir" and not path.is_dir() or fmt in ("jsonl", "txt") and path.is_dir():
        raise ValueError(f"--format {fmt!r}: {str(path)!r} is {'a directory' if path.is_dir() else 'a file'}")
    return path, fmt


def _file_pieces(path: Path, max_bytes: int | None) -> Iterator[tuple[bool, bytes, int, int]]:
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        first, buf = True, b""
        while chunk := f.read(_CHUNK):
            buf += chunk
            cut = buf.rfind(b"\n") + 1 or len(buf)
            piece, buf = buf[:cut], buf[cut:]
            done += len(piece)
            yield first, piece, done, total
            first = False
            if max_bytes is not None and done >= max_bytes:
                return
        if buf:
            yield first, buf, done + len(buf), total


def corpus_pieces(path, fmt: str = "auto", glob: str = "**/*.txt", text_field: str = "text",
                  max_bytes: int | None = None) -> Iterator[tuple[bool, bytes, int, int]]:
    """(starts a document, its bytes, input bytes read so far, total input bytes) in order: one item per document,
    except a single text file, which comes in pieces cut at line ends. Input bytes are bytes of the files on disk
    (compressed JSONL: compressed bytes). Stops after the document that reaches ``max_bytes`` of text."""
    path, fmt = check_input(path, fmt)
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"--max-bytes {max_bytes!r}: must be an integer >= 1 (or omitted: the whole corpus)")
    labels = {"where": "input", "field": "--text-field"}
    if fmt == "txt":
        yield from _file_pieces(path, max_bytes)
        return
    if fmt in ("stdlib", "text_dir"):
        if fmt == "stdlib":
            root = stdlib_root()
            files = [(k, root / k) for k in stdlib_paths(root)]
        else:
            files = text_dir_files(path, glob)
        total = sum(p.stat().st_size for _, p in files)
        records = ((key, p.read_bytes(), None) for key, p in files)
    elif fmt == "jsonl":
        total = path.stat().st_size
        records = ((n, text.encode("utf-8"), pos) for n, text, pos in jsonl_records(path, text_field, **labels))
    else:
        total = sum(f.stat().st_size for _, f in parquet_files(path, where="input"))
        records = ((k, text.encode("utf-8"), pos) for k, text, pos in parquet_records(path, text_field, **labels))
    done = text = 0
    for _key, data, pos in records:
        done = done + len(data) if pos is None else pos
        if not data:
            continue
        text += len(data)
        yield True, data, done, total
        if max_bytes is not None and text >= max_bytes:
            return
