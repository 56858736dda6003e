"""scaling.ops.based: the feature map is exact; every form against the T x T reference and an independent
float64 recurrence over the full (uncompressed) moments (values, gradients, state), state chaining, packed
documents equal to each document alone, and argument errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scaling.ops.based import (
    BasedState,
    based,
    based_feature_dim,
    based_features,
    based_reference,
    based_state_shape,
    based_state_size,
)
from tests.ops import chunked_checks as checks
from tests.ops.chunked_checks import FORMS, assert_close

TIME_ARGS, STATE_ARGS = ("q", "k", "v"), ("S0", "z0")
ARGS = (*TIME_ARGS, *STATE_ARGS)  # every output (o, S, z) and every gradient is checked at chunked_checks.RTOL


@pytest.fixture(autouse=True, scope="module")
def _full_precision_matmuls():
    with jax.default_matmul_precision("float32"):
        yield


def make_inputs(b, t, h, dk, dv, seed, prefix=6, spread=1.0):
    """Random fp32 inputs; the initial state is that of a random prefix of ``prefix`` tokens (a real state:
    its normaliser is positive). Returns the inputs and the prefix (q, k, v)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    pre = [(spread * rng.normal(size=(b, prefix, h, d))).astype(f32) for d in (dk, dk, dv)]
    _, state = based_reference(*pre, return_state=True)
    inputs = dict(q=spread * rng.normal(size=(b, t, h, dk)), k=spread * rng.normal(size=(b, t, h, dk)),
                  v=rng.normal(size=(b, t, h, dv)), S0=state.S, z0=state.z)
    return {a: np.asarray(x, f32) for a, x in inputs.items()}, pre


