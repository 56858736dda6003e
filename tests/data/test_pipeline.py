import importlib.util
import json
import math
from pathlib import Path

import grain
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaling.data import corpus, pipeline, reference
from scaling.data.sources import Document
from scaling.data.tokenizer import BOS, EOS, PAD, decode
from scaling.data.tokens import byte_metadata, write_metadata

B, T = 4, 16
CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "data" / "stdlib.py"


def _val_fraction_for(keys, n_val):
    f = sorted(corpus.hash_fraction(k) for k in keys)
    return (f[n_val - 1] + f[n_val]) / 2


def _text_dir(tmp_path, lengths, n_val=3, seed=0):
    """A text_dir corpus of random-byte files (byte 0 included, so padding cannot hide as a byte)."""
    rng = np.random.default_rng(seed)
    keys = []
    for i, n in enumerate(lengths):
        key = f"sub{i % 2}/doc{i:02d}.txt"
        p = tmp_path / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.integers(0, 256, size=n, dtype=np.uint8).tobytes())
        keys.append(key)
    return {"source": "text_dir", "path": str(tmp_path), "val_fraction": _val_fraction_for(keys, n_val)}


LENGTHS = [3, 40, 7, 15, 1, 60, 22, 9, 14, 33, 5, 28]


@pytest.fixture
def cfg(tmp_path):
    return _text_dir(tmp_path, LENGTHS)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _rows(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in pipeline.BATCH_KEYS}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _check_batch(batch, b=B, t=T):
    assert set(batch) == set(pipeline.BATCH_KEYS)
    for k in pipeline.BATCH_KEYS:
        assert batch[k].shape == (b, t), k
        assert batch[k].dtype == (np.float32 if k == "loss_mask" else np.int32), k
    x, y, seg, pos, mask = (batch[k] for k in pipeline.BATCH_KEYS)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(mask, (y != PAD).astype(np.float32))  # documents never hold PAD
    np.testing.assert_array_equal(seg == 0, x == PAD)
    np.testing.assert_array_equal(pos == 0, (x == BOS) | (seg == 0))
    for r in range(b):
        real = int((seg[r] > 0).sum())
        assert np.all(seg[r, real:] == 0)  # padding only at the end of a row
        if real:
            assert seg[r, 0] == 1
        for i in range(1, real):
            new_doc = seg[r, i] != seg[r, i - 1]
            assert new_doc == (x[r, i - 1] == EOS)  # a document starts exactly after an EOS
            assert seg[r, i] == seg[r, i - 1] + new_doc
            assert pos[r, i] == (0 if new_doc else pos[r, i - 1] + 1)


# ----------------------------------------------------------------------------------------------------------
# packed training stream


def test_packed_train_matches_reference(cfg):
    """The training rows are the reference packing of the documents in grain's shuffled order, with the
    rows permuted within windows of ROW_SHUFFLE_WINDOW rows (so a batch mixes many documents)."""
    cfg = {**cfg, "packing": True}
    seed = 3
    docs = corpus.load_corpus(cfg).train
    shuffled = grain.MapDataset.range(len(docs)).shuffle(seed=seed).repeat()
    order = [shuffled[i] for i in range(4 * len(docs))]
    assert order[: len(docs)] != order[len(docs) : 2 * len(docs)]  # each epoch is reshuffled
    assert sorted(order[: len(docs)]) == list(range(len(docs)))
    window = pipeline.ROW_SHUFFLE_WINDOW
    epochs = 4
    while True:
        order = [shuffled[i] for i in range(epochs * len(docs))]
        ref = reference.packed_windows_reference([docs[j].ids for j in order], T)
        if ref["inputs"].shape[0] > window:
            break
        epochs *= 2
    n_batches = 8
    batches = _take(pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=seed), n_batches)
    for batch in batches:
        _check_batch(batch)
    got = _rows(batches)
    key = lambda rows, i: tuple(rows["inputs"][i]) + tuple(rows["targets"][i]) + tuple(rows["positions"][i])
    ref_index = {key(ref, i): i for i in range(window)}
    idx = [ref_index[key(got, i)] for i in range(n_batches * B)]  # KeyError: a row not in the first window
    assert len(set(idx)) == len(idx)  # distinct rows
    assert idx != sorted(idx)  # shuffled, not consecutive
    for i, j in enumerate(idx):
        for k in pipeline.BATCH_KEYS:
            np.testing.assert_array_equal(got[k][i], ref[k][j], err_msg=k)
    assert np.all(got["loss_mask"] == 1.0)  # an infinite stream is never padded


def test_train_determinism_and_seeds(cfg):
    a = _take(pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=0), 5)
    b = _take(pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=0), 5)
    c = _take(pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=1), 5)
    _assert_same(_rows(a), _rows(b))
    assert not np.array_equal(_rows(a)["inputs"], _rows(c)["inputs"])


