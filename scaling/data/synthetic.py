"""Synthetic recall tasks as grain sources: MQAR, selective copying, induction heads, needle in a haystack.

Each task draws example ``i`` of a stream from its own generator, ``np.random.default_rng((stream, seed, i))``
(``stream`` 0 = training, 1 = evaluation), so a stream is deterministic for a seed, any example can be
read without the ones before it, and the evaluation stream (``data.task.eval_seed``) never shares a
generator with a training stream whatever ``train.seed`` is. An example is a sequence of ``context + 1``
tokens ``s``; its row is the batch row of the text pipeline (:data:`scaling.data.pipeline.BATCH_KEYS`):

==============  ==========  =======================================================================
``inputs``      [T] i32     ``s[:-1]``, except for MQAR (below)
``targets``     [T] i32     ``s[1:]`` (so ``targets[t] == inputs[t + 1]``, as for text, except at MQAR's answers)
``segment_ids`` [T] i32     all 1: one example per row
``positions``   [T] i32     ``0 .. T-1``
``loss_mask``   [T] f32     1.0 exactly where ``targets[t]`` is an answer token, 0.0 elsewhere
==============  ==========  =======================================================================

Tasks (``data.source``; parameters under ``data.task``)
-------------------------------------------------------
``mqar``  multi-query associative recall (Zoology, Arora et al. 2023). With ``V = task.vocab_size`` and
    ``N = task.num_kv_pairs``: keys are drawn without replacement from ``[1, V/2)`` and values without
    replacement from ``[V/2, V)`` (as Zoology). The sequence starts with the
    ``N`` pairs ``k1 v1 k2 v2 ...``; the rest is filler (token 0) cut into slots of two tokens, and
    ``task.num_queries`` of the keys (all ``N`` when None) are asked again, each as the first token of a
    slot drawn without replacement with probability ``∝ g ** (task.power_a - 1)`` for slot ``g = 1, 2, ...``
    (Zoology's power-law placement: most queries come soon after the pairs, a few far away). The answer
    is the key's value: ``loss_mask`` is 1 at the key's input position and ``targets`` holds the value
    there, while the next input stays filler. As in Zoology, answers are targets only and never inputs:
    were they fed back, a model could score (1/N + ... + 1)/N (0.34 at N = 8) without recalling anything,
    by guessing among the values not yet answered.
``selective_copy``  (Mamba, Gu & Dao 2023). ``task.num_tokens = K`` data tokens from ``[2, V)`` (with
    replacement) at random positions of a region of filler (0); then a marker (1) and the ``K`` data
    tokens again in order. The answers are those ``K`` tokens (predicted from the marker on).
``induction``  induction heads (Olsson et al. 2022; H3's synthetic). Random tokens from ``[1, V)``; the
    trigger (0) appears once at a random position followed by a random token, and again as the last
    input: the one answer is the token that followed the first trigger.
``needle``  needle in a haystack over the embedded corpus (``stdlib`` bytes: the training split for the
    training stream, the validation split for evaluation). A stretch of corpus bytes with the sentence
    ``"\\n# The secret number of <key> is <value>.\\n"`` inserted at ``task.depth`` (a fraction of the
    haystack; uniform per example when None), ``<key>`` five random lowercase letters, ``<value>``
    ``task.needle_digits`` random digits; the sequence ends with ``"\\n# The secret number of <key> is "``
    and the value, whose digits are the answers. Tokens are bytes (< 256).

Metric: ``task_accuracy``, exact-match accuracy per answer token: the fraction of positions with
``loss_mask`` 1 where the model's argmax equals the target (:func:`answer_accuracy`).

Tokens of the first three tasks lie in ``[0, task.vocab_size)``, which must not exceed ``model.vocab_size``
(:func:`check_task` says so before any compute).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

TASKS = ("mqar", "selective_copy", "induction", "needle")
FILLER, MARKER, TRIGGER = 0, 1, 0
STREAMS = {"train": 0, "eval": 1}

# Defaults of every data.task field (each task reads the ones its docstring names).
TASK_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128,  # mqar / selective_copy / induction: tokens in [0, vocab_size)
    "num_kv_pairs": 8,  # mqar
    "num_queries": None,  # mqar: how many keys are queried; None = all num_kv_pairs
    "power_a": 0.01,  # mqar: query slot g drawn with probability ∝ g ** (power_a - 1)
    "num_tokens": 8,  # selective_copy: data tokens to copy
    "depth": None,  # needle: insertion depth in [0, 1]; None = uniform per example
    "needle_digits": 6,  # needle: digits of the value
    "eval_seed": 1234,  # held-out evaluation stream
}

NEEDLE = "\n# The secret number of {key} is {value}.\n"
QUESTION = "\n# The secret number of {key} is "
_KEY_LEN = 5
_LEN = 2**40  # examples per stream: unbounded in practice


# ----------------------------------------------------------------------------------------------------------
# Validation


def _fail(field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{field} = {value!r}: {why}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def task_params(data: Mapping[str, Any], *, prefix: str = "data") -> dict[str, Any]:
    """``data.task`` with defaults filled in and every field checked (context-free checks only).

    ``data`` is the resolved data config as a dict. Raises ValueError naming ``data.task.<field>``.
    """
    given = data.get("task") or {}
    if hasattr(given, "to_dict"):
        given = given.to_dict()
    if not isinstance(given, Mapping):
        raise _fail(f"{prefix}.task", given, f"must be a mapping with fields {', '.join(TASK_DEFAULTS)}")
    unknown = sorted(set(given) - set(TASK_DEFAULTS))
    if unknown:
        raise ValueError(f"{prefix}.task.{unknown[0]}: unknown field; accepted fields: {', '.join(TASK_DEFAULTS)}")
    p = {**TASK_DEFAULTS, **given}
    f = f"{prefix}.task"
    for name, lo in (("vocab_size", 4), ("num_kv_pairs", 1), ("num_tokens", 1), ("needle_digits", 1)):
        if not _is_int(p[name]) or p[name] < lo:
            raise _fail(f"{f}.{name}", p[name], f"must be an integer >= {lo}")
    if not _is_int(p["eval_seed"]) or not 0 <= p["eval_seed"] < 2**32:
        raise _fail(f"{f}.eval_seed", p["eval_seed"], "must be an integer in [0, 2**32 - 1]")
    nq = p["num_queries"]
    if nq is not None and (not _is_int(nq) or not 1 <= nq <= p["num_kv_pairs"]):
        raise _fail(f"{f}.num_queries", nq, f"must be None (all) or an integer in [1, num_kv_pairs = "
                                            f"{p['num_kv_pairs']}]")
    pa = p["power_a"]
    if isinstance(pa, bool) or not isinstance(pa, int | float) or not 0 < pa <= 1:
        raise _fail(f"{f}.power_a", pa, "must be a number in (0, 1] (1 = uniform query placement)")
    d = p["depth"]
    if d is not None and (isinstance(d, bool) or not isinstance(d, int | float) or not 0 <= d <= 1):
        raise _fail(f"{f}.depth", d, "must be None (uniform) or a number in [0, 1]")
    source = data.get("source")
    half = p["vocab_size"] // 2
    if source == "mqar" and p["num_kv_pairs"] > half - 1:
        raise _fail(f"{f}.num_kv_pairs", p["num_kv_pairs"],
                    f"needs that many distinct keys in [1, vocab_size // 2 = {half}): at most {half - 1}; "
                    "raise data.task.vocab_size")
    return p


def min_context(data: Mapping[str, Any]) -> int:
    """The shortest ``train.context`` a task's sequence fits in."""
    source, p = data["source"], task_params(data)
    if source == "mqar":
        nq = p["num_queries"] or p["num_kv_pairs"]
        return 2 * p["num_kv_pairs"] + 2 * nq - 1  # sequence 2N + 2Q tokens = context + 1
    if source == "selective_copy":
        return 2 * p["num_tokens"]  # region of >= K tokens, the marker, K answers
    if source == "induction":
        return 4
    return len(NEEDLE.format(key="k" * _KEY_LEN, value="0" * p["needle_digits"])) + \
        len(QUESTION.format(key="k" * _KEY_LEN)) + p["needle_digits"] - 1


