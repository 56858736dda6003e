"""grain pipelines: documents -> fixed-length windows -> batches.

Stream
------
Each document (see :mod:`scaling.data.corpus`) enters the stream as ``[BOS, *ids, EOS]`` (int32), with the
corpus's own specials (``Corpus.specials``: a token file's BOS, EOS and PAD; no BOS for a file without one, such
as GPT-2 ids separated by EOT, and PAD = EOS when it has no PAD). The
stream is cut into *windows* of ``context + 1`` tokens; a window ``w`` gives ``inputs = w[:-1]`` and
``targets = w[1:]``.

- ``packing=True`` (default): documents are concatenated and the concatenation is split every
  ``context + 1`` tokens (grain's ``ConcatThenSplitIterDataset``), so a window may hold the tail of one
  document, whole documents and the head of another; a long document continues in the next window.
  Nothing is padded except the very end of a finite (validation) stream.
- ``packing=False``: windows never cross documents. A document of ``L`` tokens (with BOS/EOS) gives the
  windows starting at ``0, context, 2*context, ...`` (consecutive windows share one token, so every
  next-token pair of the document is a target exactly once); the last one is padded with PAD.

Batch format
------------
A batch is a dict of numpy arrays, ``B = batch_size``, ``T = context``:

==============  ==========  =======================================================================
``inputs``      [B, T] i32  token ids fed to the model (PAD, 256 for bytes, where padded)
``targets``     [B, T] i32  next token of each input (``targets[:, t] == inputs[:, t + 1]``)
``segment_ids`` [B, T] i32  of each input: 1, 2, ... per document within the row; 0 = padding
``positions``   [B, T] i32  of each input: its index within its own document (BOS = 0), so a document
                            continued from the previous window does not restart at 0
``loss_mask``   [B, T] f32  1.0 where the target is a real token, 0.0 where it is padding
==============  ==========  =======================================================================

A new document starts exactly after an EOS: there ``segment_ids`` steps up by one and ``positions``
restarts at 0, which lets a model reset its recurrent state or mask attention across documents.

Iterators
---------
``make_train_iterator`` returns a :class:`DataIterator` over an infinite stream: documents (packing) or
windows (no packing) are shuffled by ``seed`` and every epoch is reshuffled with ``seed + epoch``
(grain's index shuffle). ``get_state()`` returns a JSON-serialisable dict and ``set_state`` restores it in a
fresh iterator, so a resumed run sees exactly the batches of an uninterrupted one. All work happens in the
calling thread (no grain worker processes or threads).

Processes
---------
``batch_size`` is the global batch B. With P processes (``process_index`` p / ``process_count`` P, by default
``jax.process_index()`` / ``jax.process_count()``) both entry points give process p rows ``[p*B/P, (p+1)*B/P)`` of
every global batch, so the processes' batches concatenated in process order are the one-process batches, row for
row. Unpacked windows and synthetic examples are read by index (global row ``b*B + p*B/P + j``), so a process reads
only its own rows; the packed stream is sequential, so each process builds the global batch and keeps its slice.

``make_eval_batches`` returns the fixed evaluation set: ceil(``data.eval_tokens`` / context) rows spread evenly
over the unshuffled validation stream, the same rows whatever the batch size (fewer if the stream is shorter;
a last partial batch is filled with padding rows, loss_mask 0).

Synthetic tasks (``data.source`` in :data:`scaling.data.config.TASKS`) go through the same two entry
points: the training stream is the task's examples for ``seed``, the evaluation batches come from its held-out
``data.task.eval_seed`` stream, and the rows have this same format (see :mod:`scaling.data.synthetic`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from scaling.data import synthetic
from scaling.data.config import TASKS, validate_data_config
from scaling.data.corpus import corpus_stats, load_corpus
from scaling.data.sources import Document
from scaling.data.tokenizer import BOS, EOS, PAD, wrap_document

__all__ = [
    "BATCH_KEYS",
    "DataIterator",
    "corpus_stats",
    "eval_rows",
    "make_eval_batches",
    "make_train_iterator",
]

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")

# Documents are already in memory: reading threads would only contend for the GIL, and threads or worker
# processes would make the per-process cost depend on the machine.
_READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


# ----------------------------------------------------------------------------------------------------------
# Argument checks


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} = {value!r}: must be an integer {bound}")
    return int(value)


def _check_fits(docs: Sequence[Document], context: int, split: str, n_special: int = 2) -> None:
    longest = max(len(d) for d in docs) + n_special
    if longest < context + 1:
        raise ValueError(
            f"context = {context}: longer than every document of the {split} split (the longest has "
            f"{longest} tokens with BOS/EOS, a window needs context + 1 = {context + 1}) while "
            "data.packing = False; set data.packing = True or a context <= "
            f"{longest - 1}"
        )


# ----------------------------------------------------------------------------------------------------------
# Windows -> rows


def _row(window: np.ndarray, seg: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
    """One row of a batch from a window of ``context + 1`` tokens and its segment ids / positions."""
    return {
        "inputs": window[:-1],
        "targets": window[1:],
        "segment_ids": seg[:-1],
        "positions": pos[:-1],
        "loss_mask": (seg[1:] != 0).astype(np.float32),
    }


def _doc_features(ids: np.ndarray, specials=(BOS, EOS, PAD)) -> dict[str, np.ndarray]:
    tokens = wrap_document(ids, specials[0], specials[1])
    # Packed alongside the tokens so that a split document keeps its true positions (grain's own
    # *_positions restart at 0 in every window).
    return {"tokens": tokens, "pos": np.arange(tokens.size, dtype=np.int32)}


def _packed_row(el: dict[str, np.ndarray], pad_id: int = PAD) -> dict[str, np.ndarray]:
    seg = el["tokens_segment_ids"].astype(np.int32)
    pad = seg == 0
    window = np.where(pad, pad_id, el["tokens"]).astype(np.int32)
    pos = np.where(pad, 0, el["pos"]).astype(np.int32)
    return _row(window, seg, pos)


def _window_index(lengths: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """(document index, start) of every unpacked window; ``lengths`` are document lengths with the specials."""
    counts = -(-(lengths - 1) // context)  # ceil((L - 1) / context): windows with at least one target
    doc = np.repeat(np.arange(lengths.size), counts)
    first = np.cumsum(counts) - counts
    start = (np.arange(doc.size) - first[doc]) * context
    return doc.astype(np.int64), start.astype(np.int64)


def _unpacked_row(ids: np.ndarray, start: int, context: int, specials=(BOS, EOS, PAD)) -> dict[str, np.ndarray]:
    """The window ``[start, start + context + 1)`` of ``[BOS, *ids, EOS]`` (no BOS if ``specials[0]`` is None),
    PAD-filled past its end."""
    bos, eos, pad = specials
    nb = 0 if bos is None else 1
    n_total = ids.size + nb + 1
    stop = min(start + context + 1, n_total)
    window = np.full(context + 1, pad, dtype=np.int32)
    # Slicing ids directly avoids materialising the wrapped document for every window of a long file.
    if nb and start == 0:
        window[0] = bos
    a, b = max(start, nb), min(stop, n_total - 1)
    if a < b:
        window[a - start : b - start] = ids[a - nb : b - nb]
    if stop == n_total:
        window[n_total - 1 - start] = eos
    seg = np.zeros(context + 1, dtype=np.int32)
    seg[: stop - start] = 1
    pos = np.where(seg > 0, start + np.arange(context + 1, dtype=np.int32), 0).astype(np.int32)
    return _row(window, seg, pos)


# ----------------------------------------------------------------------------------------------------------
# Datasets


ROW_SHUFFLE_WINDOW = 1024  # packed training rows are shuffled within windows of this many rows


def _packed_rows(ds: grain.MapDataset, context: int, specials) -> grain.IterDataset:
    packed = grain.experimental.ConcatThenSplitIterDataset(
        ds.map(lambda ids: _doc_features(ids, specials)).to_iter_dataset(_READ),
        length_struct={"tokens": context + 1, "pos": context + 1},
    )
    return packed.map(lambda el: _packed_row(el, specials[2]))


def _n_special(specials) -> int:
    return 1 if specials[0] is None else 2


def _unpacked_window_reader(docs: Sequence[Document], context: int, specials) -> tuple[int, Callable]:
    """(number of unpacked windows of ``docs``, a function from a window's index in stream order to its row)."""
    lengths = np.array([len(d) + _n_special(specials) for d in docs], dtype=np.int64)
    doc_idx, starts = _window_index(lengths, context)
    ids = [d.ids for d in docs]
    return doc_idx.size, lambda i: _unpacked_row(ids[doc_idx[i]], int(starts[i]), context, specials)


def _unpacked_rows(docs: Sequence[Document], context: int, *, seed: int | None, specials,
                   select=None) -> grain.IterDataset:
    n, read = _unpacked_window_reader(docs, context, specials)
    ds = grain.MapDataset.range(n)
    if seed is not None:
        ds = ds.shuffle(seed=seed).repeat()
    if select is not None:  # this process's rows: index arithmetic before any window is read
        ds = select(ds)
    return ds.map(read).to_iter_dataset(_READ)


def _rows(docs: Sequence[Document], context: int, *, packing: bool, seed: int | None,
          specials=(BOS, EOS, PAD), select=None) -> grain.IterDataset:
    """Rows of ``docs``: shuffled and infinite if ``seed`` is given, else in order and finite. ``select`` (unpacked
    only) maps the MapDataset of window indices to the ones to read (:func:`_process_rows`)."""
    if not packing:
        return _unpacked_rows(docs, context, seed=seed, specials=specials, select=select)
    ds = grain.MapDataset.source([d.ids for d in docs])
    if seed is None:
        return _packed_rows(ds, context, specials)
    # shuffle before repeat: grain reseeds the shuffle with seed + epoch for every pass.
    rows = _packed_rows(ds.shuffle(seed=seed).repeat(), context, specials)
    # Consecutive packed rows come from the same one or two documents; shuffling rows within windows of
    # ROW_SHUFFLE_WINDOW rows makes each batch draw from several documents (a long document still dominates a
    # window: for corpora of long documents packing=False shuffles windows over the whole corpus).
    return grain.experimental.WindowShuffleIterDataset(rows, window_size=ROW_SHUFFLE_WINDOW, seed=seed)


# ----------------------------------------------------------------------------------------------------------
# Iterator with a JSON-safe state


def _restore_tuples(state: Any) -> Any:
    # grain's ConcatThenSplit compares remainder slices with a tuple sentinel, so the lists a JSON round
    # trip makes of its tuples would read as "has a remainder" and shift the stream.
    if isinstance(state, dict):
        return {
            k: ({s: tuple(v) for s, v in sub.items()} if k == "remainder_slices" else _restore_tuples(sub))
            for k, sub in state.items()
        }
    if isinstance(state, list):
        return [_restore_tuples(x) for x in state]
    return state


class DataIterator(grain.DatasetIterator):
    """A grain iterator of training batches whose state survives ``json.dumps`` / ``json.loads``.

    ``get_state()`` -> ``{"pipeline": {...what the stream was built from...}, "grain": {...}}``;
    ``set_state`` refuses (ValueError) a state saved from a pipeline with other settings.
    """

    def __init__(self, parent: grain.DatasetIterator, pipeline: dict[str, Any], *, index: str = "fixed"):
        super().__init__(parent)
        self._pipeline = pipeline
        # How the stream's grain state moves, so that a state saved with another process layout can be read:
        # "rows" / "batches": a random-access stream whose state is {"next_index": n} counting this process's
        # rows (B/P per batch) or batches; "global": a sequential stream built the same on every process (packed
        # rows: each process reads the global stream), whose state does not depend on the layout; "fixed": a
        # state that only the same layout may read.
        self._index = index

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": dict(self._pipeline), "grain": json.loads(json.dumps(self._parent.get_state()))}

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {"pipeline", "grain"}:
            raise ValueError("state: must be a dict returned by DataIterator.get_state()")
        saved = {**_SINGLE_PROCESS, **state["pipeline"]}  # states saved before the layout was recorded
        diff = sorted(k for k in set(saved) | set(self._pipeline) if saved.get(k) != self._pipeline.get(k))
        grain_state = _restore_tuples(state["grain"])
        if diff and set(diff) <= set(_SINGLE_PROCESS) and self._index != "fixed":
            grain_state = self._relayout(grain_state, saved["process_count"])  # resumed on another process count
        elif diff:
            k = ([d for d in diff if d not in _SINGLE_PROCESS] or diff)[0]  # what a new layout cannot fix
            raise ValueError(
                f"state: saved for a pipeline with {k} = {saved.get(k)!r}, this one has "
                f"{k} = {self._pipeline.get(k)!r}; build the iterator with the saved settings"
            )
        self._parent.set_state(grain_state)

    def _relayout(self, grain_state: dict[str, Any], saved_count: int) -> dict[str, Any]:
        """A grain state saved by a process of a ``saved_count``-process job, for this process's layout: the
        same global batch comes next."""
        if self._index == "global":
            return grain_state
        index = grain_state.get("next_index") if isinstance(grain_state, dict) else None
        if set(grain_state) != {"next_index"} or not isinstance(index, int):
            raise ValueError(f"state: cannot move a grain state {grain_state!r} to another process layout")
        if self._index == "batches":
            return {"next_index": index}
        batch = self._pipeline["batch_size"]
        batches, rest = divmod(index, batch // saved_count)
        if rest:
            raise ValueError(f"state: next_index = {index} is not a whole number of batches of "
                             f"{batch // saved_count} rows")
        return {"next_index": batches * (batch // self._pipeline["process_count"])}


_SINGLE_PROCESS = {"process_index": 0, "process_count": 1}


def _task_pipeline_id(c: dict[str, Any], p: dict[str, Any], **kw: Any) -> dict[str, Any]:
    # JSON round trip so the saved pipeline compares equal to a rebuilt one (tuples, numpy ints).
    return json.loads(json.dumps({"source": c["source"], "task": dict(p), "val_fraction": c["val_fraction"], **kw},
                                 default=str))


def _task_train_iterator(c: dict[str, Any], *, batch_size: int, context: int, seed: int, process_index: int = 0,
                         process_count: int = 1) -> DataIterator:
    """The training stream of a synthetic task: its examples for ``seed``, in order (each is drawn at random);
    process ``process_index`` reads (generates) only its rows ``[p*B/P, (p+1)*B/P)`` of each global batch."""
    src = synthetic.TaskSource(c, context=context, stream="train", seed=seed)
    ds = _process_rows(grain.MapDataset.source(src), batch_size, process_index, process_count)
    ds = ds.batch(batch_size // process_count, drop_remainder=True).to_iter_dataset(_READ)
    return DataIterator(iter(ds), _task_pipeline_id(c, src.params, batch_size=batch_size, context=context, seed=seed,
                                                    process_index=process_index, process_count=process_count),
                        index="batches")


def _pipeline_id(c: dict[str, Any], **kw: Any) -> dict[str, Any]:
    fields = {"source": c["source"], "val_fraction": c["val_fraction"], "packing": c["packing"]}
    extra = {"text_dir": ("glob",), "jsonl": ("text_field",), "parquet": ("text_field",),
             "tokens": ("token_dtype", "eos_id")}.get(c["source"])
    for key in extra or ():
        fields[key] = c[key]
    return {**fields, **kw}


# ----------------------------------------------------------------------------------------------------------
# Processes: each reads its slice of the global batch


def _process_layout(batch_size: int, process_index: int | None, process_count: int | None,
                    field: str = "train.batch_size") -> tuple[int, int]:
    """(p, P) checked, defaults from ``jax.process_index()`` / ``jax.process_count()``; B must divide by P."""
    if process_index is None or process_count is None:
        import jax  # lazily: the data package itself does not need jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    count = _check_int("process_count", process_count, 1)
    index = _check_int("process_index", process_index, 0, count - 1)
    if batch_size % count:
        raise ValueError(f"{field} = {batch_size}: must be a multiple of the process count {count} "
                         "(each process reads an equal slice of the global batch)")
    return index, count


def _process_rows(ds: grain.MapDataset, batch_size: int, p: int, n_proc: int) -> grain.MapDataset:
    """The items of process ``p`` of a random-access row stream cut into global batches of ``batch_size``:
    local item ``i`` = row ``j = i % Bp`` of local batch ``b = i // Bp`` is global item ``b*B + p*Bp + j``
    (``Bp = B / P``), so only this process's rows are ever read."""
    if n_proc == 1:
        return ds
    n = batch_size // n_proc
    return grain.MapDataset.range(len(ds) // batch_size * n).map(
        lambda i: ds[(i // n) * batch_size + p * n + i % n])


def _local_batch(batch: dict[str, np.ndarray], p: int, n_proc: int) -> dict[str, np.ndarray]:
    """Rows ``[p*B/P, (p+1)*B/P)`` of a global batch."""
    if n_proc == 1:
        return batch
    n = len(batch["inputs"]) // n_proc
    return {k: v[p * n:(p + 1) * n] for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------
# Public entry points


def make_train_iterator(data_cfg: Any, *, batch_size: int, context: int, seed: int,
                        process_index: int | None = None, process_count: int | None = None) -> DataIterator:
    """The infinite, shuffled training stream as batches (see the module docstring for the format).

    Args:
      data_cfg: the data config (``configs/data/stdlib.py``); validated first.
      batch_size: rows per GLOBAL batch, B >= 1, a multiple of the process count P.
      context: tokens per row, T >= 1 (windows hold T + 1 tokens).
      seed: shuffle seed in [0, 2**32 - 1]; epoch e is shuffled with ``seed + e``.
      process_index, process_count: this process p and the count P (default: ``jax.process_index()`` /
        ``jax.process_count()``). Process p gets rows ``[p*B/P, (p+1)*B/P)`` of every global batch, so the
        processes' batches concatenated in process order are the one-process batches, row for row. Without
        packing (and for synthetic tasks) the stream is random access and each process reads only its rows;
        the packed stream is sequential (documents concatenated then split, then a window shuffle), so every
        process builds the global batch and keeps its slice.

    Returns:
      A :class:`DataIterator` (a ``grain.DatasetIterator``) of dicts of ``[B/P, T]`` arrays, with
      ``get_state`` / ``set_state`` (a state is refused by another process layout).
    """
    c = validate_data_config(data_cfg)
    batch_size = _check_int("batch_size", batch_size, 1)
    context = _check_int("context", context, 1)
    seed = _check_int("seed", seed, 0, 2**32 - 1)
    p, n_proc = _process_layout(batch_size, process_index, process_count)
    if c["source"] in TASKS:
        return _task_train_iterator(c, batch_size=batch_size, context=context, seed=seed, process_index=p,
                                    process_count=n_proc)
    corpus = load_corpus(data_cfg)
    docs = corpus.train
    if not c["packing"]:
        _check_fits(docs, context, "train", _n_special(corpus.specials))
    select = lambda ds: _process_rows(ds, batch_size, p, n_proc)  # noqa: E731
    ds = _rows(docs, context, packing=c["packing"], seed=seed, specials=corpus.specials, select=select)
    if c["packing"]:
        ds = ds.batch(batch_size, drop_remainder=True)
        if n_proc > 1:
            ds = ds.map(lambda batch: _local_batch(batch, p, n_proc))
    else:
        ds = ds.batch(batch_size // n_proc, drop_remainder=True)
    pipeline = _pipeline_id(c, batch_size=batch_size, context=context, seed=seed, process_index=p,
                            process_count=n_proc)
    return DataIterator(iter(ds), pipeline, index="global" if c["packing"] else "rows")


def _padding_rows(n: int, context: int, pad: int = PAD) -> dict[str, np.ndarray]:
    return {
        "inputs": np.full((n, context), pad, np.int32),
        "targets": np.full((n, context), pad, np.int32),
        "segment_ids": np.zeros((n, context), np.int32),
        "positions": np.zeros((n, context), np.int32),
        "loss_mask": np.zeros((n, context), np.float32),
    }


def eval_rows(data_cfg: Any, context: int) -> int:
    """Rows of the fixed evaluation set at ``context``: ceil(``data.eval_tokens`` / context)."""
    c = validate_data_config(data_cfg)
    return -(-c["eval_tokens"] // _check_int("context", context, 1))


def _batch_rows(picked: Sequence[dict[str, np.ndarray]], batch_size: int, context: int,
                pad: int = PAD) -> list[dict[str, np.ndarray]]:
    """Stack rows into ``[batch_size, context]`` batches in order; the last one is filled with padding rows."""
    batches = []
    for start in range(0, len(picked), batch_size):
        chunk = picked[start: start + batch_size]
        batch = {k: np.stack([np.asarray(r[k]) for r in chunk]) for k in BATCH_KEYS}
        if len(chunk) < batch_size:
            fill = _padding_rows(batch_size - len(chunk), context, pad)
            batch = {k: np.concatenate([batch[k], fill[k].astype(batch[k].dtype)]) for k in BATCH_KEYS}
        batches.append(batch)
    return batches


def make_eval_batches(
    data_cfg: Any, *, batch_size: int, context: int, num_batches: int | None = None,
    process_index: int | None = None, process_count: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """The fixed held-out evaluation set as ``[batch_size, context]`` batches, in stream order.

    The set is :func:`eval_rows` rows (ceil(``data.eval_tokens`` / context)) spread evenly over the whole
    unshuffled validation stream (for a synthetic task: the first rows of its held-out stream). The rows depend
    on the data source and the context only, never on ``batch_size``, so every run of a sweep at one context is
    evaluated on the same tokens; ``batch_size`` only groups them (the last batch is filled with padding rows,
    loss_mask 0). ``num_batches`` asks for ``num_batches * batch_size`` rows instead. If the stream has fewer
    rows than asked for, all of them are used. Spreading the rows makes the estimate represent every validation
    document, not the first few. Deterministic and the same on every call.

    With several processes (``process_index`` / ``process_count``, default from jax, as for
    :func:`make_train_iterator`) ``batch_size`` is the global batch and each process gets rows
    ``[p*B/P, (p+1)*B/P)`` of every batch: the global arrays built from them are the one-process batches, so the
    evaluation loss is the one-process loss. (Every process builds the small set and keeps its slice.)
    """
    c = validate_data_config(data_cfg)
    batch_size = _check_int("batch_size", batch_size, 1)
    context = _check_int("context", context, 1)
    p, n_proc = _process_layout(batch_size, process_index, process_count, "eval batch_size")
    if num_batches is None:
        want = eval_rows(c, context)
    else:
        want = _check_int("num_batches", num_batches, 1) * batch_size
    if c["source"] in TASKS:
        batches = _batch_rows(synthetic.task_eval_rows(c, context=context, num_rows=want), batch_size, context)
        return [_local_batch(b, p, n_proc) for b in batches]
    corpus = load_corpus(data_cfg)
    docs = corpus.validation
    if c["packing"]:  # packed rows exist only as a stream: count them, then read the ones kept
        rows = lambda: _rows(docs, context, packing=True, seed=None, specials=corpus.specials)  # noqa: E731
        keep = _spread(want, sum(1 for _ in rows()))
        picked = [row for i, row in enumerate(rows()) if i in keep]
    else:  # unpacked windows are indexed: read only the ones kept (not the whole validation stream, twice)
        _check_fits(docs, context, "validation", _n_special(corpus.specials))
        n_rows, read = _unpacked_window_reader(docs, context, corpus.specials)
        picked = [read(i) for i in sorted(_spread(want, n_rows))]
    return [_local_batch(b, p, n_proc) for b in _batch_rows(picked, batch_size, context, corpus.specials[2])]


def _spread(want: int, n_rows: int) -> set[int]:
    """The indices of ``want`` rows spread evenly over ``n_rows`` (all of them if there are no more)."""
    return set(range(n_rows)) if want >= n_rows else set(((np.arange(want) * n_rows) // want).tolist())
