"""scaling.ops.gated_delta: every form against the loop reference and an independent float64 recurrence (values,
gradients, state), state chaining, packed documents equal to each document alone, the chunked form's
numerical range, and argument errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scaling.ops.gated_delta import (
    gated_delta_rule,
    gated_delta_rule_reference,
    gated_delta_state_shape,
    gated_delta_state_size,
    unit_lower_inverse,
)

FORMS = ("parallel", "chunked", "recurrent")
TIME_ARGS, STATE_ARGS = ("q", "k", "v", "beta", "log_g"), ("initial_state",)
RTOL = 1e-5  # norm-relative, fp32 against fp32 (or float64) for every output: o, state and every gradient
ARGS = ("q", "k", "v", "beta", "log_g", "initial_state")


@pytest.fixture(autouse=True, scope="module")
def _full_precision_matmuls():
    with jax.default_matmul_precision("float32"):
        yield


def make_inputs(b, t, h, dk, dv, seed, gate=(0.0, 1.0), beta=(0.05, 0.95)):
    """Random fp32 inputs; k is L2-normalised per token as the Gated DeltaNet layer does."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    k = rng.normal(size=(b, t, h, dk))
    return dict(q=rng.normal(size=(b, t, h, dk)).astype(f32),
                k=(k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(f32),
                v=rng.normal(size=(b, t, h, dv)).astype(f32), beta=rng.uniform(*beta, size=(b, t, h)).astype(f32),
                log_g=-rng.uniform(*gate, size=(b, t, h)).astype(f32),
                initial_state=rng.normal(size=(b, h, dk, dv)).astype(f32))


def numpy_recurrence(q, k, v, beta, log_g, initial_state):
    """Independent float64 loop of the four-line definition: decay, correction, write, read."""
    q, k, v, beta, g, S = (np.asarray(x, np.float64) for x in (q, k, v, beta, log_g, initial_state))
    o = np.zeros(v.shape)
    for t in range(q.shape[1]):
        S = np.exp(g[:, t])[..., None, None] * S
        u = beta[:, t, :, None] * (v[:, t] - np.einsum("bhd,bhde->bhe", k[:, t], S))
        S = S + k[:, t, :, :, None] * u[:, :, None, :]
        o[:, t] = np.einsum("bhd,bhde->bhe", q[:, t], S) / np.sqrt(q.shape[-1])
    return o, S


def assert_close(actual, expected, name, rtol=RTOL, norm=None):
    """Norm-relative error; ``norm`` (default: the norm of ``expected``) is the scale errors are measured in."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: non-finite values"
    err = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected) if norm is None else norm, 1e-30)
    assert err <= rtol, f"{name}: norm-relative error {err:.3e} > {rtol:.0e}"


def value_and_grads(fn, inputs, w_o, w_S):
    def loss(*args):
        o, S = fn(*args[:5], initial_state=args[5], return_state=True)
        return jnp.sum(o * w_o) + jnp.sum(S * w_S), (o, S)

    (_, (o, S)), grads = jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True)(*(inputs[a] for a in ARGS))
    return o, S, dict(zip(ARGS, grads, strict=True))


@functools.cache
def jitted(form, chunk_size=64):
    return jax.jit(functools.partial(gated_delta_rule, form=form, chunk_size=chunk_size, return_state=True))


@settings(max_examples=1, deadline=None, derandomize=True, database=None)  # more in the slow test below
@given(b=st.integers(1, 2), t=st.integers(1, 33), h=st.integers(1, 3), dk=st.integers(1, 6),
       dv=st.integers(1, 5), chunk=st.integers(1, 20), seed=st.integers(0, 2**16))
@example(b=2, t=29, h=2, dk=4, dv=3, chunk=8, seed=1)  # ragged: 29 = 3 * 8 + 5
def test_forms_match_reference_values_grads_and_state(b, t, h, dk, dv, chunk, seed):
    _check_forms(b, t, h, dk, dv, chunk, seed)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(b=st.integers(1, 2), t=st.integers(1, 33), h=st.integers(1, 3), dk=st.integers(1, 6),
       dv=st.integers(1, 5), chunk=st.integers(1, 20), seed=st.integers(0, 2**16))
@example(b=1, t=7, h=2, dk=3, dv=2, chunk=16, seed=2)  # chunk > time
def test_forms_match_reference_many_shapes(b, t, h, dk, dv, chunk, seed):
    _check_forms(b, t, h, dk, dv, chunk, seed)


def _check_forms(b, t, h, dk, dv, chunk, seed):
    inputs = make_inputs(b, t, h, dk, dv, seed)
    rng = np.random.default_rng(seed + 1)
    w_o = rng.normal(size=(b, t, h, dv)).astype(np.float32)
    w_S = rng.normal(size=(b, h, dk, dv)).astype(np.float32)
    o_ref, S_ref, g_ref = jax.jit(functools.partial(value_and_grads, gated_delta_rule_reference))(inputs, w_o, w_S)
    o_np, S_np = numpy_recurrence(**inputs)
    assert_close(o_ref, o_np, "reference o vs float64 recurrence")
    assert_close(S_ref, S_np, "reference state vs float64 recurrence")
    for form in FORMS:
        fn = functools.partial(gated_delta_rule, form=form, chunk_size=chunk)
        o, S, grads = jax.jit(functools.partial(value_and_grads, fn))(inputs, w_o, w_S)
        assert_close(o, o_ref, f"{form} o")
        assert_close(S, S_ref, f"{form} state")
        for name in ARGS:
            assert_close(grads[name], g_ref[name], f"{form} d/d{name}")


def _time_slice(inputs, start, stop):
    return {a: x if a == "initial_state" else x[:, start:stop] for a, x in inputs.items()}


@pytest.mark.parametrize("form", FORMS)
def test_prefix_then_suffix_equals_whole(form):
    inputs = make_inputs(2, 27, 2, 4, 3, seed=3)
    o_whole, S_whole = jitted(form, 8)(**inputs)
    o_a, S_a = jitted(form, 8)(**_time_slice(inputs, 0, 11))  # 11: not a chunk boundary
    o_b, S_b = jitted(form, 8)(**dict(_time_slice(inputs, 11, 27), initial_state=S_a))
    assert_close(jnp.concatenate([o_a, o_b], axis=1), o_whole, f"{form} o")
    assert_close(S_b, S_whole, f"{form} state")


def test_chunked_prefill_then_recurrent_decode_equals_whole():
    inputs = make_inputs(1, 20, 2, 3, 4, seed=4)
    o_whole, S_whole = jitted("chunked", 8)(**inputs)
    outs = []
    o, S = jitted("chunked", 8)(**_time_slice(inputs, 0, 13))
    outs.append(o)
    for t in range(13, 20):
        o, S = jitted("recurrent")(**dict(_time_slice(inputs, t, t + 1), initial_state=S))
        outs.append(o)
    assert_close(jnp.concatenate(outs, axis=1), o_whole, "decode o")
    assert_close(S, S_whole, "decode state")


# Packed rows: documents of lengths (row 0) 5, 9, 1, 8 and (row 1) 9, 5, 9; ids 1, 2, ... (0 is padding, a run too).
LAYOUT = ((5, 9, 1, 8), (9, 5, 9))


def _segments(layout, t):
    seg = np.zeros((len(layout), t), np.int32)
    for row, lengths in enumerate(layout):
        start = 0
        for doc, n in enumerate(lengths):
            seg[row, start:start + n] = doc + 1
            start += n
    return seg

def _documents(layout):
    """(row, start, length, first, last) of every document of the layout."""
    out = []
    for row, lengths in enumerate(layout):
        starts = np.cumsum((0,) + tuple(lengths))
        out += [(row, int(starts[d]), n, d == 0, d == len(lengths) - 1) for d, n in enumerate(lengths)]
    return out


@pytest.mark.parametrize("form", FORMS)
def test_packed_documents_equal_each_document_alone(form):
    t = 23
    inputs = make_inputs(2, t, 2, 3, 2, seed=5)
    rng = np.random.default_rng(6)
    w = [rng.normal(size=(2, t, 2, 2)).astype(np.float32), rng.normal(size=(2, 2, 3, 2)).astype(np.float32)]
    fn = functools.partial(gated_delta_rule, form=form, chunk_size=4)
    packed = functools.partial(value_and_grads, functools.partial(fn, segment_ids=_segments(LAYOUT, t)))
    o, S, grads = jax.jit(packed)(inputs, *w)
    # Each document alone: one row per document, from its first token, the initial state only for a row's first
    # document; then tokens that change nothing (beta = 0 and log_g = 0: no write, no decay).
    docs = _documents(LAYOUT)
    alone = {a: np.zeros((len(docs),) + x.shape[1:], x.dtype) for a, x in inputs.items()}
    w_alone = [np.zeros((len(docs),) + x.shape[1:], x.dtype) for x in w]
    for d, (row, start, n, first, last) in enumerate(docs):
        for a in TIME_ARGS:
            alone[a][d, :n] = inputs[a][row, start:start + n]
        w_alone[0][d, :n] = w[0][row, start:start + n]
        for a in STATE_ARGS if first else ():
            alone[a][d] = inputs[a][row]
        for w_a, w_p in zip(w_alone[1:], w[1:], strict=True):
            w_a[d] = w_p[row] * last
    o_a, S_a, g_a = jax.jit(functools.partial(value_and_grads, fn))(alone, *w_alone)
    for d, (row, start, n, first, last) in enumerate(docs):
        where = f"{form} row {row} document at {start}"
        assert_close(o[row, start:start + n], o_a[d, :n], f"{where} o")
        for a in TIME_ARGS:
            # A one-token document's gate gradient is 0 up to round-off: measured against the whole row's.
            assert_close(grads[a][row, start:start + n], g_a[a][d, :n], f"{where} d/d{a}",
                         norm=np.linalg.norm(grads[a][row]))
        for a in STATE_ARGS if first else ():
            assert_close(grads[a][row], g_a[a][d], f"{where} d/d{a}")
        if last:
            assert_close(S[row], S_a[d], f"{where} final state")


def test_strong_gates_and_full_writes_stay_finite_and_exact():
    # log g down to -30 per step (exp underflows towards 0) and beta close to 1 (near-exact overwrites):
    # the chunked form takes exp only of in-chunk sums <= 0, and the triangular solve stays well posed.
    inputs = make_inputs(1, 50, 2, 4, 3, seed=7, gate=(0.0, 30.0), beta=(0.9, 0.999))
    o_ref, S_ref = gated_delta_rule_reference(**inputs, return_state=True)
    for form in FORMS:
        o, S = jitted(form, 16)(**inputs)
        assert_close(o, o_ref, f"{form} o")
        assert_close(S, S_ref, f"{form} state")


def test_long_context_chunked_matches_recurrent():
    # Mild gates whose sum over the sequence reaches -200 and below: nothing global is exponentiated.
    inputs = make_inputs(1, 4096, 2, 4, 4, seed=8, gate=(0.0, 0.1))
    inputs["log_g"][:, :, 0] = -1e-4  # one head barely decays
    o_c, S_c = jitted("chunked", 64)(**inputs)
    o_r, S_r = jitted("recurrent")(**inputs)
    assert_close(o_c, o_r, "chunked o", rtol=1e-4)  # thousands of fp32 steps summed in different orders
    assert_close(S_c, S_r, "chunked state", rtol=1e-4)


def test_dtypes_default_scale_and_empty_time():
    inputs = make_inputs(1, 6, 2, 4, 3, seed=9)
    o, S = gated_delta_rule(**dict(inputs, q=jnp.asarray(inputs["q"], jnp.bfloat16)), return_state=True)
    assert o.dtype == jnp.bfloat16 and S.dtype == jnp.float32
    o_half = gated_delta_rule(**inputs, scale=0.5 * 4 ** -0.5)
    assert_close(o_half, 0.5 * np.asarray(gated_delta_rule(**inputs)), "scale is linear in o")
    o0, S0 = gated_delta_rule(**_time_slice(inputs, 0, 0), return_state=True)
    assert o0.shape == (1, 0, 2, 3)
    np.testing.assert_array_equal(np.asarray(S0), inputs["initial_state"])
    assert gated_delta_state_shape(4, 3) == (4, 3) and gated_delta_state_size(64, 128) == 8192


_GOOD = make_inputs(2, 5, 2, 3, 4, seed=10)


@pytest.mark.parametrize("change, options, match", [
    ({}, dict(form="quadratic"),
     r"gated_delta_rule: form = 'quadratic': must be one of 'parallel', 'chunked', 'recurrent'"),
    ({}, dict(chunk_size=0), r"gated_delta_rule: chunk_size = 0: must be an int >= 1"),
    ({}, dict(chunk_size=True), r"chunk_size = True"),
    ({}, dict(scale="1"), r"gated_delta_rule: scale = '1': must be a Python float"),
    (dict(q=_GOOD["q"][0]), {}, r"gated_delta_rule: q must have rank 4"),
    (dict(k=_GOOD["k"][:, :4]), {}, r"gated_delta_rule: k must have the shape of q"),
    (dict(beta=_GOOD["beta"][..., :1]), {},
     r"gated_delta_rule: beta must have shape \[batch, time, heads\] = \(2, 5, 2\)"),
    (dict(log_g=_GOOD["log_g"][:, :4]), {}, r"gated_delta_rule: log_g must have shape \[batch, time, heads\]"),
    (dict(v=_GOOD["v"][:, :, :1]), {}, r"gated_delta_rule: v must have shape \[batch, time, heads, dv\]"),
    (dict(q=np.ones((2, 5, 2, 3), np.int32)), {}, r"gated_delta_rule: q must be a floating dtype"),
    (dict(initial_state=np.ones((2, 2, 4, 3), np.float32)), {}, r"initial_state must be None or have shape"),
])
def test_bad_arguments_raise_one_line(change, options, match):
    with pytest.raises(ValueError, match=match) as err:
        gated_delta_rule(**dict(_GOOD, **change), **options)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="segment_ids must be an integer"):
        gated_delta_rule(**_GOOD, segment_ids=np.ones((2, 4), np.int32))


@pytest.mark.parametrize("c", [1, 2, 3, 7, 16, 48, 64])
def test_unit_lower_inverse_is_the_triangular_inverse(c):
    """(I + L)^-1 by blocks against numpy's float64 inverse, for chunk sizes that are and are not powers of two;
    what lies on and above L's diagonal is ignored."""
    L = np.random.default_rng(c).uniform(-0.9, 0.9, (3, c, c))
    want = np.linalg.inv(np.tril(L, -1) + np.eye(c))
    got = np.asarray(unit_lower_inverse(jnp.asarray(L, jnp.float32)), np.float64)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert (np.triu(got, 1) == 0).all() and (np.diagonal(got, axis1=-2, axis2=-1) == 1).all()


def test_chunked_gradient_has_no_lapack_triangular_solve():
    """The chunked form's gradient is matrix products only: LAPACK's batched triangular solve in this step
    deadlocked XLA's CPU runtime (jax 0.10.2, batch >= 16: the train step never returned)."""
    x = jnp.ones((2, 8, 1, 4)) / 2
    beta, log_g = jnp.full((2, 8, 1), 0.5), jnp.full((2, 8, 1), -0.1)
    loss = lambda q, k, v: jnp.sum(gated_delta_rule(q, k, v, beta, log_g, chunk_size=4))
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(x, x, x))
    assert "dot_general" in jaxpr and "triangular_solve" not in jaxpr