@pytest.mark.slow
@pytest.mark.parametrize("packing", [True, False])
def test_resume_from_state(cfg, packing):
    cfg = {**cfg, "packing": packing}
    reference = _take(pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=7), 7)
    for save_after in (0, 3, 6):
        it = pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=7)
        _take(it, save_after)
        state = json.loads(json.dumps(it.get_state()))  # what a checkpoint on disk holds
        fresh = pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=7)
        fresh.set_state(state)
        for got, want in zip(_take(fresh, 7 - save_after), reference[save_after:], strict=True):
            _assert_same(got, want)


def test_resume_at_document_boundary(tmp_path):
    # Every document fills exactly one window, so each saved state has no partial document: grain's own
    # state would not survive a JSON round trip here (it compares lists to a tuple sentinel).
    cfg = _text_dir(tmp_path, [T - 1] * 10, n_val=2)
    reference = _take(pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=0), 7)
    assert np.all(_rows(reference)["segment_ids"] == 1)
    it = pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=0)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    fresh = pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=0)
    fresh.set_state(state)
    _assert_same(_rows(_take(fresh, 4)), _rows(reference[3:]))


def test_state_from_other_pipeline_is_refused(cfg):
    state = pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=0).get_state()
    other = pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=1)
    with pytest.raises(ValueError, match="state: saved for a pipeline with seed = 0, this one has seed = 1"):
        other.set_state(state)
    with pytest.raises(ValueError, match="state: must be a dict returned by DataIterator.get_state"):
        other.set_state(state["grain"])


# ----------------------------------------------------------------------------------------------------------
# unpacked


def test_unpacked_train_is_a_shuffle_of_the_windows(cfg):
    cfg = {**cfg, "packing": False}
    docs = corpus.load_corpus(cfg).train
    ref = reference.unpacked_windows_reference([d.ids for d in docs], T)
    n = ref["inputs"].shape[0]
    assert n == sum(math.ceil((len(d) + 1) / T) for d in docs)
    batches = _take(pipeline.make_train_iterator(cfg, batch_size=B, context=T, seed=0), 2 * n // B + 1)
    for batch in batches:
        _check_batch(batch)
        assert set(np.unique(batch["segment_ids"])) <= {0, 1}  # windows never cross documents
    rows = _rows(batches)

    def as_set(r, lo, hi):
        return sorted(
            tuple(np.concatenate([r[k][i] for k in pipeline.BATCH_KEYS]).tolist()) for i in range(lo, hi)
        )

    want = as_set(ref, 0, n)
    assert as_set(rows, 0, n) == want
    assert as_set(rows, n, 2 * n) == want
    assert not np.array_equal(rows["inputs"][:n], rows["inputs"][n : 2 * n])
    assert not np.array_equal(rows["inputs"][:n], ref["inputs"])
    assert rows["loss_mask"].min() == 0.0  # some windows are padded


def test_unpacked_context_longer_than_every_document(cfg):
    cfg = {**cfg, "packing": False}
    longest = max(len(d) for d in corpus.load_corpus(cfg).train) + 2
    pipeline.make_train_iterator(cfg, batch_size=B, context=longest - 1, seed=0)  # one full window fits
    msg = rf"context = {longest}: longer than every document of the train split .* data.packing = False"
    with pytest.raises(ValueError, match=msg):
        pipeline.make_train_iterator(cfg, batch_size=B, context=longest, seed=0)
    with pytest.raises(ValueError, match="of the validation split"):
        pipeline.make_eval_batches(cfg, batch_size=B, context=100)
    pipeline.make_train_iterator({**cfg, "packing": True}, batch_size=B, context=longest, seed=0)


# ----------------------------------------------------------------------------------------------------------
# evaluation


@pytest.mark.parametrize("packing", [True, False])
def test_eval_batches_match_reference(cfg, packing):
    cfg = {**cfg, "packing": packing}
    docs = [d.ids for d in corpus.load_corpus(cfg).validation]
    ref = (reference.packed_windows_reference if packing else reference.unpacked_windows_reference)(docs, T)
    n_rows = ref["inputs"].shape[0]
    batches = pipeline.make_eval_batches(cfg, batch_size=B, context=T, num_batches=100)
    assert len(batches) == math.ceil(n_rows / B)
    for batch in batches:
        _check_batch(batch)
    rows = _rows(batches)
    _assert_same({k: v[:n_rows] for k, v in rows.items()}, ref)
    assert np.all(rows["segment_ids"][n_rows:] == 0) and np.all(rows["loss_mask"][n_rows:] == 0)
    assert np.all(rows["inputs"][n_rows:] == PAD)
    again = pipeline.make_eval_batches(cfg, batch_size=B, context=T, num_batches=100)
    _assert_same(_rows(again), rows)
    # fewer batches than the stream holds: rows spread evenly over the whole stream, in order
    first = pipeline.make_eval_batches(cfg, batch_size=B, context=T, num_batches=1)
    assert len(first) == 1
    assert n_rows > B
    idx = (np.arange(B) * n_rows) // B
    _assert_same(first[0], {k: v[idx] for k, v in ref.items()})


def test_eval_set_is_fixed_by_tokens_not_batch_size(tmp_path):
    # data.eval_tokens = 48 at context 8: ceil(48 / 8) = 6 rows, whatever the batch size groups them into
    cfg = {**_text_dir(tmp_path, [50] * 20, n_val=10), "eval_tokens": 48}
    assert pipeline.eval_rows(cfg, 8) == 6
    assert pipeline.eval_rows(cfg, 7) == 7  # ceil(48 / 7)
    by_2 = pipeline.make_eval_batches(cfg, batch_size=2, context=8)
    by_4 = pipeline.make_eval_batches(cfg, batch_size=4, context=8)
    assert len(by_2) == 3 and len(by_4) == 2
    real = lambda bs: {k: np.concatenate([b[k] for b in bs])[np.concatenate([b["loss_mask"].sum(1) > 0 for b in bs])]
                       for k in pipeline.BATCH_KEYS}
    _assert_same(real(by_2), real(by_4))  # the same rows, in the same order
    assert by_4[-1]["loss_mask"][2:].sum() == 0  # 6 rows in batches of 4: the last two rows are padding


# ----------------------------------------------------------------------------------------------------------
# reference agreement on random corpora


@settings(max_examples=10, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6),
    st.integers(1, 12),
    st.booleans(),
)
def test_rows_match_reference(raw_docs, context, packing):
    docs = [Document(str(i), np.frombuffer(d, np.uint8)) for i, d in enumerate(raw_docs)]
    got = list(pipeline._rows(docs, context, packing=packing, seed=None))
    got = {k: np.stack([r[k] for r in got]) for k in pipeline.BATCH_KEYS}
    ref_fn = reference.packed_windows_reference if packing else reference.unpacked_windows_reference
    _assert_same(got, ref_fn([d.ids for d in docs], context))


