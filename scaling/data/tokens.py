"""Token files (``data.source = "tokens"``): the metadata beside them and reading them back.

Metadata
--------
``scaling tokenize`` writes ``<file>.meta.json`` beside every token file (``corpus.bin`` ->
``corpus.bin.meta.json``), a JSON object:

==================  ==========================================================================================
``format``          ``"statescale.tokens/1"``
``tokenizer``       ``"bytes"`` (scaling.data.tokenizer) or the tokenizer file it was made with (as given)
``tokenizer_sha256``  sha256 of that tokenizer.json, or ``"bytes"``
``vocab_size``      the tokenizer's vocabulary, specials included
``bos_id``          the id that starts every document, or null (none: GPT-2 style)
``eos_id``          the id that ends every document: documents are split on it
``pad_id``          the tokenizer's padding id, or null (windows are then padded with ``eos_id``, loss_mask 0)
``dtype``           the ids' dtype (uint16 / uint32)
``documents``       documents written
``tokens``          ids in the file, specials included
``bytes``           UTF-8 bytes of the documents' text (bits per byte use tokens / bytes)
``max_id``          the largest id in the file (``model.vocab_size`` must exceed it)
``token_bytes``     optional: the UTF-8 bytes each id decodes to (``vocab_size`` integers; specials 0), for the
                    byte tokenizer and byte-level BPEs, so bits per byte count the exact bytes of the evaluated
                    targets; null for other tokenizers (their tokens' bytes depend on the neighbours)
==================  ==========================================================================================

Files without metadata (nanoGPT's ``train.bin``, any ``.npy`` of ids) need ``data.eos_id``, the id that separates
their documents (50256 for GPT-2 ids); no other id is special in them, and their bits per byte are unknown
(``val_bpb`` is None). A ``.bin`` is read as ``data.token_dtype`` (a metadata file's dtype wins), a ``.npy`` as the
dtype it carries. Every problem is a ValueError naming ``data.path`` (or the metadata file) in one line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from scaling.data.tokenizer import BOS, EOS, N_BYTES, PAD, VOCAB_SIZE

META_FORMAT = "statescale.tokens/1"
META_SUFFIX = ".meta.json"
META_FIELDS = ("format", "tokenizer", "tokenizer_sha256", "vocab_size", "bos_id", "eos_id", "pad_id", "dtype",
               "documents", "tokens", "bytes", "max_id")
OPTIONAL_FIELDS = ("token_bytes",)  # absent from files written before them
META_DTYPES = ("uint8", "uint16", "uint32", "int32", "int64")
_SCAN = 1 << 24  # ids scanned at a time for the largest id of a raw file


def meta_path(path: str | Path) -> Path:
    """The metadata file of the token file ``path``: ``<path>.meta.json``."""
    return Path(str(path) + META_SUFFIX)


def write_metadata(path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``meta`` (the fields of the module docstring; ``format`` is added) as ``path``'s metadata, atomically."""
    out = meta_path(path)
    body = {"format": META_FORMAT, **{k: meta[k] for k in META_FIELDS if k != "format"},
            **{k: meta[k] for k in OPTIONAL_FIELDS if meta.get(k) is not None}}
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=2)
            f.write("\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def byte_metadata(ids: np.ndarray) -> dict[str, Any]:
    """Metadata of an array of byte-tokenizer ids (documents = EOS count; bytes = ids below 256)."""
    ids = np.asarray(ids)
    return {"tokenizer": "bytes", "tokenizer_sha256": "bytes", "vocab_size": VOCAB_SIZE, "bos_id": BOS,
            "eos_id": EOS, "pad_id": PAD, "dtype": str(ids.dtype), "documents": int((ids == EOS).sum()),
            "tokens": int(ids.size), "bytes": int((ids < N_BYTES).sum()), "max_id": int(ids.max()) if ids.size else 0,
            "token_bytes": [1] * N_BYTES + [0] * (VOCAB_SIZE - N_BYTES)}


def _int_or_none(meta: dict, key: str, where: str, *, required: bool = False) -> int | None:
    v = meta.get(key)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{where}: field {key!r} = {v!r}: must be an integer >= 0" + ("" if required else " or null"))
    return v


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checked metadata of the token file ``path``; a ValueError names the metadata file and the field."""
    mp = meta_path(path)
    where = f"metadata {str(mp)!r}"
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: unreadable ({type(e).__name__}: {e}); rewrite it with scaling tokenize") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{where}: format {got!r}; must be {META_FORMAT!r} (written by scaling tokenize)")
    if meta.get("dtype") not in META_DTYPES:
        raise ValueError(f"{where}: field 'dtype' = {meta.get('dtype')!r}: must be one of {', '.join(META_DTYPES)}")
    for key in ("vocab_size", "eos_id", "tokens", "max_id", "documents"):
        _int_or_none(meta, key, where, required=True)
    for key in ("bos_id", "pad_id", "bytes"):
        _int_or_none(meta, key, where)
    tb = meta.get("token_bytes")
    if tb is not None and (not isinstance(tb, list) or len(tb) != meta["vocab_size"]
                           or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in tb)):
        raise ValueError(f"{where}: field 'token_bytes' must be null or {meta['vocab_size']} integers >= 0 (the bytes "
                         "of each id)")
    return meta


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """What a token file holds: its dtype, specials, largest id and (with metadata) the bytes it encodes."""

    path: str
    dtype: str
    eos_id: int
    bos_id: int | None
    pad_id: int | None
    max_id: int
    n_tokens: int
    tokenizer: str | None = None  # "bytes", a tokenizer file, or None (a raw file without metadata)
    vocab_size: int | None = None  # the tokenizer's, from the metadata
    n_bytes: int | None = None  # UTF-8 bytes the file encodes, from the metadata
    token_bytes: tuple[int, ...] | None = None  # UTF-8 bytes of each id, from the metadata (byte-level tokenizers)

    @property
    def pad(self) -> int:
        """The id that fills padded window tails (never a target): the tokenizer's PAD, else EOS."""
        return self.eos_id if self.pad_id is None else self.pad_id

    @property
    def top_id(self) -> int:
        """The largest id the pipeline may feed the model (file ids and specials)."""
        return max(self.max_id, self.eos_id, self.pad, self.bos_id or 0)


def _open(path: Path, dtype: str) -> np.ndarray:
    where = f"data.path = {str(path)!r}"
    try:
        size = path.stat().st_size
        if size == 0:
            raise ValueError(f"{where}: the file is empty (no tokens)")
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                magic = f.read(6)
            if magic != b"\x93NUMPY":
                raise ValueError(f"{where}: not a readable .npy array (no NumPy header: a .npy must be written by "
                                 "np.save; a raw .bin holds bare ids)")
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, EOFError, OSError) as e:
                raise ValueError(f"{where}: not a readable .npy array ({e}); a .npy must be a NumPy array file "
                                 "(np.save), a raw .bin holds bare ids") from None
        else:
            itemsize = np.dtype(dtype).itemsize
            if size % itemsize:
                raise ValueError(f"data.token_dtype = {dtype!r}: the size of {str(path)!r} ({size} bytes) "
                                 f"is not a multiple of {itemsize}")
            arr = np.memmap(path, dtype=dtype, mode="r")
    except OSError as e:
        raise ValueError(f"{where}: cannot read it ({type(e).__name__}: {e.strerror or e})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{where}: holds a {getattr(arr, 'dtype', '?')} array of shape {getattr(arr, 'shape', '?')}; "
                         "must be a 1-D integer array of token ids")
    if arr.size == 0:
        raise ValueError(f"{where}: the file is empty (no tokens)")
    return arr


