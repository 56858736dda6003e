"""Packed rows through the model: with segment_ids (and positions), every mixer and a hybrid give each document
of a row the logits of that document run alone, and the training loss of a packed batch is the token-weighted
mean of the documents' losses (scaling.train._loss_terms, which training and evaluation share)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scaling import config
from scaling.data.pipeline import BATCH_KEYS
from scaling.data.reference import packed_windows_reference
from scaling.data.tokenizer import PAD
from scaling.models import build
from scaling.ops.segments import positions_in_document
from scaling.train import _loss_terms

T = 16  # tokens per packed row
ROWS = 2
MAX_DOCS = 5
REF_ROWS = 3 * (T // 2 + 1)  # room for one row per run of the loss test's batches (documents of >= 2 tokens)
ATOL = 1e-5  # fp32 logits: packed and alone differ by summation order only
# Compiling dominates these tests' time on CPU; XLA's lowest optimisation level cuts it several-fold.
FAST_COMPILE = ({"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
                if jax.default_backend() == "cpu" else None)

# Tiny models with chunks of 4 (documents straddle chunks). At init_std 0.05 the logits are O(1): the packed
# and alone logits differ by < 2e-6 (measured), a leak from one document into the next by > 1
# (test_a_leak_would_be_seen).
BASE = ["model.d_model=32", "model.n_layers=2", "model.init_std=0.05", "model.retention.chunk_size=4",
        "model.mamba.chunk_size=4", "model.mamba.head_dim=8", "model.mamba.d_state=8",
        "model.retention.n_heads=4", "model.retention.n_kv_heads=2", "model.gla.chunk_size=4",
        "model.gated_delta.chunk_size=4"]
VARIANTS = {
    "A": ["model.pattern='A'", "model.attention.n_heads=4", "model.attention.n_kv_heads=2"],
    "A_window": ["model.pattern='A'", "model.attention.window=3", "model.n_layers=1"],
    "R": ["model.pattern='R'"],
    "R_conv": ["model.pattern='R'", "model.retention.conv=4", "model.n_layers=1"],
    "M": ["model.pattern='M'", "model.mamba.n_groups=2"],
    "hybrid_MRA": ["model.pattern='MRA'", "model.n_layers=3"],
    "G": ["model.pattern='G'", "model.gla.conv=3"],
    "D": ["model.pattern='D'", "model.n_layers=1"],
    "B": ["model.pattern='B'", "model.n_layers=1", "model.based.feature_dim=4", "model.based.window=3",
          "model.based.conv=4", "model.based.chunk_size=4"],
}


@pytest.fixture(autouse=True, scope="module")
def _full_precision_matmuls():
    with jax.default_matmul_precision("float32"):
        yield


@functools.cache
def model_and_forward(name: str, kernel: str = "xla"):
    cfg = config.load(None, BASE + VARIANTS[name] + [f"model.kernel='{kernel}'"])
    model = build(cfg.model, seed=1)
    graphdef, params = nnx.split(model)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def logits(params, tok, seg, pos):
        return nnx.merge(graphdef, params)(tok, segment_ids=seg, positions=pos)

    return cfg, params, logits


@st.composite
def layouts(draw):
    """Document lengths of each packed row: 1..9 tokens, at most MAX_DOCS, the rest of the row padding (id 0)."""
    seg = np.zeros((ROWS, T), np.int32)
    for b in range(ROWS):
        total, doc = 0, 0
        for n in draw(st.lists(st.integers(1, 9), min_size=1, max_size=MAX_DOCS)):
            n = min(n, T - total)
            if n:
                doc += 1
                seg[b, total: total + n] = doc
                total += n
    return seg


def runs(seg) -> list[tuple[int, int, int]]:
    """(row, start, length) of every run of equal ids (padding included)."""
    out = []
    for b, row in enumerate(np.asarray(seg)):
        starts = [0] + [t for t in range(1, len(row)) if row[t] != row[t - 1]]
        out += [(b, s, e - s) for s, e in zip(starts, starts[1:] + [len(row)], strict=True)]
    return out


def alone(arrays: dict, seg, fill: dict) -> dict:
    """Each run of ``seg`` at the start of its own row of REF_ROWS; the rest of the row is ``fill`` (the models
    are causal, so what follows a document changes none of its logits). Positions continue after the run."""
    out = {k: np.full((REF_ROWS, T), fill[k], np.asarray(v).dtype) for k, v in arrays.items()}
    for r, (b, s, n) in enumerate(runs(seg)):
        for k, v in arrays.items():
            out[k][r, :n] = np.asarray(v)[b, s: s + n]
        if "positions" in out:
            out["positions"][r, n:] = out["positions"][r, n - 1] + 1 + np.arange(T - n)
    return out


def packed_and_alone_logits(name, seg, seed, kernel="xla"):
    cfg, model, forward = model_and_forward(name, kernel)
    tokens = np.random.default_rng(seed).integers(0, cfg.model.vocab_size, (ROWS, T)).astype(np.int32)
    positions = np.asarray(positions_in_document(seg))
    packed = np.asarray(forward(model, tokens, seg, positions))
    ref = alone({"inputs": tokens, "positions": positions}, seg, {"inputs": PAD, "positions": 0})
    ref_logits = np.asarray(forward(model, ref["inputs"], None, ref["positions"]))
    got = np.concatenate([packed[b, s: s + n] for b, s, n in runs(seg)])
    want = np.concatenate([ref_logits[r, :n] for r, (_, _, n) in enumerate(runs(seg))])
    return got, want, (model, forward, tokens)


# Pinned: length-1 documents at the start, middle and end, documents straddling chunks of 4, a row that is one
# document, rows ending in padding.
PINNED = [np.array([[1, 2, 2, 2, 2, 3, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5], [1] * 5 + [2] * 6 + [0] * 5], np.int32),
          np.array([[1] * 16, [1, 1, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 0, 0]], np.int32)]


@pytest.mark.parametrize("name", list(VARIANTS))
@settings(max_examples=4, deadline=None, derandomize=True, database=None)
@given(seg=layouts(), seed=st.integers(0, 2**16))
@example(seg=PINNED[0], seed=0)
@example(seg=PINNED[1], seed=1)
def test_packed_logits_equal_each_document_alone(name, seg, seed):
    got, want, _ = packed_and_alone_logits(name, seg, seed)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_leak_would_be_seen(name):
    """Without segment_ids the same packed rows give other logits than the documents alone (so the test above
    can fail), and with all tokens in one document the segment path equals the plain one."""
    got, want, (model, forward, tokens) = packed_and_alone_logits(name, PINNED[0], 0)
    positions = np.asarray(positions_in_document(PINNED[0]))
    leaky = np.asarray(forward(model, tokens, None, positions))
    leaky = np.concatenate([leaky[b, s: s + n] for b, s, n in runs(PINNED[0])])
    assert np.abs(leaky - want).max() > 100 * ATOL
    one_doc = np.ones((ROWS, T), np.int32)
    plain = np.asarray(forward(model, tokens, None, None))
    np.testing.assert_allclose(np.asarray(forward(model, tokens, one_doc, None)), plain, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["R", "M"])
def test_pallas_kernel_config_falls_back_to_xla_with_segments(name):
    """model.kernel = "pallas": the kernels take no segments, so packed rows run the XLA chunked forms (the
    same logits as model.kernel = "xla", which test_packed_logits_equal_each_document_alone checks)."""
    seg = PINNED[0]
    tokens = np.random.default_rng(3).integers(0, 256, (ROWS, T)).astype(np.int32)
    logits = {}
    for kernel in ("pallas", "xla"):
        _, model, forward = model_and_forward(name, kernel)
        logits[kernel] = np.asarray(forward(model, tokens, seg, None))
    np.testing.assert_array_equal(logits["pallas"], logits["xla"])


def _packed_batch(doc_lengths, seed, rows=3):
    """The first ``rows`` rows of the packed stream (scaling.data.pipeline's reference packer) of documents of
    the given lengths, PAD rows (segment 0, loss_mask 0) after the stream's end."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 256, n).astype(np.int32) for n in doc_lengths]
    batch = packed_windows_reference(docs, T)
    batch = {k: v[:rows] for k, v in batch.items()}
    missing = rows - batch["inputs"].shape[0]
    fill = {"inputs": PAD, "targets": PAD, "segment_ids": 0, "positions": 0, "loss_mask": 0}
    return {k: np.concatenate([v, np.full((missing, T), fill[k], v.dtype)]) for k, v in batch.items()}


@functools.cache
def _loss_fn(name):
    cfg, _, _ = model_and_forward(name)
    graphdef, params = nnx.split(build(cfg.model, seed=1), nnx.Param)
    terms = jax.jit(functools.partial(_loss_terms, graphdef, per_row=True), compiler_options=FAST_COMPILE)

    def loss(params, batch):  # the train step's loss
        total, count, _, _ = _loss_terms(graphdef, params, batch)
        return total / count

    return params, terms, jax.jit(jax.grad(loss), compiler_options=FAST_COMPILE)


@pytest.mark.parametrize("name", list(VARIANTS))
@settings(max_examples=3, deadline=None, derandomize=True, database=None)
@given(doc_lengths=st.lists(st.integers(0, 12), min_size=1, max_size=6), seed=st.integers(0, 2**16))
@example(doc_lengths=[0, 14, 3, 0, 9, 1], seed=0)  # a 2-token document; documents split across rows
def test_packed_loss_is_the_token_weighted_mean_of_document_losses(name, doc_lengths, seed):
    params, terms, grad = _loss_fn(name)
    batch = _packed_batch(doc_lengths, seed)
    total, count, _, _ = (np.asarray(x, np.float64) for x in terms(params, batch))
    # Each document (a run of the packed rows, its positions included: a document continued from the row
    # before keeps them) alone, without segment_ids.
    fill = {"inputs": PAD, "targets": PAD, "positions": 0, "loss_mask": 0}
    ref = alone({k: batch[k] for k in fill}, batch["segment_ids"], fill)
    d_total, d_count, _, _ = (np.asarray(x, np.float64) for x in terms(params, ref))
    per_doc = [(t / c, c) for t, c in zip(d_total, d_count, strict=True) if c]
    weighted = sum(loss * c for loss, c in per_doc) / sum(c for _, c in per_doc)
    assert count.sum() == d_count.sum() > 0
    np.testing.assert_allclose(total.sum() / count.sum(), weighted, rtol=1e-6)
    assert set(batch) == set(BATCH_KEYS)
    if name == "hybrid_MRA":  # gradients through every mixer's boundary masks stay finite
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad(params, batch)))
