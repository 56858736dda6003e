"""`scaling tokenize`, `scaling tokenizer train` and `scaling data`: the data commands of the command line."""

from __future__ import annotations

import sys


def _byte_bar(label: str, disable: bool):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), disable=disable)


def _with_bar(label: str, disable: bool, fn):
    """(fn(progress=...)'s result, wall seconds) under a byte progress bar; (None, 0) after printing a ValueError
    as one line."""
    import time

    with _byte_bar(label, disable) as bar:
        task = bar.add_task(label, total=None)
        t0 = time.perf_counter()
        try:
            out = fn(progress=lambda done, total: bar.update(task, completed=done, total=total))
        except ValueError as e:
            bar.stop()
            print(f"error: {e}", file=sys.stderr)
            return None, 0.0
        return out, time.perf_counter() - t0


def _tokenize(args) -> int:
    from scaling.data.tokenize import tokenize

    result, wall = _with_bar("tokenize", args.no_progress, lambda progress: tokenize(
        args.input, args.out, fmt=args.format, glob=args.glob, text_field=args.text_field, dtype=args.dtype,
        tokenizer=args.tokenizer, max_bytes=args.max_bytes, workers=args.workers, progress=progress))
    if result is None:
        return 2
    specials = "BOS + ids + EOS" if args.tokenizer == "bytes" else "the tokenizer's specials"
    print(f"wrote {result.out}: {result.documents:,} documents ({result.format}), {result.tokens:,} tokens "
          f"({args.dtype}, {specials} each) from {result.input_bytes:,} bytes in {wall:.1f} s with {args.workers} "
          f"worker{'s' if args.workers > 1 else ''} "
          f"({result.input_bytes / max(wall, 1e-9) / 1e6:.2f} MB/s); {result.text_bytes / result.tokens:.3f} "
          f"bytes per token; metadata {result.meta}")
    print(f"train on it: scaling train CONFIG --set data.source=tokens --set data.path={result.out}"
          + ("" if args.tokenizer == "bytes" else " --set model.vocab_size=V (above its largest id)"))
    return 0


def _tokenizer_train(args) -> int:
    from scaling.data.bpe import train_bpe

    info, wall = _with_bar("read corpus", args.no_progress, lambda progress: train_bpe(
        args.corpus, args.out, vocab_size=args.vocab_size, fmt=args.format, glob=args.glob,
        text_field=args.text_field, max_bytes=args.max_bytes, progress=progress))
    if info is None:
        return 2
    print(f"wrote {info['out']}: byte-level BPE of {info['vocab_size']:,} tokens trained on {info['documents']:,} "
          f"documents ({info['bytes']:,} bytes) in {wall:.1f} s; sha256 {info['sha256'][:16]}")
    print(f"tokenize with it: scaling tokenize CORPUS --tokenizer {info['out']} --out data/corpus.bin")
    return 0


def _data(args) -> int:
    import json

    from scaling import config
    from scaling.data.summary import data_summary, format_summary

    cfg = config.load(args.config, args.set)
    try:
        summary = data_summary(cfg.data, context=cfg.train.context)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _corpus_args(p, name: str) -> None:
    p.add_argument(name, help="stdlib (the embedded corpus: this Python's standard library), a directory of text "
                   "files, a .jsonl / .jsonl.gz / .jsonl.zst file, a .parquet file or a directory of them, or a text "
                   "file (one document)")
    p.add_argument("--format", default="auto", choices=("auto", "stdlib", "text_dir", "jsonl", "parquet", "txt"),
                   help="input kind (auto: stdlib; a directory is parquet if it holds *.parquet files, else text_dir; "
                   "*.jsonl[.gz|.zst] is jsonl, *.parquet is parquet, else txt)")
    p.add_argument("--glob", default="**/*.txt", help="files of a text directory (default **/*.txt)")
    p.add_argument("--text-field", default="text", help="the JSONL field or parquet column holding the text "
                   "(default text)")
    p.add_argument("--max-bytes", type=int, default=None, help="only the first documents, up to this many bytes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parsers(sub) -> None:
    tk = sub.add_parser("tokenize", help="convert the stdlib, a text directory, .jsonl or text file into a "
                        "memory-mapped token file (+ metadata) for data.source=tokens",
                        description="Stream documents through a tokenizer (the byte tokenizer, or a Hugging Face "
                        "tokenizer.json) into FILE (.bin: raw ids, or .npy), each wrapped in the tokenizer's BOS "
                        "(if any) and EOS, and write FILE.meta.json beside it, so data.source=tokens reads back the "
                        "same documents and reports bits per byte.")
    _corpus_args(tk, "input")
    tk.add_argument("--out", required=True, help="the token file to write, e.g. data/corpus.bin")
    tk.add_argument("--tokenizer", default="bytes", help="bytes (default: ids 0-255, PAD 256, BOS 257, EOS 258) or "
                    "PATH/tokenizer.json (e.g. one from `scaling tokenizer train`)")
    tk.add_argument("--dtype", default="uint16", choices=("uint16", "uint32"), help="id dtype (default uint16)")
    tk.add_argument("--workers", type=int, default=1, help="processes that encode (default 1: this one); the file "
                    "is the same whatever the count")
    tk.set_defaults(func=_tokenize)

    d = sub.add_parser("data", help="summarise what a run would read: source, tokenizer, documents and tokens per "
                       "split, padding with and without packing, bytes per token",
                       description="Load the run config CONFIG (with --set overrides) and summarise its data at "
                       "train.context, reading the corpus once; nothing is trained.")
    d.add_argument("config", help="a run config file, e.g. configs/base.py")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.set_defaults(func=_data)

    tz = sub.add_parser("tokenizer", help="tokenizer tools: train a byte-level BPE on a local corpus")
    tz_sub = tz.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    tt = tz_sub.add_parser("train", help="train a byte-level BPE (Hugging Face tokenizers) on a corpus",
                           description="Train a byte-level BPE with VOCAB_SIZE tokens (PAD, BOS, EOS = 0, 1, 2, then "
                           "the 256 byte symbols, then merges) on CORPUS and write OUT/tokenizer.json. "
                           "Deterministic: the same corpus gives the same file. Nothing is downloaded.")
    _corpus_args(tt, "corpus")
    tt.add_argument("--vocab-size", type=int, required=True, help="tokens in the vocabulary, specials included")
    tt.add_argument("--out", required=True, help="directory for tokenizer.json")
    tt.set_defaults(func=_tokenizer_train)
