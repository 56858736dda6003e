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
from tests.ops import chunked_checks as checks
from tests.ops.chunked_checks import FORMS, assert_close
from tests.ops.chunked_checks import time_slice as _time_slice

TIME_ARGS, STATE_ARGS = ("q", "k", "v", "beta", "log_g"), ("initial_state",)
ARGS = (*TIME_ARGS, *STATE_ARGS)
value_and_grads = functools.partial(checks.value_and_grads, ARGS)
jitted = functools.partial(checks.jitted, gated_delta_rule)


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
    checks.check_forms(gated_delta_rule, gated_delta_rule_reference, make_inputs, numpy_recurrence, ARGS,
                       b, t, h, dk, dv, chunk, seed)


@pytest.mark.parametrize("form", FORMS)
def test_prefix_then_suffix_equals_whole(form):
    checks.check_prefix_then_suffix(gated_delta_rule, make_inputs(2, 27, 2, 4, 3, seed=3), form)


def test_chunked_prefill_then_recurrent_decode_equals_whole():
    checks.check_chunked_prefill_then_recurrent_decode(gated_delta_rule, make_inputs(1, 20, 2, 3, 4, seed=4))


@pytest.mark.parametrize("form", FORMS)
def test_packed_documents_equal_each_document_alone(form):
    # the tokens after a document alone change nothing: beta = 0 and log_g = 0 (no write, no decay)
    t = 23
    inputs = make_inputs(2, t, 2, 3, 2, seed=5)
    rng = np.random.default_rng(6)
    w = [rng.normal(size=(2, t, 2, 2)).astype(np.float32), rng.normal(size=(2, 2, 3, 2)).astype(np.float32)]
    checks.check_packed_documents(value_and_grads, functools.partial(gated_delta_rule, form=form, chunk_size=4), inputs,
                                  w, TIME_ARGS, STATE_ARGS, form)


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