def numpy_recurrence(q, k, v, eps=1e-6):
    """Independent float64 loop over the full moments: sum v, sum k v^T, sum k k^T v^T (and their
    unweighted twins), read out as m0 + s.m1 + (s s^T : m2) / 2 with s = dk^-1/2 q. From a zero state."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, h, d = q.shape
    m0, m1, m2 = np.zeros((b, h, v.shape[-1])), np.zeros((b, h, d, v.shape[-1])), np.zeros((b, h, d, d, v.shape[-1]))
    n0, n1, n2 = np.zeros((b, h)), np.zeros((b, h, d)), np.zeros((b, h, d, d))
    o = np.zeros(v.shape)
    for i in range(t):
        kt, vt, qt = k[:, i], v[:, i], q[:, i] / np.sqrt(d)
        m0, n0 = m0 + vt, n0 + 1
        m1, n1 = m1 + kt[..., None] * vt[:, :, None], n1 + kt
        kk = kt[..., :, None] * kt[..., None, :]
        m2, n2 = m2 + kk[..., None] * vt[:, :, None, None], n2 + kk
        qq = qt[..., :, None] * qt[..., None, :]
        num = m0 + np.einsum("bhd,bhde->bhe", qt, m1) + 0.5 * np.einsum("bhcd,bhcde->bhe", qq, m2)
        den = n0 + np.einsum("bhd,bhd->bh", qt, n1) + 0.5 * np.einsum("bhcd,bhcd->bh", qq, n2)
        o[:, i] = num / (den[..., None] + eps)
    return o


def value_and_grads(fn, inputs, w_o, w_S, w_z):
    def loss(q, k, v, S0, z0):
        o, state = fn(q, k, v, initial_state=BasedState(S0, z0), return_state=True)
        return jnp.sum(o * w_o) + jnp.sum(state.S * w_S) + jnp.sum(state.z * w_z), (o, state)

    (_, (o, state)), grads = jax.value_and_grad(loss, argnums=tuple(range(5)), has_aux=True)(*(inputs[a] for a in ARGS))
    return o, state, dict(zip(ARGS, grads, strict=True))


def weights(inputs, seed):
    rng = np.random.default_rng(seed)
    b, t, h, dv = inputs["v"].shape
    return [rng.normal(size=s).astype(np.float32) for s in ((b, t, h, dv), inputs["S0"].shape, inputs["z0"].shape)]


@functools.cache
def jitted(form, chunk_size=64):
    def call(q, k, v, S0, z0):
        return based(q, k, v, form=form, chunk_size=chunk_size, initial_state=BasedState(S0, z0), return_state=True)

    return jax.jit(call)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_features_give_the_taylor_kernel_exactly(d):
    rng = np.random.default_rng(d)
    x, y = rng.normal(size=(2, 7, d)).astype(np.float32)
    s = np.sum(x.astype(np.float64) * y, axis=-1)
    fx, fy = based_features(x), based_features(y)
    assert fx.shape == (7, based_feature_dim(d)) == (7, 1 + d + d * (d + 1) // 2)
    assert_close(np.sum(np.asarray(fx, np.float64) * np.asarray(fy), axis=-1), 1 + s + s * s / 2, "f(x).f(y)")


@settings(max_examples=1, deadline=None, derandomize=True, database=None)  # more in the slow test below
@given(b=st.integers(1, 2), t=st.integers(1, 33), h=st.integers(1, 3), dk=st.integers(1, 5),
       dv=st.integers(1, 5), chunk=st.integers(1, 20), seed=st.integers(0, 2**16))
@example(b=2, t=29, h=2, dk=4, dv=3, chunk=8, seed=1)  # ragged: 29 = 3 * 8 + 5
def test_forms_match_reference_values_grads_and_state(b, t, h, dk, dv, chunk, seed):
    _check_forms(b, t, h, dk, dv, chunk, seed)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(b=st.integers(1, 2), t=st.integers(1, 33), h=st.integers(1, 3), dk=st.integers(1, 5),
       dv=st.integers(1, 5), chunk=st.integers(1, 20), seed=st.integers(0, 2**16))
@example(b=1, t=7, h=2, dk=3, dv=2, chunk=16, seed=2)  # chunk > time
def test_forms_match_reference_many_shapes(b, t, h, dk, dv, chunk, seed):
    _check_forms(b, t, h, dk, dv, chunk, seed)


def _check_forms(b, t, h, dk, dv, chunk, seed):
    inputs, pre = make_inputs(b, t, h, dk, dv, seed)
    w = weights(inputs, seed + 1)
    o_ref, st_ref, g_ref = jax.jit(functools.partial(value_and_grads, based_reference))(inputs, *w)
    # Independent check of the reference and of the state it carries: the float64 moments over prefix + call.
    o_np = numpy_recurrence(*(np.concatenate([p, inputs[a]], axis=1) for p, a in zip(pre, "qkv", strict=True)))
    assert_close(o_ref, o_np[:, pre[0].shape[1]:], "reference o (from the prefix's state) vs float64 moments")
    for form in FORMS:
        fn = functools.partial(based, form=form, chunk_size=chunk)
        o, state, grads = jax.jit(functools.partial(value_and_grads, fn))(inputs, *w)
        assert_close(o, o_ref, f"{form} o")
        assert_close(state.S, st_ref.S, f"{form} S")
        assert_close(state.z, st_ref.z, f"{form} z")
        for name in ARGS:
            assert_close(grads[name], g_ref[name], f"{form} d/d{name}")


def _time_slice(inputs, start, stop):
    return checks.time_slice(inputs, start, stop, STATE_ARGS)


@pytest.mark.parametrize("form", FORMS)
def test_prefix_then_suffix_equals_whole(form):
    inputs, _ = make_inputs(2, 27, 2, 4, 3, seed=3)
    o_whole, st_whole = jitted(form, 8)(**inputs)
    o_a, st_a = jitted(form, 8)(**_time_slice(inputs, 0, 11))  # 11: not a chunk boundary
    o_b, st_b = jitted(form, 8)(**dict(_time_slice(inputs, 11, 27), S0=st_a.S, z0=st_a.z))
    assert_close(jnp.concatenate([o_a, o_b], axis=1), o_whole, f"{form} o")
    assert_close(st_b.S, st_whole.S, f"{form} S")
    assert_close(st_b.z, st_whole.z, f"{form} z")


def test_chunked_prefill_then_recurrent_decode_equals_whole():
    inputs, _ = make_inputs(1, 20, 2, 3, 4, seed=4)
    o_whole, st_whole = jitted("chunked", 8)(**inputs)
    o, st = jitted("chunked", 8)(**_time_slice(inputs, 0, 13))
    outs = [o]
    for t in range(13, 20):
        o, st = jitted("recurrent")(**dict(_time_slice(inputs, t, t + 1), S0=st.S, z0=st.z))
        outs.append(o)
    assert_close(jnp.concatenate(outs, axis=1), o_whole, "decode o")
    assert_close(st.S, st_whole.S, "decode S")
    assert_close(st.z, st_whole.z, "decode z")


@pytest.mark.parametrize("form", FORMS)
def test_packed_documents_equal_each_document_alone(form):
    # the tokens after a document alone change nothing but z[0] (k = v = 0: f(0) = [1, 0, ...], subtracted below)
    t = 23
    inputs, _ = make_inputs(2, t, 2, 3, 2, seed=5)

    def final_state(S, S_a, row, d, n, where):
        assert_close(S.S[row], S_a.S[d], f"{where} final S")
        z_alone = np.asarray(S_a.z[d]).copy()
        z_alone[:, 0] -= t - n  # the padding tokens' f(0)[0] = 1 each (exact in fp32: small integers)
        assert_close(S.z[row], z_alone, f"{where} final z")

    checks.check_packed_documents(value_and_grads, functools.partial(based, form=form, chunk_size=4), inputs,
                                  weights(inputs, 6), TIME_ARGS, STATE_ARGS, form, final_state)


def test_large_scores_match_reference():
    # |s| up to ~30: phi up to ~500 per pair; no decay, so nothing can overflow, and the forms still agree.
    inputs, _ = make_inputs(1, 40, 2, 4, 3, seed=7, spread=3.0)
    o_ref, st_ref = based_reference(inputs["q"], inputs["k"], inputs["v"],
                                    initial_state=BasedState(inputs["S0"], inputs["z0"]), return_state=True)
    for form in FORMS:
        o, st = jitted(form, 16)(**inputs)
        assert_close(o, o_ref, f"{form} o")
        assert_close(st.S, st_ref.S, f"{form} S")


def test_long_context_chunked_matches_recurrent():
    inputs, _ = make_inputs(1, 4096, 2, 4, 4, seed=8)
    o_c, st_c = jitted("chunked", 64)(**inputs)
    o_r, st_r = jitted("recurrent")(**inputs)
    assert_close(o_c, o_r, "chunked o", rtol=1e-4)  # thousands of fp32 steps summed in different orders
    assert_close(st_c.z, st_r.z, "chunked z", rtol=1e-4)


def test_dtypes_scale_eps_and_empty_time():
    inputs, _ = make_inputs(1, 6, 2, 4, 3, seed=9)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    o, st = based(jnp.asarray(q, jnp.bfloat16), k, v, return_state=True)
    assert o.dtype == jnp.bfloat16 and st.S.dtype == st.z.dtype == jnp.float32
    # scale 0: phi = 1 everywhere, so o_i is the running mean of v (up to eps).
    o0 = based(q, k, v, scale=0.0, eps=0.0)
    assert_close(o0, np.cumsum(v, axis=1) / np.arange(1, 7)[None, :, None, None], "scale 0 gives the running mean")
    o_e, st_e = based(q[:, :0], k[:, :0], v[:, :0], initial_state=BasedState(inputs["S0"], inputs["z0"]),
                      return_state=True)
    assert o_e.shape == (1, 0, 2, 3)
    np.testing.assert_array_equal(np.asarray(st_e.z), inputs["z0"])
    assert based_state_shape(4, 3) == ((15, 3), (15,)) and based_state_size(16, 64) == 153 * 65


_GOOD, _ = make_inputs(2, 5, 2, 3, 4, seed=10)
_QKV = {a: _GOOD[a] for a in "qkv"}


@pytest.mark.parametrize("change, options, match", [
    ({}, dict(form="quadratic"), r"based: form = 'quadratic': must be one of 'parallel', 'chunked', 'recurrent'"),
    ({}, dict(chunk_size=0), r"based: chunk_size = 0: must be an int >= 1"),
    ({}, dict(eps=-1.0), r"based: eps = -1.0: must be a float >= 0"),
    ({}, dict(scale="1"), r"based: scale = '1': must be a Python float"),
    (dict(q=_GOOD["q"][0]), {}, r"based: q must have rank 4"),
    (dict(k=_GOOD["k"][:, :4]), {}, r"based: k must have the shape of q"),
    (dict(v=_GOOD["v"][:, :, :1]), {}, r"based: v must have shape \[batch, time, heads, dv\]"),
    ({}, dict(initial_state=_GOOD["S0"]), r"based: initial_state must be None or a BasedState\(S, z\)"),
    ({}, dict(initial_state=BasedState(_GOOD["S0"][..., :1], _GOOD["z0"])), r"initial_state must have S"),
])
def test_bad_arguments_raise_one_line(change, options, match):
    with pytest.raises(ValueError, match=match) as err:
        based(**dict(_QKV, **change), **options)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="segment_ids must be an integer"):
        based(**_QKV, segment_ids=np.ones((2, 4), np.int32))


def test_the_scanned_chunked_form_equals_the_batched_one():
    """Long calls without segments run the chunks as one scan (SCAN_ABOVE_CHUNKS): the same function as the
    batched chunked form (numerators, denominators, moments), fp32, with a ragged last chunk."""
    import importlib

    mod = importlib.import_module("scaling.ops.based")
    from scaling.ops.segments import chunk_masks

    ks = jax.random.split(jax.random.key(9), 5)
    q, k = (jax.random.normal(ks[i], (2, 45, 3, 4)) / 2 for i in range(2))
    v = jax.random.normal(ks[2], (2, 45, 3, 8))
    D = mod.based_feature_dim(4)
    S0, z0 = jax.random.normal(ks[3], (2, 3, D, 8)), jnp.abs(jax.random.normal(ks[4], (2, 3, D)))
    got = mod._chunked_scan(q, k, v, S0, z0, chunk=4)
    one_document = chunk_masks(jnp.ones((2, 45), jnp.int32), 12, 4)  # masks: the batched path
    want = mod._chunked(q, k, v, S0, z0, chunk=4, masks=one_document)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert -(-45 // 4) > mod.SCAN_ABOVE_CHUNKS