def check_task(data: Any, *, context: int, vocab_size: int | None = None, field: str = "train.context") -> None:
    """Checks a task against the run: ``context`` holds its sequence and its tokens fit ``vocab_size``.

    Raises ValueError naming the field (``train.context``, ``data.task.vocab_size``) and what it accepts.
    """
    from scaling.data.corpus import validate_data_config

    c = validate_data_config(data)
    if c["source"] not in TASKS:
        return
    p = task_params(c)
    need = min_context(c)
    if context < need:
        raise _fail(field, context, f"too short for data.source = {c['source']!r} with these data.task settings: "
                                    f"must be >= {need}")
    if vocab_size is not None:
        top = 256 if c["source"] == "needle" else p["vocab_size"]
        if top > vocab_size:
            name = "data.task.vocab_size" if c["source"] != "needle" else "data.source"
            value = p["vocab_size"] if c["source"] != "needle" else c["source"]
            raise _fail(name, value, f"its tokens lie in [0, {top}), beyond model.vocab_size = {vocab_size}; "
                                     f"must be <= {vocab_size}")


# ----------------------------------------------------------------------------------------------------------
# Examples: one sequence of context + 1 tokens and the mask of its answers (a mask over targets, [context])


def _power_law_slots(rng: np.random.Generator, n_slots: int, k: int, a: float) -> np.ndarray:
    g = np.arange(1, n_slots + 1, dtype=np.float64)
    p = a * g ** (a - 1.0)
    return rng.choice(n_slots, size=k, replace=False, p=p / p.sum())


