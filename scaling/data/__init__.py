"""Data: the data config, corpus sources, tokenizers, token files and grain pipelines.

Layers, each importing only those above it:

- :mod:`scaling.data.config`: every data field's default and its validation (``validate_data_config``), the
  source and task names, the synthetic tasks' parameters.
- :mod:`scaling.data.tokenizer`: bytes 0..255 plus PAD=256, BOS=257, EOS=258 (``VOCAB_SIZE = 259``).
- :mod:`scaling.data.sources`: the readers of the text sources (stdlib, text directories, plain or compressed
  JSONL, parquet), streaming, and the input of ``scaling tokenize``.
- :mod:`scaling.data.tokens`: token files' metadata (``<file>.meta.json``), raw files (``data.eos_id``), bits per
  byte across tokenizers.
- :mod:`scaling.data.bpe`: any Hugging Face ``tokenizer.json``; a byte-level BPE trained on a local corpus.
- :mod:`scaling.data.tokenize`: corpora -> a token file and its metadata (``scaling tokenize``), in parallel.
- :mod:`scaling.data.corpus`: a config's documents, the stable hash train/validation split, ``corpus_stats``.
- :mod:`scaling.data.synthetic`: the synthetic recall tasks as numpy generators (random-access sources).
- :mod:`scaling.data.pipeline`: all grain code: packed (or per-document) windows of ``context + 1`` tokens as
  batches of ``inputs``, ``targets``, ``segment_ids``, ``positions`` ``[B, T]`` int32 and ``loss_mask`` ``[B, T]``
  float32; ``make_train_iterator`` (resumable) and ``make_eval_batches``, for corpora and tasks.
- :mod:`scaling.data.summary`: what a run would read (``scaling data``): documents, tokens, padding, bytes per token.
"""

from scaling.data.config import DATA_DEFAULTS, SOURCES, TASKS, validate_data_config
from scaling.data.corpus import Corpus, corpus_stats, load_corpus
from scaling.data.pipeline import BATCH_KEYS, DataIterator, make_eval_batches, make_train_iterator
from scaling.data.sources import Document
from scaling.data.tokenizer import BOS, EOS, PAD, VOCAB_SIZE, decode, decode_bytes, encode

__all__ = [
    "BATCH_KEYS",
    "BOS",
    "DATA_DEFAULTS",
    "EOS",
    "PAD",
    "SOURCES",
    "TASKS",
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
