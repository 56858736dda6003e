"""Bad input on the command line gets one line, ``error: ...`` on stderr, exit code 2, and no traceback
(scaling.cli): the argument parser's own errors, and numeric flags checked as they are parsed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the command (with a pointer to its -h) instead of the
    usage block and a second line; sub-commands inherit it (add_subparsers uses the parent's class)."""

    def error(self, message):
        print(f"error: {self.prog}: {message} (see {self.prog} -h)", file=sys.stderr)
        raise SystemExit(2)


def int_at_least(lo: int, what: str):
    """An argparse ``type``: an integer >= lo, else one line naming the value and the accepted range
    (argparse adds the flag: ``argument --context: '-3': must be an integer >= 1 (tokens)``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo:
            raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= {lo} ({what})")
        return value

    return parse


def check_generate(args) -> str | None:
    """The sampling flags of ``scaling generate``, checked before the run is loaded: the first bad one as a
    message naming the flag and the accepted values, or None."""
    if args.max_tokens < 0:
        return f"--max-tokens {args.max_tokens}: must be an integer >= 0 (0: only prefill the prompt)"
    if not args.temperature >= 0:
        return f"--temperature {args.temperature}: must be >= 0 (0 is greedy)"
    if args.top_k < 0:
        return f"--top-k {args.top_k}: must be an integer >= 0 (0 keeps every token)"
    if not 0 < args.top_p <= 1:
        return f"--top-p {args.top_p}: must be in (0, 1] (1: off)"
    from scaling.inference import state_path  # --load-state x finds x.npz, as --save-state x writes it

    if args.load_state and not state_path(args.load_state).is_file():
        return f"--load-state {args.load_state!r}: no such file (a state saved by --save-state)"
    if args.save_state and not Path(args.save_state).expanduser().resolve().parent.is_dir():
        return f"--save-state {args.save_state!r}: its directory does not exist"
    return None


def check_corpus(cfg) -> None:
    """Read (and split) the run's corpus before anything is written: an empty corpus or an empty train or
    validation split is then one ConfigError, not a traceback out of training. The corpus is cached per process,
    so training reads it once."""
    from scaling.config import ConfigError
    from scaling.data.config import TASKS
    from scaling.data.corpus import load_corpus

    if cfg.data.source not in TASKS:
        try:
            load_corpus(cfg.data)
        except ValueError as e:
            raise ConfigError(str(e)) from None