def _min_max(arr: np.ndarray) -> tuple[int, int]:
    lo, hi = None, None
    for a in range(0, arr.size, _SCAN):
        part = arr[a: a + _SCAN]
        lo = int(part.min()) if lo is None else min(lo, int(part.min()))
        hi = int(part.max()) if hi is None else max(hi, int(part.max()))
    return lo, hi


@functools.lru_cache(maxsize=16)
def _spec_cached(path: str, token_dtype: str, eos_id: int | None, _stamp: tuple) -> TokenSpec:
    p = Path(path)
    where = f"data.path = {path!r}"
    if meta_path(p).is_file():
        meta = read_metadata(p)
        if eos_id is not None and eos_id != meta["eos_id"]:
            raise ValueError(f"data.eos_id = {eos_id}: {str(meta_path(p))!r} says the documents end with "
                             f"eos_id {meta['eos_id']}; leave data.eos_id None for a file with metadata")
        arr = _open(p, meta["dtype"])
        if arr.size != meta["tokens"] or str(arr.dtype) != meta["dtype"]:
            raise ValueError(f"{where}: holds {arr.size:,} {arr.dtype} ids but its metadata says {meta['tokens']:,} "
                             f"{meta['dtype']} ids; the metadata belongs to another file (rewrite both with "
                             "scaling tokenize)")
        return TokenSpec(path, meta["dtype"], meta["eos_id"], meta["bos_id"], meta["pad_id"], meta["max_id"],
                         meta["tokens"], meta["tokenizer"], meta["vocab_size"], meta["bytes"],
                         tuple(meta["token_bytes"]) if meta.get("token_bytes") else None)
    if eos_id is None:
        raise ValueError(f"{where}: no metadata file {str(meta_path(p))!r} (scaling tokenize writes one); for a "
                         "token file from another tool set data.eos_id to the id between its documents, e.g. "
                         "--set data.eos_id=50256 for GPT-2 ids")
    arr = _open(p, token_dtype)
    lo, hi = _min_max(arr)
    if lo < 0:
        raise ValueError(f"{where}: holds token id {lo}; ids must be >= 0")
    return TokenSpec(path, str(arr.dtype), int(eos_id), None, None, hi, int(arr.size))


