"""Byte-level tokenizer.

Format
------
Every byte value 0..255 is its own token id. Three special ids follow the bytes:

    PAD = 256   fills the tail of a window that has no more text (never a target: loss_mask 0)
    BOS = 257   starts every document
    EOS = 258   ends every document

so ``VOCAB_SIZE = 259``. Text is encoded as UTF-8 first, so any ``str`` maps to ids in [0, 256), and any
``bytes`` (valid UTF-8 or not) round-trips exactly through ``encode`` / ``decode_bytes``. Token arrays are
``np.int32`` of shape ``[n]``; a model's loss per token in nats divided by ln 2 is bits per byte on the byte
ids (the specials add two tokens per document).
"""

from __future__ import annotations

import numpy as np

N_BYTES = 256
PAD = 256
BOS = 257
EOS = 258
VOCAB_SIZE = 259
SPECIAL_IDS = (PAD, BOS, EOS)


def _as_bytes(text: str | bytes | bytearray | memoryview) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, bytes | bytearray | memoryview):
        return bytes(text)
    raise TypeError(f"text: got {type(text).__name__}; must be str, bytes, bytearray or memoryview")


def encode(text: str | bytes, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    """Encodes text (UTF-8) or raw bytes to token ids.

    Args:
      text: a ``str`` (encoded as UTF-8) or a bytes-like object (taken as is).
      add_bos: prepend BOS.
      add_eos: append EOS.

    Returns:
      int32 array ``[n_bytes + add_bos + add_eos]``.
    """
    raw = np.frombuffer(_as_bytes(text), dtype=np.uint8)
    out = np.empty(raw.size + int(add_bos) + int(add_eos), dtype=np.int32)
    start = int(add_bos)
    out[start : start + raw.size] = raw
    if add_bos:
        out[0] = BOS
    if add_eos:
        out[-1] = EOS
    return out


def wrap_document(byte_ids: np.ndarray, bos: int | None = BOS, eos: int = EOS) -> np.ndarray:
    """Returns ``[bos, *ids, eos]`` as int32 ``[n + 2]`` (``[*ids, eos]``, ``[n + 1]``, if ``bos`` is None): the
    form in which documents enter a stream (a token file's own specials replace BOS / EOS)."""
    ids = np.asarray(byte_ids).reshape(-1)
    nb = 0 if bos is None else 1
    out = np.empty(ids.size + nb + 1, dtype=np.int32)
    if nb:
        out[0] = bos
    out[nb:-1] = ids
    out[-1] = eos
    return out


def _check_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids: got shape {arr.shape}; must be 1-D [n]")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids: got dtype {arr.dtype}; must be an integer dtype")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= VOCAB_SIZE:
        bad = lo if lo < 0 else hi
        raise ValueError(f"ids: contains {bad}; token ids must be in [0, {VOCAB_SIZE})")
    return arr


def decode_bytes(ids) -> bytes:
    """Maps token ids ``[n]`` back to bytes; the specials (PAD, BOS, EOS) are dropped."""
    arr = _check_ids(ids)
    return arr[arr < N_BYTES].astype(np.uint8).tobytes()


def decode(ids) -> str:
    """Maps token ids ``[n]`` back to text: UTF-8 with ``errors="replace"``; specials are dropped."""
    return decode_bytes(ids).decode("utf-8", errors="replace")
