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


@settings(max_examples=8, deadline=None)
@given(t=st.integers(1, 12), group=st.sampled_from([(2, 2), (4, 2), (4, 1)]), window=st.sampled_from([None, 1, 5]),
       seed=st.integers(0, 2**16))
def test_parallel_matches_reference(t, group, window, seed):
    q, k, v = _qkv(seed, 2, t, group[0], group[1], 8)
    got = attention(q, k, v, window=window)
    want = attention_reference(q, k, v, window=window)
    assert rel_err(got, want) < 1e-5


def test_noncausal_matches_reference():
    q, k, v = _qkv(0, 1, 9, 2, 1, 4)
    assert rel_err(attention(q, k, v, causal=False), attention_reference(q, k, v, causal=False)) < 1e-5


@pytest.mark.parametrize("window", [None, 3])
def test_gradients_match_reference(window):
    q, k, v = _qkv(1, 1, 10, 4, 2, 8)
    f = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a, window=window)))
    got = jax.grad(f(attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(f(attention_reference), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
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
