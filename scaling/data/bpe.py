"""Tokenizers for ``scaling tokenize``: the byte tokenizer, or any Hugging Face ``tokenizer.json``; training a
byte-level BPE on a local corpus (``scaling tokenizer train``).

Nothing is downloaded: a tokenizer is a file the user has (``tokenizers.Tokenizer.from_file``) or one trained
here. Its special ids are found among its added tokens by name:

- EOS (required, ends every document): ``<|eos|>``, ``<|endoftext|>``, ``</s>``, ``<eos>``, ``<|end_of_text|>``
- BOS (optional, starts every document): ``<|bos|>``, ``<s>``, ``<bos>``, ``<|begin_of_text|>``, ``<|startoftext|>``
- PAD (optional): ``<|pad|>``, ``<pad>``, ``[PAD]``

so GPT-2's tokenizer.json writes ``ids..., 50256`` per document (nanoGPT's convention) and a tokenizer trained
here writes ``1, ids..., 2`` (its PAD, BOS, EOS are ids 0, 1, 2; the 256 byte-level symbols follow). Documents
are encoded as UTF-8 text (bytes that are not valid UTF-8 become U+FFFD) with special-token strings inside them
read as plain text, never as specials.

Training (:func:`train_bpe`) is deterministic: the same corpus and vocabulary size give the same tokenizer.json
byte for byte (the trainer breaks ties between equally frequent pairs by the pair, and every byte symbol has its
id before any word is counted).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scaling.data import tokenizer as byte_tokenizer
from scaling.data.sources import corpus_pieces

EOS_NAMES = ("<|eos|>", "<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
BOS_NAMES = ("<|bos|>", "<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>")
PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]")
TRAINED_SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>")  # ids 0, 1, 2 of a tokenizer trained here
MIN_VOCAB = 256 + len(TRAINED_SPECIALS)
MAX_VOCAB = 1 << 20


class ByteTokenizer:
    """The byte tokenizer (scaling.data.tokenizer) behind the interface of :class:`FileTokenizer`."""

    name = sha256 = "bytes"
    vocab_size = byte_tokenizer.VOCAB_SIZE
    bos_id, eos_id, pad_id = byte_tokenizer.BOS, byte_tokenizer.EOS, byte_tokenizer.PAD

    def encode_pieces(self, pieces: list[bytes]) -> list[tuple[np.ndarray, int]]:
        """(ids, UTF-8 bytes encoded) of each piece of text."""
        return [(np.frombuffer(p, np.uint8), len(p)) for p in pieces]

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes of each id: 1 for the 256 bytes, 0 for the specials."""
        return [1] * byte_tokenizer.N_BYTES + [0] * (self.vocab_size - byte_tokenizer.N_BYTES)


