"""scaling.ops.gla: every form against the loop reference and an independent float64 recurrence (values,
gradients, state), state chaining, packed documents equal to each document alone, the chunked form's
numerical range, and argument errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scaling.ops.gla import gla, gla_reference, gla_state_shape, gla_state_size
from tests.ops import chunked_checks as checks
from tests.ops.chunked_checks import FORMS, assert_close
from tests.ops.chunked_checks import time_slice as _time_slice

TIME_ARGS, STATE_ARGS = ("q", "k", "v", "log_gk"), ("initial_state",)
ARGS = (*TIME_ARGS, *STATE_ARGS)
value_and_grads = functools.partial(checks.value_and_grads, ARGS)
jitted = functools.partial(checks.jitted, gla)


@pytest.fixture(autouse=True, scope="module")
def _full_precision_matmuls():
    with jax.default_matmul_precision("float32"):
        yield


def make_inputs(b, t, h, dk, dv, seed, gate=(0.0, 1.0)):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return dict(q=rng.normal(size=(b, t, h, dk)).astype(f32), k=rng.normal(size=(b, t, h, dk)).astype(f32),
                v=rng.normal(size=(b, t, h, dv)).astype(f32),
                log_gk=-rng.uniform(*gate, size=(b, t, h, dk)).astype(f32),
                initial_state=rng.normal(size=(b, h, dk, dv)).astype(f32))


def numpy_recurrence(q, k, v, log_gk, initial_state):
    """Independent float64 recurrence: S = diag(exp(gk)) S + k v^T, o = dk^-1/2 S^T q."""
    q, k, v, g, S = (np.asarray(x, np.float64) for x in (q, k, v, log_gk, initial_state))
    o = np.zeros(v.shape)
    for t in range(q.shape[1]):
        S = np.exp(g[:, t])[..., None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
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
    checks.check_forms(gla, gla_reference, make_inputs, numpy_recurrence, ARGS, b, t, h, dk, dv, chunk, seed)


@pytest.mark.parametrize("form", FORMS)
def test_prefix_then_suffix_equals_whole(form):
    checks.check_prefix_then_suffix(gla, make_inputs(2, 27, 2, 4, 3, seed=3), form)


def test_chunked_prefill_then_recurrent_decode_equals_whole():
    checks.check_chunked_prefill_then_recurrent_decode(gla, make_inputs(1, 20, 2, 3, 4, seed=4))


@pytest.mark.parametrize("form", FORMS)
def test_packed_documents_equal_each_document_alone(form):
    # the tokens after a document alone change nothing: k = v = 0 and log_gk = 0 (no input, no decay)
    t = 23
    inputs = make_inputs(2, t, 2, 3, 2, seed=5)
    rng = np.random.default_rng(6)
    w = [rng.normal(size=(2, t, 2, 2)).astype(np.float32), rng.normal(size=(2, 2, 3, 2)).astype(np.float32)]
    checks.check_packed_documents(value_and_grads, functools.partial(gla, form=form, chunk_size=4), inputs, w,
                                  TIME_ARGS, STATE_ARGS, form)


def test_chunked_strong_gates_within_the_documented_range():
    # Per-step log gates down to -2.5 with chunks of 64: a chunk's total reaches about -125 per channel,
    # past exp's fp32 range (88) if the factors were taken from the chunk start; the midpoint keeps them in.
    inputs = make_inputs(1, 100, 2, 4, 3, seed=7, gate=(1.5, 2.5))
    assert inputs["log_gk"][:, :64].sum(axis=1).max() < -90
    o_c, S_c = jitted("chunked", 64)(**inputs)
    o_r, S_r = jitted("recurrent")(**inputs)
    assert_close(o_c, o_r, "chunked o")
    assert_close(S_c, S_r, "chunked state")


def test_long_context_chunked_matches_recurrent():
    # Mild gates whose sum over the sequence reaches -200 and below: nothing global is exponentiated.
    inputs = make_inputs(1, 4096, 2, 4, 4, seed=8, gate=(0.0, 0.1))
    inputs["log_gk"][..., 0] = -1e-4  # one channel barely decays, so its state keeps growing
    o_c, S_c = jitted("chunked", 64)(**inputs)
    o_r, S_r = jitted("recurrent")(**inputs)
    assert_close(o_c, o_r, "chunked o", rtol=1e-4)  # thousands of fp32 steps summed in different orders
    assert_close(S_c, S_r, "chunked state", rtol=1e-4)


def test_dtypes_default_scale_and_empty_time():
    inputs = make_inputs(1, 6, 2, 4, 3, seed=9)
    o, S = gla(**dict(inputs, q=jnp.asarray(inputs["q"], jnp.bfloat16)), return_state=True)
    assert o.dtype == jnp.bfloat16 and S.dtype == jnp.float32
    o_half = gla(**inputs, scale=0.5 * 4 ** -0.5)
    assert_close(o_half, 0.5 * np.asarray(gla(**inputs)), "scale is linear in o")
    o0, S0 = gla(**_time_slice(inputs, 0, 0), return_state=True)
    assert o0.shape == (1, 0, 2, 3)
    np.testing.assert_array_equal(np.asarray(S0), inputs["initial_state"])
    assert gla_state_shape(4, 3) == (4, 3) and gla_state_size(64, 128) == 8192


_GOOD = make_inputs(2, 5, 2, 3, 4, seed=10)


@pytest.mark.parametrize("change, options, match", [
    ({}, dict(form="quadratic"), r"gla: form = 'quadratic': must be one of 'parallel', 'chunked', 'recurrent'"),
    ({}, dict(chunk_size=0), r"gla: chunk_size = 0: must be an int >= 1"),
    ({}, dict(chunk_size=True), r"chunk_size = True"),
    ({}, dict(scale="1"), r"gla: scale = '1': must be a Python float"),
    (dict(q=_GOOD["q"][0]), {}, r"gla: q must have rank 4"),
    (dict(k=_GOOD["k"][:, :4]), {}, r"gla: k must have the shape of q"),
    (dict(log_gk=_GOOD["log_gk"][..., :2]), {}, r"gla: log_gk must have the shape of q"),
    (dict(v=_GOOD["v"][:, :, :1]), {}, r"gla: v must have shape \[batch, time, heads, dv\]"),
    (dict(q=np.ones((2, 5, 2, 3), np.int32)), {}, r"gla: q must be a floating dtype"),
    (dict(initial_state=np.ones((2, 2, 4, 3), np.float32)), {}, r"initial_state must be None or have shape"),
])
def test_bad_arguments_raise_one_line(change, options, match):
    with pytest.raises(ValueError, match=match) as err:
        gla(**dict(_GOOD, **change), **options)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="segment_ids must be an integer"):
        gla(**_GOOD, segment_ids=np.ones((2, 4), np.int32))


def test_the_scanned_chunked_form_equals_the_batched_one():
    """Long calls without segments run the chunks as one scan (gla.SCAN_ABOVE_CHUNKS): the same function as the
    batched chunked form, values and final state, fp32, with a ragged last chunk."""
    import importlib

    gla_mod = importlib.import_module("scaling.ops.gla")  # the module (scaling.ops.gla is also the op's name)

    ks = jax.random.split(jax.random.key(7), 5)
    q, k, v = (jax.random.normal(ks[i], (2, 45, 3, 8)) for i in range(3))
    g = -jax.nn.softplus(jax.random.normal(ks[3], (2, 45, 3, 8)))
    S0 = jax.random.normal(ks[4], (2, 3, 8, 8))
    o1, S1 = gla_mod._chunked_scan(q, k, v, g, S0, chunk=4)
    one_document = gla_mod.chunk_masks(jnp.ones((2, 45), jnp.int32), 12, 4)  # masks: the batched path
    o2, S2 = gla_mod._chunked(q, k, v, g, S0, chunk=4, masks=one_document)
    np.testing.assert_allclose(np.asarray(o1), np.asarray(o2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(S1), np.asarray(S2), rtol=1e-5, atol=1e-5)
    assert -(-45 // 4) > gla_mod.SCAN_ABOVE_CHUNKS  # a 45-token call at chunk 4 takes the scan in gla()
