"""Data preset stdlib: the running Python's standard library as a byte-level corpus (no download).

The ``data`` section (defaults and checks in scaling/data/config.py):
  source        one of stdlib, text_dir, jsonl, parquet, tokens (corpora) or mqar, selective_copy, induction,
                needle (synthetic recall tasks, scaling/data/synthetic.py; see configs/data/mqar.py)
  path          None for stdlib; a directory (text_dir), a .jsonl / .jsonl.gz / .jsonl.zst file (jsonl), a .parquet
                file or a directory of them (parquet), a .npy / .bin file (tokens)
  glob          files read by text_dir, relative to path
  text_field    the string field of each jsonl record, or the text column of the parquet files
  token_dtype   dtype of a raw .bin token file (a .npy carries its own; a metadata file's dtype wins)
  eos_id        the id between the documents of a token file without metadata (<file>.meta.json, written by
                scaling tokenize), e.g. 50256 for nanoGPT's GPT-2 train.bin; None: the metadata says
  val_fraction  share of documents in validation, by a stable hash of the document key
  packing       True: concatenate documents and split into windows, kept apart by segment ids (rows shuffled
                within windows of 1024 rows); False: windows within documents, padded, shuffled over the whole
                corpus. None (default): True for jsonl, parquet and tokens (short documents), False for stdlib and
                text_dir (scaling.data.config.default_packing): the stdlib's files are long (18k bytes on average),
                so unpacked windows waste little on padding and mix batches far better
  eval_tokens   size of the fixed held-out evaluation set: ceil(eval_tokens / context) rows spread evenly over
                the validation stream, the same rows for every run of one source and context (any batch size)
  task          the synthetic tasks' parameters (scaling.data.synthetic.TASK_DEFAULTS); corpora ignore them
"""

from ml_collections import ConfigDict


def get_config():
    return ConfigDict({"data": {
        "source": "stdlib", "path": None, "glob": "**/*.txt", "text_field": "text",
        "token_dtype": "uint16", "eos_id": None, "val_fraction": 0.02, "packing": None, "eval_tokens": 65536,
        "task": {"vocab_size": 128, "num_kv_pairs": 8, "num_queries": None, "power_a": 0.01, "num_tokens": 8,
                 "depth": None, "needle_digits": 6, "eval_seed": 1234},
    }})