def token_spec(path: str | Path, token_dtype: str = "uint16", eos_id: int | None = None) -> TokenSpec:
    """The :class:`TokenSpec` of a token file, from its metadata or (with ``eos_id``) a scan for its largest id.

    Cached per process on the file's and its metadata's size and modification time. Raises ValueError (one line,
    naming ``data.path``, ``data.eos_id`` or the metadata file) for an empty, unreadable or inconsistent file.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise ValueError(f"data.path = {str(path)!r}: cannot read it ({e.strerror or e})") from None
    mp = meta_path(p)
    mst = mp.stat() if mp.is_file() else None
    stamp = (st.st_size, st.st_mtime_ns, mst and (mst.st_size, mst.st_mtime_ns))
    return _spec_cached(str(p), token_dtype, eos_id, stamp)


def spec_of(c: dict[str, Any]) -> TokenSpec:
    """The TokenSpec of a resolved ``tokens`` data config (scaling.data.config.validate_data_config)."""
    return token_spec(c["path"], c["token_dtype"], c["eos_id"])


def open_tokens(spec: TokenSpec) -> np.ndarray:
    """The ids of ``spec``'s file, memory-mapped, ``[n]``."""
    return _open(Path(spec.path), spec.dtype)


def token_documents(spec: TokenSpec, stream_key: str = "stream") -> Iterator[tuple[str, np.ndarray]]:
    """(key, ids) of each document: the runs between ``eos_id`` tokens with a leading ``bos_id`` dropped, empty
    runs skipped, keyed ``"doc:<run index>"``; one ``stream_key`` run if the file holds no ``eos_id``."""
    arr = open_tokens(spec)
    ends = np.flatnonzero(arr == spec.eos_id)
    bos = spec.bos_id
    if ends.size == 0:
        stream = arr[1:] if bos is not None and arr[0] == bos else arr
        if stream.size:
            yield stream_key, stream
        return
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends, [arr.size]])
    for i, (a, b) in enumerate(zip(starts.tolist(), stops.tolist(), strict=True)):
        if bos is not None and a < b and arr[a] == bos:
            a += 1
        if a < b:
            yield f"doc:{i}", arr[a:b]


def bpb_basis(c: dict[str, Any]) -> str | np.ndarray | float | None:
    """How a run of the resolved data config ``c`` counts bits per byte: ``"bytes"`` (its targets below 256 are
    the bytes: the byte tokenizer), an int array ``[vocab_size]`` (the UTF-8 bytes of each id, from the metadata of a
    byte-level tokenizer's file: the bytes of the evaluated targets are counted exactly), a float (tokens per UTF-8
    byte of its token file, from the metadata: the file's average), or None (unknown: a raw token file, or a
    tokenizer file without a byte count)."""
    if c["source"] != "tokens":
        return "bytes"
    spec = spec_of(c)
    if spec.tokenizer == "bytes":
        return "bytes"
    if spec.token_bytes:
        return np.asarray(spec.token_bytes, np.int64)
    if spec.n_bytes:
        return spec.n_tokens / spec.n_bytes
    return None