def test_the_scanned_chunked_form_equals_the_batched_one():
    """Long calls without segments run the chunks as one scan (SCAN_ABOVE_CHUNKS): the same function as the
    batched chunked form, values and final state, fp32, with a ragged last chunk."""
    import importlib

    mod = importlib.import_module("scaling.ops.gated_delta")
    from scaling.ops.segments import chunk_masks

    ks = jax.random.split(jax.random.key(8), 6)
    q, k, v = (jax.random.normal(ks[i], (2, 45, 3, 8)) for i in range(3))
    q, k = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (q, k))
    beta = jax.nn.sigmoid(jax.random.normal(ks[3], (2, 45, 3)))
    g = -jax.nn.softplus(jax.random.normal(ks[4], (2, 45, 3)))
    S0 = jax.random.normal(ks[5], (2, 3, 8, 8))
    o1, S1 = mod._chunked_scan(q, k, v, beta, g, S0, chunk=4)
    one_document = chunk_masks(jnp.ones((2, 45), jnp.int32), 12, 4)  # masks: the batched path
    o2, S2 = mod._chunked(q, k, v, beta, g, S0, chunk=4, masks=one_document)
    np.testing.assert_allclose(np.asarray(o1), np.asarray(o2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(S1), np.asarray(S2), rtol=1e-5, atol=1e-5)
