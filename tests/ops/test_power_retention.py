"""Tests for scaling.ops.power_retention: every form against the reference (values, states and gradients),
state chaining across calls and forms, the feature map, argument errors and long-context stability."""

from __future__ import annotations

import functools
import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from scaling.ops.power_retention import (
    RetentionState,
    power_retention,
    power_retention_reference,
    sympow_dim,
    sympow_features,
)

FORMS = ("parallel", "chunked", "recurrent")
# Norm-relative tolerances against the reference, fp32.
TOL = 1e-5
GRAD_TOL = 1e-5
# Compiling is most of this file's run time on CPU; these XLA options cut it ~5x and change no semantics.
FAST_COMPILE = (
    {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
    if jax.default_backend() == "cpu"
    else None
)
_STATIC = ("p", "scale", "chunk_size", "form", "normalize", "eps", "return_state")
# Jitted entry points for the tests below (eager calls would compile every scan body on each call anyway).
retention = jax.jit(power_retention, static_argnames=_STATIC, compiler_options=FAST_COMPILE)
reference = jax.jit(
    power_retention_reference, static_argnames=_STATIC[:2] + _STATIC[4:], compiler_options=FAST_COMPILE
)
VALID_P_NORM = ((1, "rmsnorm"), (2, "sum"), (2, "rmsnorm"), (3, "rmsnorm"), (4, "sum"), (4, "rmsnorm"))


@pytest.fixture(autouse=True, scope="module")
def _full_fp32_matmuls():
    # On GPUs XLA may run float32 matmuls in TF32 by default; these tests compare fp32 round-off.
    with jax.default_matmul_precision("highest"):
        yield


def _norm(a) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64)))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _normal(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _make_case(seed, *, b, T, hq, hk, d, e, p, gated=True, stateful=True):
    """Inputs, an optional initial state, and random cotangents for y and the final state."""
    rng = np.random.default_rng(seed)
    args = {
        "q": _normal(rng, b, T, hq, d),
        "k": _normal(rng, b, T, hk, d),
        "v": _normal(rng, b, T, hk, e),
        "log_g": jnp.asarray(rng.uniform(-0.3, -0.01, (b, T, hk)), jnp.float32) if gated else None,
        "state": None,
    }
    if stateful:
        # A state some earlier call could have produced (an arbitrary z0 could make the denominator vanish).
        _, args["state"] = reference(
            _normal(rng, b, 6, hk, d), _normal(rng, b, 6, hk, d), _normal(rng, b, 6, hk, e),
            p=p, normalize="rmsnorm", return_state=True,
        )
    D = sympow_dim(d, p)
    cts = {"y": _normal(rng, b, T, hq, e), "S": _normal(rng, b, hk, D, e), "z": _normal(rng, b, hk, D)}
    return args, cts


def _value_and_grads(fn, args, cts):
    def loss(a):
        y, state = fn(a["q"], a["k"], a["v"], a["log_g"], initial_state=a["state"])
        value = jnp.sum(y * cts["y"]) + jnp.sum(state.S * cts["S"]) + jnp.sum(state.z * cts["z"])
        return value, (y, state)

    (_, (y, state)), grads = jax.value_and_grad(loss, has_aux=True)(args)
    return y, state, grads


@functools.partial(jax.jit, static_argnames=("p", "normalize", "chunk_size"), compiler_options=FAST_COMPILE)
def _all_forms(args, cts, *, p, normalize, chunk_size):
    """(y, final state, gradients w.r.t. q, k, v, log_g, initial state) for the reference and every form."""
    ref = functools.partial(power_retention_reference, p=p, normalize=normalize, return_state=True)
    out = {"reference": _value_and_grads(ref, args, cts)}
    for form in FORMS:
        fn = functools.partial(
            power_retention, p=p, normalize=normalize, chunk_size=chunk_size, form=form, return_state=True
        )
        out[form] = _value_and_grads(fn, args, cts)
    return out


def _check_against_reference(seed, *, b, T, hq, hk, d, e, p, normalize, gated, stateful, chunk_size):
    args, cts = _make_case(seed, b=b, T=T, hq=hq, hk=hk, d=d, e=e, p=p, gated=gated, stateful=stateful)
    out = _all_forms(args, cts, p=p, normalize=normalize, chunk_size=chunk_size)
    y_ref, state_ref, grads_ref = out["reference"]
    grad_scale = math.sqrt(sum(_norm(g) ** 2 for g in jax.tree.leaves(grads_ref)))
    assert y_ref.shape == (b, T, hq, e)
    assert state_ref.S.shape == (b, hk, sympow_dim(d, p), e)
    assert np.all(np.isfinite(np.asarray(y_ref)))
    for form in FORMS:
        y, state, grads = out[form]
        assert y.shape == y_ref.shape and y.dtype == jnp.float32
        assert _rel(y, y_ref) < TOL, (form, "y", _rel(y, y_ref))
        assert _rel(state.S, state_ref.S) < TOL, (form, "S", _rel(state.S, state_ref.S))
        assert _rel(state.z, state_ref.z) < TOL, (form, "z", _rel(state.z, state_ref.z))
        # Gradient errors are measured against the norm of the whole gradient (all inputs pooled): the
        # normalisations make y nearly invariant to some inputs (e.g. to the scale of q under rmsnorm, or
        # to q entirely when d = 1 and normalize="sum"), and such near-zero gradients are pure cancellation.
        for name, g_ref in grads_ref.items():
            if g_ref is None:
                assert grads[name] is None
                continue
            for leaf, leaf_ref in zip(jax.tree.leaves(grads[name]), jax.tree.leaves(g_ref), strict=True):
                err = _norm(np.asarray(leaf) - np.asarray(leaf_ref)) / grad_scale
                assert err < GRAD_TOL, (form, "grad", name, err)


# Each case covers one (p, normalize) pair; across them: GQA (hq=4, hk=2) and hq=hk, gate and no gate,
# initial state and none, T not a multiple of chunk_size, chunk_size > T, e != d.
CASES = [
    dict(p=1, normalize="rmsnorm", b=2, T=13, hq=4, hk=2, d=6, e=5, gated=True, stateful=True, chunk_size=4),
    dict(p=2, normalize="sum", b=1, T=11, hq=2, hk=2, d=4, e=4, gated=False, stateful=False, chunk_size=16),
    dict(p=2, normalize="rmsnorm", b=2, T=13, hq=4, hk=2, d=5, e=3, gated=True, stateful=False, chunk_size=5),
    dict(p=3, normalize="rmsnorm", b=1, T=13, hq=2, hk=2, d=4, e=6, gated=True, stateful=True, chunk_size=4),
    dict(p=4, normalize="sum", b=2, T=13, hq=4, hk=2, d=4, e=3, gated=True, stateful=True, chunk_size=4),
    dict(p=4, normalize="rmsnorm", b=1, T=9, hq=4, hk=4, d=3, e=5, gated=False, stateful=True, chunk_size=32),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"p{c['p']}-{c['normalize']}")
def test_forms_match_reference(case):
    _check_against_reference(0, **case)


_RANDOM_SHAPES = dict(
    b=st.integers(1, 2), T=st.integers(1, 40), hk=st.integers(1, 2), group=st.sampled_from([1, 2]),
    d=st.integers(1, 8),
    e=st.integers(2, 8),  # e = 1 makes rmsnorm a sign function, whose gradient is pure cancellation
    p_norm=st.sampled_from(VALID_P_NORM), gated=st.booleans(), stateful=st.booleans(),
    chunk_size=st.sampled_from([1, 3, 8, 64]), seed=st.integers(0, 2**16),
)


@settings(max_examples=3, deadline=None, derandomize=True, database=None)  # 25 with -m slow, below
@given(**_RANDOM_SHAPES)
def test_forms_match_reference_random_shapes(b, T, hk, group, d, e, p_norm, gated, stateful, chunk_size, seed):
    _check_random_shape(b, T, hk, group, d, e, p_norm, gated, stateful, chunk_size, seed)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(**_RANDOM_SHAPES)
def test_forms_match_reference_many_random_shapes(b, T, hk, group, d, e, p_norm, gated, stateful, chunk_size, seed):
    _check_random_shape(b, T, hk, group, d, e, p_norm, gated, stateful, chunk_size, seed)


def _check_random_shape(b, T, hk, group, d, e, p_norm, gated, stateful, chunk_size, seed):
    p, normalize = p_norm
    if p == 4:
        d = min(d, 5)  # keeps D = C(d+3, 4) small
    _check_against_reference(
        seed, b=b, T=T, hq=hk * group, hk=hk, d=d, e=e, p=p, normalize=normalize,
        gated=gated, stateful=stateful, chunk_size=chunk_size,
    )


# ---------------------------------------------------------------------------------------------------------
# Chaining: two calls passing the state equal one call, within and across forms.
# ---------------------------------------------------------------------------------------------------------

CHAIN = dict(b=2, T=21, hq=4, hk=2, d=4, e=3, p=2)


def _chain_inputs():
    args, _ = _make_case(1, **CHAIN, gated=True, stateful=True)
    return args["q"], args["k"], args["v"], args["log_g"], args["state"]


@functools.partial(jax.jit, static_argnames=("form",), compiler_options=FAST_COMPILE)
def _call(q, k, v, log_g, state, form):
    return power_retention(
        q, k, v, log_g, p=CHAIN["p"], form=form, chunk_size=4, initial_state=state, return_state=True
    )


@pytest.mark.parametrize("form", FORMS)
def test_two_halves_equal_one_call(form):
    q, k, v, log_g, state0 = _chain_inputs()
    y_all, state_all = _call(q, k, v, log_g, state0, form)
    cut = 9  # neither half a multiple of the chunk size
    y1, state1 = _call(q[:, :cut], k[:, :cut], v[:, :cut], log_g[:, :cut], state0, form)
    y2, state2 = _call(q[:, cut:], k[:, cut:], v[:, cut:], log_g[:, cut:], state1, form)
    assert isinstance(state2, RetentionState)
    assert _rel(jnp.concatenate([y1, y2], axis=1), y_all) < TOL
    assert _rel(state2.S, state_all.S) < TOL and _rel(state2.z, state_all.z) < TOL


def test_chunked_prefill_then_recurrent_steps_equal_one_call():
    q, k, v, log_g, _ = _chain_inputs()
    y_all, state_all = _call(q, k, v, log_g, None, "chunked")
    cut = 16
    y, state = _call(q[:, :cut], k[:, :cut], v[:, :cut], log_g[:, :cut], None, "chunked")
    ys = [y]
    for t in range(cut, q.shape[1]):
        sl = slice(t, t + 1)
        y_t, state = _call(q[:, sl], k[:, sl], v[:, sl], log_g[:, sl], state, "recurrent")
        ys.append(y_t)
    assert _rel(jnp.concatenate(ys, axis=1), y_all) < TOL
    assert _rel(state.S, state_all.S) < TOL and _rel(state.z, state_all.z) < TOL


def test_parallel_prefill_then_chunked_continuation_equals_one_call():
    q, k, v, log_g, state0 = _chain_inputs()
    y_all, state_all = _call(q, k, v, log_g, state0, "recurrent")
    cut = 7
    y1, state1 = _call(q[:, :cut], k[:, :cut], v[:, :cut], log_g[:, :cut], state0, "parallel")
    y2, state2 = _call(q[:, cut:], k[:, cut:], v[:, cut:], log_g[:, cut:], state1, "chunked")
    assert _rel(jnp.concatenate([y1, y2], axis=1), y_all) < TOL
    assert _rel(state2.S, state_all.S) < TOL


def test_padding_leaves_state_unchanged():
    # T = 5 with chunk 4 pads 3 tokens; the state must equal a call with no padding (chunk 5, or recurrent).
    q, k, v, log_g, _ = _chain_inputs()
    sl = slice(0, 5)
    _, s_pad = retention(q[:, sl], k[:, sl], v[:, sl], log_g[:, sl], chunk_size=4, return_state=True)
    _, s_exact = retention(q[:, sl], k[:, sl], v[:, sl], log_g[:, sl], chunk_size=5, return_state=True)
    assert _rel(s_pad.S, s_exact.S) < TOL and _rel(s_pad.z, s_exact.z) < TOL


def test_dtype_and_state_precision():
    q, k, v, log_g, _ = _chain_inputs()
    bf = jnp.bfloat16
    y, state = retention(q.astype(bf), k.astype(bf), v.astype(bf), log_g, form="parallel", return_state=True)
    assert y.dtype == bf and y.shape == (2, 21, 4, 3)
    assert state.S.dtype == jnp.float32 and state.z.dtype == jnp.float32
    y32 = retention(q.astype(bf).astype(jnp.float32), k.astype(bf).astype(jnp.float32),
                          v.astype(bf).astype(jnp.float32), log_g, form="parallel")
    assert _rel(y.astype(jnp.float32), y32) < 1e-2  # only the final cast to bf16 differs


def test_scale_and_default_scale():
    q, k, v, log_g, _ = _chain_inputs()
    d = q.shape[-1]
    y_default = retention(q, k, v, log_g, form="parallel")
    y_explicit = retention(q, k, v, log_g, form="parallel", scale=1 / math.sqrt(d))
    assert _rel(y_default, y_explicit) < 1e-6
    y_half = retention(q, k, v, log_g, form="chunked", scale=0.5, chunk_size=4, normalize="rmsnorm")
    y_half_ref = reference(q, k, v, log_g, scale=0.5, normalize="rmsnorm")
    assert _rel(y_half, y_half_ref) < TOL


# ---------------------------------------------------------------------------------------------------------
# Feature map
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,p", [(1, 1), (5, 1), (3, 2), (8, 2), (5, 3), (4, 4), (7, 4)])
def test_sympow_features_exact(d, p):
    rng = np.random.default_rng(d * 10 + p)
    x, y = _normal(rng, 3, d), _normal(rng, 3, d)
    fx, fy = sympow_features(x, p), sympow_features(y, p)
    assert fx.shape == (3, sympow_dim(d, p)) == (3, math.comb(d + p - 1, p))
    got = np.asarray(jnp.sum(fx * fy, axis=-1), np.float64)
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    want = np.sum(xn * yn, axis=-1) ** p
    # Round-off of the feature sum is relative to (|x||y|)^p, not to the (possibly tiny) value.
    scale = (np.linalg.norm(xn, axis=-1) * np.linalg.norm(yn, axis=-1)) ** p
    np.testing.assert_array_less(np.abs(got - want), 1e-5 * scale)
    # The squared norm is exact in the same sense: |phi(x)|^2 = |x|^(2p).
    np.testing.assert_allclose(np.sum(np.asarray(fx, np.float64) ** 2, -1),
                               np.linalg.norm(xn, axis=-1) ** (2 * p), rtol=1e-5)


def test_sympow_dim_values():
    assert sympow_dim(64, 2) == 2080
    assert sympow_dim(8, 1) == 8
    assert sympow_dim(4, 4) == 35
    with pytest.raises(ValueError, match="p"):
        sympow_dim(4, 0)


# ---------------------------------------------------------------------------------------------------------
# Errors, raised before any compute
# ---------------------------------------------------------------------------------------------------------


def _small():
    rng = np.random.default_rng(0)
    return _normal(rng, 1, 5, 4, 3), _normal(rng, 1, 5, 2, 3), _normal(rng, 1, 5, 2, 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(p=3), "rmsnorm"),
        (dict(p=1, normalize="sum"), "odd power"),
        (dict(p=5), "p = 5: must be one of 1, 2, 3, 4"),
        (dict(p=2.0), "p = 2.0"),
        (dict(form="quadratic"), "form = 'quadratic': must be one of 'parallel', 'chunked', 'recurrent'"),
        (dict(normalize="layer"), "normalize = 'layer'"),
        (dict(chunk_size=0), "chunk_size = 0"),
        (dict(eps=-1.0), "eps"),
    ],
)
def test_bad_arguments(kwargs, match):
    q, k, v = _small()
    with pytest.raises(ValueError, match=match):
        power_retention(q, k, v, **kwargs)


