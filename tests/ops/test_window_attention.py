"""scaling.ops.window_attention against scaling.ops.attention's windowed parallel form and a loop written here."""

import numpy as np
import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from scaling.mixers.based import window_keys
from scaling.ops.attention import attention
from scaling.ops.window_attention import sliding_window_attention
from tests.helpers import rel_err


def _qkv(rng, b, t, hq, hk, d):
    return [np.asarray(rng.standard_normal(s), np.float32) for s in ((b, t, hq, d), (b, t, hk, d), (b, t, hk, d))]


def _loop(q, k, v, window):
    """Each query's softmax over keys j in (i - window, i], written token by token."""
    b, t, hq, d = q.shape
    g = hq // k.shape[2]
    out = np.zeros_like(q)
    for i in range(t):
        lo = max(0, i - window + 1)
        for h in range(hq):
            s = np.einsum("bd,bjd->bj", q[:, i, h], k[:, lo:i + 1, h // g]) / np.sqrt(d)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[:, i, h] = np.einsum("bj,bjd->bd", p / p.sum(-1, keepdims=True), v[:, lo:i + 1, h // g])
    return out


# each example compiles the op's eager calls at new shapes: 3 fixed examples here, 25 drawn ones with -m slow
@settings(phases=[Phase.explicit], deadline=None, database=None)
@given(t=st.integers(1, 23), window=st.integers(1, 9), gqa=st.booleans(), seed=st.integers(0, 2**16))
@example(t=23, window=5, gqa=True, seed=1)  # the window slides over many blocks, grouped queries
@example(t=4, window=9, gqa=False, seed=2)  # window longer than the sequence
@example(t=9, window=1, gqa=True, seed=3)  # each query sees only itself
def test_equals_the_windowed_attention_op_and_a_loop(t, window, gqa, seed):
    _check_window(t, window, gqa, seed)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(t=st.integers(1, 23), window=st.integers(1, 9), gqa=st.booleans(), seed=st.integers(0, 2**16))
def test_equals_the_windowed_attention_op_and_a_loop_many_shapes(t, window, gqa, seed):
    _check_window(t, window, gqa, seed)


def _check_window(t, window, gqa, seed):
    q, k, v = _qkv(np.random.default_rng(seed), 2, t, 4, 2 if gqa else 4, 4)
    got = sliding_window_attention(q, k, v, window)
    assert rel_err(got, attention(q, k, v, window=window, form="parallel")) < 1e-5
    assert rel_err(got, _loop(q, k, v, window)) < 1e-5


def test_packed_documents_are_kept_apart():
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, 13, 2, 2, 4)
    seg = np.array([[1] * 5 + [2] * 8], np.int32)
    got = sliding_window_attention(q, k, v, 4, segment_ids=seg)
    for sl in (slice(0, 5), slice(5, 13)):
        alone = sliding_window_attention(q[:, sl], k[:, sl], v[:, sl], 4)
        assert rel_err(got[:, sl], alone) < 1e-5


def test_keys_per_query_and_bad_window():
    assert window_keys(40, 64) == 40 and window_keys(300, 64) == 128
    with pytest.raises(ValueError, match="window = 0"):
        sliding_window_attention(*_qkv(np.random.default_rng(0), 1, 3, 1, 1, 2), 0)
