import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scaling.ops.attention import attention, attention_reference, init_kv_cache
from tests.helpers import rel_err


def _qkv(seed, b, t, hq, hk, d):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (b, t, hq, d)), jax.random.normal(ks[1], (b, t, hk, d)),
            jax.random.normal(ks[2], (b, t, hk, d)))


# Each drawn example compiles the ops' eager calls at new shapes: a few fixed draws here, many with -m slow.
_PARALLEL = dict(t=st.integers(1, 12), group=st.sampled_from([(2, 2), (4, 2), (4, 1)]),
                 window=st.sampled_from([None, 1, 5]), seed=st.integers(0, 2**16))


@settings(max_examples=3, deadline=None, derandomize=True, database=None)
@given(**_PARALLEL)
def test_parallel_matches_reference(t, group, window, seed):
    _check_parallel(t, group, window, seed)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(**_PARALLEL)
def test_parallel_matches_reference_many_shapes(t, group, window, seed):
    _check_parallel(t, group, window, seed)


def _check_parallel(t, group, window, seed):
    q, k, v = _qkv(seed, 2, t, group[0], group[1], 8)
    got = attention(q, k, v, window=window)
    want = jax.jit(lambda *a: attention_reference(*a, window=window))(q, k, v)  # its loop compiled once, not per op
    assert rel_err(got, want) < 1e-5


def test_noncausal_matches_reference():
    q, k, v = _qkv(0, 1, 9, 2, 1, 4)
    assert rel_err(attention(q, k, v, causal=False), attention_reference(q, k, v, causal=False)) < 1e-5


@pytest.mark.parametrize("window", [None, 3])
def test_gradients_match_reference(window):
    q, k, v = _qkv(1, 1, 10, 4, 2, 8)
    f = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a, window=window)))
    got = jax.grad(f(attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.jit(jax.grad(f(attention_reference), argnums=(0, 1, 2)))(q, k, v)  # eager: 6.1 s, jitted: 0.7 s
    for g, w in zip(got, want, strict=True):
        assert rel_err(g, w) < 1e-5


@pytest.mark.parametrize("group,per_row", [((2, 2), False), ((4, 2), True), ((3, 1), True)])
def test_closed_form_vjp_equals_autodiff_of_the_same_forward(group, per_row):
    """The masked softmax's custom VJP (dS = w (dW - rowsum(dY Y))) against autodiff of the same forward, on a
    random mask with fully masked rows (an empty cache slot's), grouped heads and a value dim unlike the key's."""
    from scaling.ops.attention import _attend, _masked_softmax_attend

    b, t, d, e = 2, 7, 4, 6
    ks = jax.random.split(jax.random.key(3), 5)
    q = jax.random.normal(ks[0], (b, t, group[0], d))
    k = jax.random.normal(ks[1], (b, t, group[1], d))
    v = jax.random.normal(ks[2], (b, t, group[1], e))
    allowed = jax.random.bernoulli(ks[3], 0.6, (b, t, t) if per_row else (t, t))
    allowed = allowed.at[..., 2, :].set(False)  # a row that sees nothing
    cot = jax.random.normal(ks[4], (b, t, group[0], e))
    fast = jax.vjp(lambda *a: _masked_softmax_attend(*a, allowed, 0.5), q, k, v)
    slow = jax.vjp(lambda *a: _attend(*a, allowed, 0.5)[0], q, k, v)
    assert rel_err(fast[0], slow[0]) == 0.0
    for g, w in zip(fast[1](cot), slow[1](cot), strict=True):
        assert rel_err(g, w) < 1e-5


@pytest.mark.parametrize("window", [None, 4])
def test_recurrent_and_cached_chaining(window):
    """Parallel prefill into a cache, then recurrent steps, equals one parallel call."""
    b, t, split = 2, 13, 8
    q, k, v = _qkv(2, b, t, 4, 2, 8)
    whole = attention(q, k, v, window=window)
    cache = init_kv_cache(b, 16, 2, 8)
    y1, cache = attention(q[:, :split], k[:, :split], v[:, :split], window=window, initial_state=cache,
                          return_state=True)
    y2, cache = attention(q[:, split:], k[:, split:], v[:, split:], window=window, form="recurrent",
                          initial_state=cache, return_state=True)
    assert int(cache.pos) == t
    assert rel_err(jnp.concatenate([y1, y2], 1), whole) < 1e-5
    y_rec = attention(q, k, v, window=window, form="recurrent", initial_state=init_kv_cache(b, t, 2, 8))
    assert rel_err(y_rec, whole) < 1e-5


@pytest.mark.parametrize("splits", [(3, 4, 1, 9), (1,) * 17, (17,), (8, 9)])
def test_windowed_ring_cache_is_bounded_and_exact(splits):
    """A windowed cache holds only `window` slots, yet any prefill/step split equals one call."""
    window, b = 4, 1
    q, k, v = _qkv(5, b, sum(splits), 2, 1, 8)
    whole = attention(q, k, v, window=window)
    cache = init_kv_cache(b, 1000, 1, 8, window=window)
    assert cache.k.shape[1] == window
    outs, start = [], 0
    for n in splits:
        form = "recurrent" if n == 1 else "parallel"
        sl = slice(start, start + n)
        y, cache = attention(q[:, sl], k[:, sl], v[:, sl], window=window, form=form, initial_state=cache,
                             return_state=True)
        outs.append(y)
        start += n
    assert rel_err(jnp.concatenate(outs, 1), whole) < 1e-5


def test_bf16_inputs_close_to_fp32():
    q, k, v = _qkv(3, 1, 16, 2, 2, 16)
    y16 = attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    assert y16.dtype == jnp.bfloat16
    assert rel_err(y16.astype(jnp.float32), attention(q, k, v)) < 2e-2


@pytest.mark.parametrize("kwargs, match", [
    ({"form": "chunked"}, "form"),
    ({"window": 0}, "window"),
    ({"backend": "pallas"}, "backend"),
    ({"form": "recurrent"}, "initial_state"),
    ({"return_state": True}, "initial_state"),
])
def test_errors(kwargs, match):
    q, k, v = _qkv(0, 1, 4, 2, 2, 4)
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, **kwargs)


def test_gqa_heads_must_divide():
    q, k, v = _qkv(0, 1, 4, 3, 2, 4)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k, v)


