"""Naive references of the packed and unpacked windows (clarity over speed): the tests hold the grain pipelines of
scaling/data/pipeline.py to them, row for row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scaling.data.pipeline import BATCH_KEYS, _row
from scaling.data.tokenizer import BOS, EOS, PAD

__all__ = ["packed_windows_reference", "unpacked_windows_reference"]


def packed_windows_reference(docs: Sequence[np.ndarray], context: int,
                             specials=(BOS, EOS, PAD)) -> dict[str, np.ndarray]:
    """Rows ``[N, context]`` of the packed stream of ``docs`` in the given order, the last row PAD-filled."""
    bos, eos, pad = specials
    tokens, seg_doc, pos = [], [], []
    for d, ids in enumerate(docs):
        wrapped = ([] if bos is None else [bos]) + [int(x) for x in ids] + [eos]
        tokens += wrapped
        seg_doc += [d] * len(wrapped)
        pos += list(range(len(wrapped)))
    rows = []
    for s in range(0, len(tokens), context + 1):
        w = tokens[s : s + context + 1]
        dw = seg_doc[s : s + context + 1]
        pw = pos[s : s + context + 1]
        # Segment ids count documents within the row, from 1.
        seg = [1 + sorted(set(dw)).index(x) for x in dw]
        n_pad = context + 1 - len(w)
        w, seg, pw = w + [pad] * n_pad, seg + [0] * n_pad, pw + [0] * n_pad
        rows.append(_row(np.array(w, np.int32), np.array(seg, np.int32), np.array(pw, np.int32)))
    return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


def unpacked_windows_reference(docs: Sequence[np.ndarray], context: int,
                               specials=(BOS, EOS, PAD)) -> dict[str, np.ndarray]:
    """Rows ``[N, context]`` of the unpacked windows of ``docs`` in order (see the module docstring)."""
    bos, eos, pad = specials
    rows = []
    for ids in docs:
        wrapped = ([] if bos is None else [bos]) + [int(x) for x in ids] + [eos]
        start = 0
        while start < len(wrapped) - 1:
            w = wrapped[start : start + context + 1]
            n_pad = context + 1 - len(w)
            seg = [1] * len(w) + [0] * n_pad
            pw = list(range(start, start + len(w))) + [0] * n_pad
            rows.append(_row(np.array(w + [pad] * n_pad, np.int32), np.array(seg, np.int32),
                             np.array(pw, np.int32)))
            start += context
    return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}