class FileTokenizer:
    """A Hugging Face ``tokenizer.json`` (``name`` = the path as given, ``sha256`` of the file)."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        p = Path(path).expanduser()
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(f"--tokenizer {str(path)!r}: no such file (a tokenizer.json, or 'bytes')")
        blob = p.read_bytes()
        try:
            self.tok = Tokenizer.from_str(blob.decode("utf-8"))
        except Exception as e:  # the library raises a bare Exception for a file it cannot parse
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"--tokenizer {str(path)!r}: not a tokenizer.json the Hugging Face tokenizers library "
                             f"can read ({first}); give a tokenizer.json or 'bytes'") from None
        self.name, self.sha256 = str(path), hashlib.sha256(blob).hexdigest()
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        added = {t.content: i for i, t in self.tok.get_added_tokens_decoder().items()}
        pick = lambda names: next((added[n] for n in names if n in added), None)
        self.bos_id, self.eos_id, self.pad_id = pick(BOS_NAMES), pick(EOS_NAMES), pick(PAD_NAMES)
        if self.eos_id is None:
            raise ValueError(f"--tokenizer {str(path)!r}: has no end-of-document token (an added token named one of "
                             f"{', '.join(EOS_NAMES)}), so its documents could not be split apart again")
        self.tok.encode_special_tokens = True  # "<|endoftext|>" inside a document is text, not a separator

    def token_bytes(self) -> list[int] | None:
        """UTF-8 bytes each id decodes to, for a byte-level tokenizer (its decoder is ByteLevel: every character of
        a token stands for one byte), 0 for the added (special) tokens; None for any other kind of tokenizer, whose
        tokens' bytes depend on their neighbours (bits per byte then use the file's average)."""
        from tokenizers import pre_tokenizers

        decoder = json.loads(self.tok.to_str()).get("decoder") or {}
        if decoder.get("type") != "ByteLevel":
            return None
        alphabet = set(pre_tokenizers.ByteLevel.alphabet())
        added = set(self.tok.get_added_tokens_decoder())
        out = []
        for i in range(self.vocab_size):
            piece = self.tok.id_to_token(i)
            if i in added or piece is None:
                out.append(0)
            elif set(piece) <= alphabet:
                out.append(len(piece))
            else:
                return None
        return out

    def encode_pieces(self, pieces: list[bytes]) -> list[tuple[np.ndarray, int]]:
        texts = [p.decode("utf-8", errors="replace") for p in pieces]
        encs = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        return [(np.asarray(e.ids, np.int64), len(t.encode("utf-8"))) for e, t in zip(encs, texts, strict=True)]


def load_tokenizer(spec: str | Path) -> ByteTokenizer | FileTokenizer:
    """``"bytes"``: :class:`ByteTokenizer`; a tokenizer.json (or a directory holding one): :class:`FileTokenizer`."""
    return ByteTokenizer() if str(spec) == "bytes" else FileTokenizer(spec)


def new_bpe(vocab_size: int):
    """An untrained byte-level BPE tokenizer and its trainer for ``vocab_size`` tokens (specials included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(TRAINED_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tok, trainer


def check_vocab_size(vocab_size) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"--vocab-size {vocab_size!r}: must be an integer in [{MIN_VOCAB}, {MAX_VOCAB}] "
                         f"(the 256 byte symbols and {len(TRAINED_SPECIALS)} specials come first)")
    return vocab_size


def save_tokenizer(tok, out_dir: str | Path) -> Path:
    """Write ``out_dir/tokenizer.json`` atomically (a temporary file, then a rename)."""
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "tokenizer.json"
    fd, tmp = tempfile.mkstemp(prefix=".tokenizer.", suffix=".json.tmp", dir=out_dir)
    os.close(fd)
    try:
        tok.save(tmp, pretty=True)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def train_bpe(path, out_dir, *, vocab_size: int, fmt: str = "auto", glob: str = "**/*.txt", text_field: str = "text",
              max_bytes: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Train a byte-level BPE on the corpus ``path`` (the inputs of ``scaling tokenize``: ``"stdlib"``, a text
    directory, a .jsonl or a text file; the first documents up to ``max_bytes`` if given) and write
    ``out_dir/tokenizer.json``. ``progress(done_bytes, total_bytes)`` follows the reading.

    Returns ``{"out", "vocab_size", "documents", "bytes", "sha256"}``. Raises ValueError naming the option.
    """
    check_vocab_size(vocab_size)
    counts = {"documents": 0, "bytes": 0}

    def texts():
        for starts, piece, read, total in corpus_pieces(path, fmt, glob, text_field, max_bytes):
            counts["documents"] += int(starts)
            counts["bytes"] += len(piece)
            if progress:
                progress(read, total)
            yield piece.decode("utf-8", errors="replace")

    tok, trainer = new_bpe(vocab_size)
    tok.train_from_iterator(texts(), trainer=trainer)
    if counts["bytes"] == 0:
        raise ValueError(f"input {str(path)!r}: no non-empty document to train on")
    out = save_tokenizer(tok, out_dir)
    vocab = json.loads(out.read_text(encoding="utf-8"))["model"]["vocab"]
    return {"out": out, "vocab_size": len(vocab), "documents": counts["documents"], "bytes": counts["bytes"],
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
