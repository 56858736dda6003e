"""What a run would read (``scaling data CONFIG``): source, tokenizer, documents, tokens, padding, bytes per token.

:func:`data_summary` returns a JSON-safe dict::

    source, path, tokenizer ("bytes", a tokenizer file, or null: a raw token file), vocab_size (the tokenizer's),
    specials {bos, eos, pad}, packing (in effect), context,
    train / validation: {documents, tokens (as streamed: with each document's BOS / EOS), bytes (UTF-8 bytes of
                         text: counted for the byte tokenizer and byte-level BPEs (bytes_counted), else the split's
                         ids x the file's bytes per id from its metadata; null when unknown), bytes_per_token},
    padding: {packed, unpacked}: the fraction of target slots of one epoch of the training split that are padding
             (loss_mask 0) at ``context``, with and without packing,
    eval_rows: rows of the fixed evaluation set at ``context``

Padding is counted exactly from the document lengths: without packing a document of ``L`` streamed tokens gives
``ceil((L - 1) / context)`` windows holding ``L - 1`` targets; with packing the ``N`` tokens of the split fill
``ceil(N / (context + 1))`` windows, padded only at the end. A synthetic task has no corpus: its summary names the
task and its parameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling.data import tokens as _tokens
from scaling.data.config import TASKS, validate_data_config
from scaling.data.corpus import load_corpus
from scaling.data.tokenizer import N_BYTES


def padding_fraction(lengths: np.ndarray, context: int, packing: bool) -> float:
    """Share of the target slots of the windows of documents of ``lengths`` streamed tokens that are padding."""
    lengths = np.asarray(lengths, np.int64)
    if packing:
        n = int(lengths.sum())
        rows = -(-n // (context + 1))
        slots = rows * context
        return (slots - (n - rows)) / slots
    windows = -(-(lengths - 1) // context)
    slots = int(windows.sum()) * context
    return 1.0 - int((lengths - 1).sum()) / slots


def _split(docs, n_special: int, bytes_per_id: float | None, table: np.ndarray | None) -> dict[str, Any]:
    n_ids = sum(len(d) for d in docs)
    if table is not None:  # the bytes of each id: counted exactly
        n_bytes = sum(int(table[np.asarray(d.ids)].sum()) for d in docs)
    else:
        n_bytes = None if bytes_per_id is None else round(n_ids * bytes_per_id)
    tokens = n_ids + n_special * len(docs)
    return {"documents": len(docs), "tokens": tokens, "bytes": n_bytes,
            "bytes_per_token": None if n_bytes is None else n_bytes / tokens}


def data_summary(data_cfg: Any, *, context: int) -> dict[str, Any]:
    """The summary of the module docstring for the data config ``data_cfg`` at ``context`` tokens a row."""
    from scaling.data.pipeline import eval_rows

    c = validate_data_config(data_cfg)
    out: dict[str, Any] = {"source": c["source"], "path": c["path"], "context": context, "packing": c["packing"],
                           "eval_rows": eval_rows(c, context)}
    if c["source"] in TASKS:
        return {**out, "tokenizer": None, "task": c["task"]}
    corpus = load_corpus(c)
    bos, eos, pad = corpus.specials
    out["specials"] = {"bos": bos, "eos": eos, "pad": pad}
    tokenizer, vocab, bytes_per_id = "bytes", N_BYTES + 3, None
    table = np.array([1] * N_BYTES + [0] * 3)
    if c["source"] == "tokens":
        spec = _tokens.spec_of(c)
        tokenizer, vocab = spec.tokenizer, spec.vocab_size
        if spec.tokenizer != "bytes":
            table = None if spec.token_bytes is None else np.asarray(spec.token_bytes, np.int64)
        if table is None and spec.n_bytes:
            # the metadata counts the file's bytes and ids; documents get the file's average
            n_specials = spec.n_tokens - sum(len(d) for d in corpus.train + corpus.validation)
            bytes_per_id = spec.n_bytes / max(spec.n_tokens - n_specials, 1)
    n_special = 1 if bos is None else 2
    out.update(tokenizer=tokenizer, vocab_size=vocab)
    for name in ("train", "validation"):
        out[name] = _split(corpus.split(name), n_special, bytes_per_id, table)
    out["bytes_counted"] = table is not None
    lengths = np.array([len(d) + n_special for d in corpus.train], np.int64)
    out["padding"] = {"packed": padding_fraction(lengths, context, True),
                      "unpacked": padding_fraction(lengths, context, False)}
    return out


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a few lines of text."""
    lines = [f"source    {s['source']}" + (f"  {s['path']}" if s["path"] else "")]
    if s["source"] in TASKS:
        task = ", ".join(f"{k}={v}" for k, v in s["task"].items())
        return "\n".join(lines + [f"task      {task}", f"context   {s['context']:,}; eval set {s['eval_rows']:,} rows"])
    tok = s["tokenizer"] or "unknown (a token file without metadata)"
    vocab = f", vocabulary {s['vocab_size']:,}" if s["vocab_size"] else ""
    sp = s["specials"]
    lines.append(f"tokenizer {tok}{vocab}; BOS {sp['bos']}, EOS {sp['eos']}, PAD {sp['pad']}")
    for name in ("train", "validation"):
        d = s[name]
        about = "" if s["bytes_counted"] else "~"  # else estimated from the file's bytes per id
        bpt = "bytes unknown" if d["bytes"] is None else \
            f"{about}{d['bytes']:,} bytes, {d['bytes_per_token']:.3f} bytes/token"
        lines.append(f"{name:<10}{d['documents']:>10,} documents {d['tokens']:>14,} tokens  {bpt}")
    p = s["padding"]
    on = "packed" if s["packing"] else "unpacked"
    lines.append(f"context   {s['context']:,}: padding {100 * p['packed']:.2f}% packed, {100 * p['unpacked']:.2f}% "
                 f"unpacked (data.packing = {s['packing']}: {on}); eval set {s['eval_rows']:,} rows")
    return "\n".join(lines)