# ----------------------------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size = 0: must be an integer >= 1"),
        ({"batch_size": True}, "batch_size = True: must be an integer >= 1"),
        ({"context": 0}, "context = 0: must be an integer >= 1"),
        ({"context": 2.0}, "context = 2.0: must be an integer >= 1"),
        ({"seed": -1}, r"seed = -1: must be an integer in \[0, 4294967295\]"),
        ({"seed": 2**32}, "seed = 4294967296: must be an integer in"),
    ],
)
def test_bad_arguments(cfg, kwargs, match):
    args = {"batch_size": B, "context": T, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipeline.make_train_iterator(cfg, **args)


def test_bad_eval_arguments_and_config(cfg):
    with pytest.raises(ValueError, match="num_batches = 0: must be an integer >= 1"):
        pipeline.make_eval_batches(cfg, batch_size=B, context=T, num_batches=0)
    with pytest.raises(ValueError, match="data.source = 'foo': must be one of stdlib, text_dir, jsonl"):
        pipeline.make_train_iterator({"source": "foo"}, batch_size=B, context=T, seed=0)


# ----------------------------------------------------------------------------------------------------------
# other sources and the default


def test_jsonl_and_tokens_sources(tmp_path):
    texts = [f"record {i}: " + "xyz" * i for i in range(10)]
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    jcfg = {"source": "jsonl", "path": str(p),
            "val_fraction": _val_fraction_for([f"line:{i + 1}" for i in range(10)], 3)}
    # The same documents saved as a token file, each as BOS + bytes + EOS.
    stream = [tok for t in texts for tok in (BOS, *t.encode(), EOS)]
    np.save(tmp_path / "c.npy", np.array(stream, np.uint16))
    write_metadata(tmp_path / "c.npy", byte_metadata(np.array(stream, np.uint16)))
    tcfg = {"source": "tokens", "path": str(tmp_path / "c.npy"),
            "val_fraction": _val_fraction_for([f"doc:{i}" for i in range(10)], 3)}
    for c in (jcfg, tcfg):
        loaded = corpus.load_corpus(c)
        assert sorted(decode(d.ids) for d in loaded.train + loaded.validation) == sorted(texts)
        for batch in _take(pipeline.make_train_iterator(c, batch_size=B, context=T, seed=0), 3):
            _check_batch(batch)
        for batch in pipeline.make_eval_batches(c, batch_size=B, context=T):
            _check_batch(batch)


def test_stdlib_default_pipeline():
    spec = importlib.util.spec_from_file_location("_data_stdlib_preset", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config().data
    a = _take(pipeline.make_train_iterator(cfg, batch_size=2, context=64, seed=0), 3)
    b = _take(pipeline.make_train_iterator(cfg, batch_size=2, context=64, seed=0), 3)
    for batch in a:
        _check_batch(batch, 2, 64)
    _assert_same(_rows(a), _rows(b))
    evals = pipeline.make_eval_batches(cfg, batch_size=2, context=64)
    assert len(evals) == -(-pipeline.eval_rows(cfg, 64) // 2)
    for batch in evals:
        _check_batch(batch, 2, 64)
        assert batch["loss_mask"].sum() > 0
    stats = pipeline.corpus_stats(cfg)
    assert stats["validation"]["n_documents"] == len(corpus.load_corpus(cfg).validation)
    assert 3.0 < stats["unigram_entropy_bits_per_byte"] < 6.0  # source code: a skewed byte distribution
