"""Data: tokenizers, corpus sources, token files and grain pipelines.

- :mod:`scaling.data.tokenizer`: bytes 0..255 plus PAD=256, BOS=257, EOS=258 (``VOCAB_SIZE = 259``).
- :mod:`scaling.data.bpe`: any Hugging Face ``tokenizer.json``; a byte-level BPE trained on a local corpus.
- :mod:`scaling.data.tokenize`: corpora -> a token file and its metadata (``scaling tokenize``).
- :mod:`scaling.data.tokens`: token files' metadata (``<file>.meta.json``), raw files (``data.eos_id``), bits per
  byte across tokenizers.
- :mod:`scaling.data.corpus`: sources ``stdlib`` (default), ``text_dir``, ``jsonl``, ``tokens``; the stable
  hash train/validation split; ``validate_data_config``; ``corpus_stats``.
- :mod:`scaling.data.pipeline`: packed (or per-document) windows of ``context + 1`` tokens as batches of
  ``inputs``, ``targets``, ``segment_ids``, ``positions`` ``[B, T]`` int32 and ``loss_mask`` ``[B, T]``
  float32; ``make_train_iterator`` (resumable) and ``make_eval_batches``.
"""

from scaling.data.corpus import (
    DATA_DEFAULTS,
    SOURCES,
    Corpus,
    Document,
    corpus_stats,
    load_corpus,
    validate_data_config,
)
from scaling.data.pipeline import BATCH_KEYS, DataIterator, make_eval_batches, make_train_iterator
from scaling.data.tokenizer import BOS, EOS, PAD, VOCAB_SIZE, decode, decode_bytes, encode

__all__ = [
    "BATCH_KEYS",
    "BOS",
    "DATA_DEFAULTS",
    "EOS",
    "PAD",
    "SOURCES",
    "VOCAB_SIZE",
    "Corpus",
    "DataIterator",
    "Document",
    "corpus_stats",
    "decode",
    "decode_bytes",
    "encode",
    "load_corpus",
    "make_eval_batches",
    "make_train_iterator",
    "validate_data_config",
]