def test_bad_shapes():
    q, k, v = _small()
    with pytest.raises(ValueError, match="multiple of kv heads"):
        power_retention(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="log_g must be"):
        power_retention(q, k, v, jnp.zeros((1, 5, 4)))
    with pytest.raises(ValueError, match="log_g must be"):
        power_retention(q, k, v, jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match="rank 4"):
        power_retention(q[0], k, v)
    with pytest.raises(ValueError, match="time lengths differ"):
        power_retention(q, k[:, :4], v)
    with pytest.raises(ValueError, match="batch sizes differ"):
        power_retention(jnp.concatenate([q, q]), k, v)
    with pytest.raises(ValueError, match="head_dim differ"):
        power_retention(q[..., :2], k, v)
    with pytest.raises(ValueError, match="initial_state"):
        power_retention(q, k, v, initial_state=RetentionState(jnp.zeros((1, 2, 6, 2)), jnp.zeros((1, 2, 5))))
    with pytest.raises(ValueError, match="odd power"):
        power_retention_reference(q, k, v, p=3)




# ---------------------------------------------------------------------------------------------------------
# Long context: gates near 1 make the global cumulative log gate reach -600 and below.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "T,log_g_range",
    [(8192, (-3e-2, -1e-2)), (65536, (-1e-2, -1e-3)), (8192, (-8.0, -2.0))],
    ids=["8k-near-one", "64k-near-one", "8k-strong"],
)
def test_long_context_no_overflow(T, log_g_range):
    rng = np.random.default_rng(T)
    q, k, v = _normal(rng, 1, T, 1, 4), _normal(rng, 1, T, 1, 4), _normal(rng, 1, T, 1, 4)
    log_g = jnp.asarray(rng.uniform(*log_g_range, (1, T, 1)), jnp.float32)
    assert float(jnp.sum(log_g)) < -100.0  # e^{-G} alone would overflow fp32 (beyond about e^88)
    y_c, s_c = retention(q, k, v, log_g, form="chunked", return_state=True)
    y_r, s_r = retention(q, k, v, log_g, form="recurrent", return_state=True)
    # The parallel form resuming from a long-context state: chunked over all but the last 512 tokens.
    cut = T - 512
    head = [x[:, :cut] for x in (q, k, v, log_g)]
    tail = [x[:, cut:] for x in (q, k, v, log_g)]
    _, s_head = retention(*head, form="chunked", return_state=True)
    y_p, s_p = retention(*tail, form="parallel", initial_state=s_head, return_state=True)
    for x in (y_c, s_c.S, s_c.z, y_r, s_r.S, s_r.z, y_p, s_p.S, s_p.z):
        assert np.all(np.isfinite(np.asarray(x)))
    assert _rel(y_c, y_r) < TOL and _rel(s_c.S, s_r.S) < TOL and _rel(s_c.z, s_r.z) < TOL
    assert _rel(y_p, y_r[:, cut:]) < TOL and _rel(s_p.S, s_r.S) < TOL and _rel(s_p.z, s_r.z) < TOL


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_sympow_features_custom_gradient_matches_autodiff(p):
    """The gather-based backward of sympow_features equals autodiff of the plain product of gathers."""
    from scaling.ops.power_retention import sympow_table

    x = jax.random.normal(jax.random.key(p), (3, 2, 5))
    idx, w = sympow_table(5, p)

    def plain(x):
        out = jnp.ones(x.shape[:-1] + (idx.shape[0],))
        for m in range(p):
            out = out * x[..., idx[:, m]]
        return out * w

    loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)) * jnp.arange(idx.shape[0]))
    got = jax.grad(loss(lambda x: sympow_features(x, p)))(x)
    want = jax.grad(loss(plain))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