def mqar_example(rng: np.random.Generator, context: int, p: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    V, N = p["vocab_size"], p["num_kv_pairs"]
    Q = p["num_queries"] or N
    half = V // 2
    keys = rng.choice(np.arange(1, half), size=N, replace=False)
    values = rng.choice(np.arange(half, V), size=N, replace=False)
    seq = np.full(context + 1, FILLER, np.int64)
    seq[0:2 * N:2], seq[1:2 * N:2] = keys, values
    n_slots = (context + 1 - 2 * N) // 2
    slots = _power_law_slots(rng, n_slots, Q, float(p["power_a"]))
    asked = rng.choice(N, size=Q, replace=False)
    at = 2 * N + 2 * slots  # the query key's position in the sequence
    seq[at], seq[at + 1] = keys[asked], values[asked]
    mask = np.zeros(context, np.float32)
    mask[at] = 1.0  # the input at `at` is the key; its target (seq[at + 1]) is the value, never an input
    return seq, mask


def selective_copy_example(rng: np.random.Generator, context: int, p: Mapping[str, Any]):
    K, V = p["num_tokens"], p["vocab_size"]
    region = context + 1 - (K + 1)
    data = rng.integers(2, V, size=K)
    where = np.sort(rng.choice(region, size=K, replace=False))
    seq = np.full(context + 1, FILLER, np.int64)
    seq[where] = data
    seq[region] = MARKER
    seq[region + 1:] = data
    mask = np.zeros(context, np.float32)
    mask[region:] = 1.0
    return seq, mask


def induction_example(rng: np.random.Generator, context: int, p: Mapping[str, Any]):
    V = p["vocab_size"]
    seq = rng.integers(1, V, size=context + 1)
    first = int(rng.integers(0, context - 2))  # trigger at first, its token at first + 1 < context - 1
    seq[first] = TRIGGER
    seq[context - 1] = TRIGGER
    seq[context] = seq[first + 1]
    mask = np.zeros(context, np.float32)
    mask[context - 1] = 1.0
    return seq, mask


@functools.lru_cache(maxsize=2)
def _haystack(val_fraction: float, split: str) -> np.ndarray:
    from scaling.data.corpus import load_corpus

    corpus = load_corpus({"source": "stdlib", "val_fraction": val_fraction})
    gap = np.frombuffer(b"\n\n", np.uint8)  # the files of the split, one after another
    return np.concatenate([part for d in corpus.split(split) for part in (np.asarray(d.ids, np.uint8), gap)])


def needle_example(rng: np.random.Generator, context: int, p: Mapping[str, Any], haystack: np.ndarray):
    key = "".join(chr(c) for c in rng.integers(ord("a"), ord("z") + 1, size=_KEY_LEN))
    value = "".join(chr(c) for c in rng.integers(ord("0"), ord("9") + 1, size=p["needle_digits"]))
    needle = np.frombuffer(NEEDLE.format(key=key, value=value).encode(), np.uint8)
    question = np.frombuffer((QUESTION.format(key=key) + value).encode(), np.uint8)
    n_hay = context + 1 - needle.size - question.size
    start = int(rng.integers(0, haystack.size - n_hay))
    hay = haystack[start:start + n_hay]
    depth = float(rng.random()) if p["depth"] is None else float(p["depth"])
    cut = round(depth * n_hay)
    seq = np.concatenate([hay[:cut], needle, hay[cut:], question]).astype(np.int64)
    mask = np.zeros(context, np.float32)
    mask[context - p["needle_digits"]:] = 1.0  # targets context - digits .. context - 1 are the digits
    return seq, mask


def _row(seq: np.ndarray, mask: np.ndarray, *, hide_answers: bool = False) -> dict[str, np.ndarray]:
    """The batch row of a sequence; ``hide_answers`` puts filler in place of each answer as an input."""
    seq = seq.astype(np.int32)
    T = mask.size
    inputs = seq[:-1].copy()
    if hide_answers:
        inputs[1:][mask[:-1] > 0] = FILLER
    return {"inputs": inputs, "targets": seq[1:], "segment_ids": np.ones(T, np.int32),
            "positions": np.arange(T, dtype=np.int32), "loss_mask": mask}


# ----------------------------------------------------------------------------------------------------------
# grain source


class TaskSource:
    """A ``grain.RandomAccessDataSource`` of one task's rows: item ``i`` is example ``i`` of the stream.

    Args:
      data_cfg: the data config, ``data.source`` one of :data:`TASKS`.
      context: tokens per row T.
      stream: "train" or "eval".
      seed: the stream's seed (``train.seed`` for training, ``data.task.eval_seed`` for evaluation).
    """

    def __init__(self, data_cfg: Any, *, context: int, stream: str, seed: int):
        from scaling.data.corpus import validate_data_config

        c = validate_data_config(data_cfg)
        if c["source"] not in TASKS:
            raise _fail("data.source", c["source"], f"not a synthetic task; tasks are {', '.join(TASKS)}")
        if stream not in STREAMS:
            raise _fail("stream", stream, f"must be one of {', '.join(STREAMS)}")
        check_task(c, context=context)
        self.task, self.params, self.context = c["source"], task_params(c), context
        self.key = (STREAMS[stream], int(seed))
        self._hay = _haystack(float(c["val_fraction"]), "train" if stream == "train" else "validation") \
            if self.task == "needle" else None
        if self._hay is not None and self._hay.size <= context:
            raise _fail("train.context", context, f"longer than the {stream} haystack ({self._hay.size} bytes)")

    def __len__(self) -> int:
        return _LEN

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((*self.key, int(index)))
        if self.task == "mqar":
            seq, mask = mqar_example(rng, self.context, self.params)
        elif self.task == "selective_copy":
            seq, mask = selective_copy_example(rng, self.context, self.params)
        elif self.task == "induction":
            seq, mask = induction_example(rng, self.context, self.params)
        else:
            seq, mask = needle_example(rng, self.context, self.params, self._hay)
        return _row(seq, mask, hide_answers=self.task == "mqar")

    def __repr__(self) -> str:
        return f"TaskSource({self.task}, context={self.context}, key={self.key})"


def _pipeline_id(c: Mapping[str, Any], p: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
    # JSON round trip so the saved pipeline compares equal to a rebuilt one (tuples, numpy ints).
    return json.loads(json.dumps({"source": c["source"], "task": dict(p), "val_fraction": c["val_fraction"], **kw},
                                 default=str))


def make_task_train_iterator(data_cfg: Any, *, batch_size: int, context: int, seed: int,
                             process_index: int = 0, process_count: int = 1):
    """The training stream of a task as a resumable :class:`scaling.data.pipeline.DataIterator`; ``batch_size`` is
    the global batch, of which process ``process_index`` reads (generates) only its rows ``[p*B/P, (p+1)*B/P)``."""
    from scaling.data.corpus import validate_data_config
    from scaling.data.pipeline import _READ, DataIterator, _process_rows

    c = validate_data_config(data_cfg)
    src = TaskSource(c, context=context, stream="train", seed=seed)
    ds = _process_rows(grain.MapDataset.source(src), batch_size, process_index, process_count)
    ds = ds.batch(batch_size // process_count, drop_remainder=True).to_iter_dataset(_READ)
    return DataIterator(iter(ds), _pipeline_id(c, src.params, batch_size=batch_size, context=context, seed=seed,
                                               process_index=process_index, process_count=process_count))


def task_eval_rows(data_cfg: Any, *, context: int, num_rows: int) -> list[dict[str, np.ndarray]]:
    """The first ``num_rows`` rows of the held-out stream (seed ``data.task.eval_seed``)."""
    from scaling.data.corpus import validate_data_config

    c = validate_data_config(data_cfg)
    src = TaskSource(c, context=context, stream="eval", seed=task_params(c)["eval_seed"])
    return [src[i] for i in range(num_rows)]


# ----------------------------------------------------------------------------------------------------------
# Metric


def answer_accuracy(predictions: Any, batch: Mapping[str, Any]) -> float:
    """Exact-match accuracy per answer token: mean of ``predictions == targets`` where ``loss_mask`` is 1.

    ``predictions`` [B, T] token ids (the argmax of the logits). NaN if the batch has no answer.
    """
    pred, mask = np.asarray(predictions), np.asarray(batch["loss_mask"]) > 0
    n = int(mask.sum())
    return float((pred == np.asarray(batch["targets"]))[mask].sum() / n) if n else math.nan