def test_fully_masked_rows_are_finite():
    q, k, v = _qkv(0, 1, 6, 1, 1, 4)
    assert np.isfinite(np.asarray(attention(q, k, v, window=1))).all()


# ---------------------------------------------------------------------------------------------------------
# Blockwise (flash-style) form: value and gradient against the reference, memory, dispatch
# ---------------------------------------------------------------------------------------------------------


def _segment_reference(q, k, v, segment_ids, window=None):
    """The reference applied to each document (run of equal ids, padding included) of each row alone."""
    ids = np.asarray(segment_ids)
    rows = []
    for r in range(ids.shape[0]):
        starts = [0] + [i for i in range(1, ids.shape[1]) if ids[r, i] != ids[r, i - 1]] + [ids.shape[1]]
        rows.append(jnp.concatenate([attention_reference(q[r:r + 1, a:b], k[r:r + 1, a:b], v[r:r + 1, a:b],
                                                         window=window)
                                     for a, b in zip(starts[:-1], starts[1:], strict=True)], axis=1))
    return jnp.concatenate(rows, axis=0)


def _packed_ids(seed, b, t):
    """Sorted document ids per row with length-1 documents and trailing padding (id 0)."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.integers(1, 6, (b, t)), axis=1)
    ids[:, t // 2] = 9  # a length-1 document inside the row
    ids[:, -max(1, t // 5):] = 0  # padding at the end
    return jnp.asarray(ids, jnp.int32)


def _check_blockwise(q, k, v, window=None, segment_ids=None, block_q=8, block_k=8, causal=True):
    def ref(q, k, v):
        if segment_ids is not None:
            return _segment_reference(q, k, v, segment_ids, window)
        return attention_reference(q, k, v, window=window, causal=causal)

    def fast(q, k, v):
        return attention(q, k, v, window=window, causal=causal, segment_ids=segment_ids, form="blockwise",
                         block_q=block_q, block_k=block_k)

    loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a)))
    y, got = jax.jit(lambda *a: (fast(*a), jax.grad(loss(fast), argnums=(0, 1, 2))(*a)))(q, k, v)
    y_ref, want = jax.jit(lambda *a: (ref(*a), jax.grad(loss(ref), argnums=(0, 1, 2))(*a)))(q, k, v)
    assert rel_err(y, y_ref) < 1e-5
    for g, w in zip(got, want, strict=True):
        assert np.isfinite(np.asarray(g)).all()
        # relative to the gradient's norm, or absolute where it is ~0 (dq of a one-token document is exactly 0)
        assert np.linalg.norm(np.asarray(g) - np.asarray(w)) <= 1e-5 * max(np.linalg.norm(np.asarray(w)), 1.0)


_BLOCKWISE = dict(t=st.integers(1, 24), group=st.sampled_from([(2, 2), (4, 2), (4, 1)]),
                  window=st.sampled_from([None, 1, 3, 8, 25]), block_q=st.sampled_from([2, 4, 7, 32]),
                  block_k=st.sampled_from([3, 8, 32]), packed=st.booleans(), seed=st.integers(0, 2**16))


@settings(max_examples=3, deadline=None, derandomize=True, database=None)  # the fixed cases: test_blockwise_cases
@given(**_BLOCKWISE)
def test_blockwise_matches_reference_value_and_gradient(t, group, window, block_q, block_k, packed, seed):
    _check_drawn_blockwise(t, group, window, block_q, block_k, packed, seed)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(**_BLOCKWISE)
def test_blockwise_matches_reference_many_shapes(t, group, window, block_q, block_k, packed, seed):
    _check_drawn_blockwise(t, group, window, block_q, block_k, packed, seed)


def _check_drawn_blockwise(t, group, window, block_q, block_k, packed, seed):
    q, k, v = _qkv(seed, 2, t, group[0], group[1], 8)
    _check_blockwise(q, k, v, window, _packed_ids(seed, 2, t) if packed else None, block_q, block_k)


@pytest.mark.parametrize("t, window, block_q, block_k", [
    (37, None, 8, 8),     # T not a multiple of the block, many blocks
    (37, None, 64, 64),   # one block (the block clipped to T)
    (40, 3, 16, 16),      # window smaller than the block
    (40, 5, 4, 4),        # window larger than the block: the loop starts at the window's block
    (33, 9, 8, 16),       # unequal query and key blocks
])
def test_blockwise_cases(t, window, block_q, block_k):
    q, k, v = _qkv(t, 1, t, 4, 2, 8)
    _check_blockwise(q, k, v, window, None, block_q, block_k)


@pytest.mark.parametrize("window", [None, 4])
def test_blockwise_packed_documents(window):
    """Length-1 documents, a document spanning blocks, padding: each document attends only to itself."""
    ids = jnp.asarray([[1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 4, 4, 5, 0, 0, 0],
                       [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 0]], jnp.int32)
    q, k, v = _qkv(4, 2, ids.shape[1], 4, 2, 8)
    _check_blockwise(q, k, v, window, ids, 4, 4)
    _check_blockwise(q, k, v, window, ids, 16, 3)


def test_blockwise_noncausal_and_bf16():
    q, k, v = _qkv(6, 1, 19, 2, 1, 8)
    _check_blockwise(q, k, v, block_q=4, block_k=8, causal=False)
    q, k, v = _qkv(3, 1, 40, 2, 2, 16)
    y16 = attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), form="blockwise", block_q=16, block_k=16)
    assert y16.dtype == jnp.bfloat16
    assert rel_err(y16.astype(jnp.float32), attention(q, k, v, form="parallel")) < 2e-2


def _fwd_bwd_temp_bytes(form, t, heads, block):
    q, k, v = (jax.ShapeDtypeStruct((1, t, heads, 64), jnp.float32) for _ in range(3))
    loss = lambda q, k, v: jnp.sum(attention(q, k, v, form=form, block_q=block, block_k=block))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_forward_backward_memory_is_far_below_the_parallel_form():
    """Compiled forward+backward at T = 2048 (block 256): the blockwise form holds no [T, T] array."""
    t, heads = 2048, 4
    scores = 4 * heads * t * t  # one fp32 [heads, T, T] score array: 64 MiB
    blockwise = _fwd_bwd_temp_bytes("blockwise", t, heads, 256)
    parallel = _fwd_bwd_temp_bytes("parallel", t, heads, 256)
    assert parallel >= scores
    assert blockwise < parallel / 4 and blockwise < scores / 4


def test_auto_form_and_backend_choice():
    from scaling.mixers.chunks import attention_block
    from scaling.ops.attention import _resolve

    short = _qkv(0, 1, 8, 2, 2, 8)
    long = tuple(jax.ShapeDtypeStruct((1, 1024, 2, 8), jnp.float32) for _ in range(3))
    cache = init_kv_cache(1, 16, 2, 8)
    assert _resolve(*short, "auto", "auto", None, None) == ("parallel", False)
    assert _resolve(*long, "auto", "auto", None, None) == ("blockwise", False)
    assert _resolve(*long, "auto", "auto", cache, None) == ("parallel", False)
    assert _resolve(*long, "parallel", "xla", None, None) == ("parallel", False)
    # the measured rule: on CPU blockwise from 64 tokens, 32-token blocks for small heads, up to 128 for head dim 64
    assert [attention_block(t, 16, "cpu") for t in (32, 64, 128, 4096)] == [None, 32, 32, 32]
    assert [attention_block(t, 64, "cpu") for t in (128, 256, 1024, 4096)] == [32, 32, 128, 128]
    assert attention_block(512, 64, "gpu") is None and attention_block(1024, 64, "tpu") == 512
    mid = tuple(jax.ShapeDtypeStruct((1, 128, 2, 8), jnp.float32) for _ in range(3))
    expected = "blockwise" if jax.default_backend() == "cpu" else "parallel"
    assert _resolve(*mid, "auto", "xla", None, None) == (expected, False)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the CPU/TPU refusal of cuDNN")
def test_cudnn_backend_refused_off_gpu_and_blockwise_needs_no_cache():
    q, k, v = _qkv(0, 1, 8, 2, 2, 8)
    with pytest.raises(ValueError, match="needs a GPU"):
        attention(q, k, v, backend="cudnn")
    with pytest.raises(ValueError, match="KV cache"):
        attention(q, k, v, form="blockwise", initial_state=init_kv_cache(1, 16, 2, 8))
    with pytest.raises(ValueError, match="block_q"):
        attention(q, k, v, form="blockwise", block_q=0)
