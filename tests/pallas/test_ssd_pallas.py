"""pallas_kernels.ssd against scaling.ops' XLA chunked form, in Pallas interpret mode on CPU: y, the final
state and the gradients of x, dt, A, B, C, D and the initial state, over groups = 1, 2 and heads, ragged T, a
chunk longer than T and recomputed segments; bf16 inputs; other backends' padding; lowering for Mosaic TPU
and Triton without a device; errors."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from pallas_kernels import make_plan, ssd
from scaling.ops.ssd import ssd as xla_ssd
from tests.helpers import rel_err

TOL = 1e-4  # fp32, norm-relative, per output and per gradient; measured errors are ~1e-7 (dA ~1e-6)
BF16_TOL = 1e-2  # bf16 x, B, C: y and dx, dB, dC come back in bf16 (relative rounding 2^-9 per element)
FAST_COMPILE = (
    {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
    if jax.default_backend() == "cpu"
    else None
)
ARG_NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")


@pytest.fixture(autouse=True, scope="module")
def _full_fp32_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


class Case(NamedTuple):
    batch: int
    time: int
    heads: int
    head_dim: int
    groups: int
    d_state: int
    chunk_size: int | None
    state_budget_bytes: int | None = None


def _inputs(case: Case, seed: int):
    """Random fp32 inputs (dict keyed like ARG_NAMES) and cotangents for y and the final state."""
    rng = np.random.default_rng(seed)
    b, t, h, p, g, n = case.batch, case.time, case.heads, case.head_dim, case.groups, case.d_state
    f32 = np.float32
    inputs = dict(
        x=rng.normal(size=(b, t, h, p)).astype(f32),
        dt=rng.uniform(0.05, 1.0, size=(b, t, h)).astype(f32),
        A=-rng.uniform(0.1, 2.0, size=(h,)).astype(f32),
        B=rng.normal(size=(b, t, g, n)).astype(f32),
        C=rng.normal(size=(b, t, g, n)).astype(f32),
        D=rng.normal(size=(h,)).astype(f32),
        initial_state=rng.normal(size=(b, h, p, n)).astype(f32),
    )
    cts = dict(y=rng.normal(size=(b, t, h, p)).astype(f32), state=rng.normal(size=(b, h, p, n)).astype(f32))
    return {k: jnp.asarray(v) for k, v in inputs.items()}, cts


@functools.partial(jax.jit, static_argnames=("pallas", "chunk_size", "state_budget_bytes", "target", "interpret"),
                   compiler_options=FAST_COMPILE)
def _value_and_grads(inputs, cts, *, pallas, chunk_size, state_budget_bytes=None, target=None, interpret=None):
    if pallas:
        fn = functools.partial(ssd, state_budget_bytes=state_budget_bytes, target=target, interpret=interpret)
    else:
        fn = functools.partial(xla_ssd, form="chunked")

    def loss(a):
        y, state = fn(a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], initial_state=a["initial_state"],
                      chunk_size=chunk_size, return_state=True)
        return jnp.sum(y.astype(jnp.float32) * cts["y"]) + jnp.sum(state * cts["state"]), (y, state)

    (_, (y, state)), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
    return y, state, grads


def _errors(out, ref):
    """Norm-relative errors of y, the state and every gradient."""
    (y, state, grads), (y_ref, state_ref, grads_ref) = out, ref
    errors = {"y": rel_err(y, y_ref), "state": rel_err(state, state_ref)}
    for name in ARG_NAMES:
        assert grads[name].shape == grads_ref[name].shape
        assert np.all(np.isfinite(np.asarray(grads[name], np.float32)))
        errors[f"d{name}"] = rel_err(grads[name], grads_ref[name])
    return errors


def _compare(case: Case, seed: int, **kernel):
    inputs, cts = _inputs(case, seed)
    ref = _value_and_grads(inputs, cts, pallas=False, chunk_size=case.chunk_size or 64)
    out = _value_and_grads(inputs, cts, pallas=True, chunk_size=case.chunk_size,
                           state_budget_bytes=case.state_budget_bytes, **kernel)
    assert out[0].shape == inputs["x"].shape and out[1].dtype == jnp.float32
    assert all(out[2][n].dtype == jnp.float32 for n in ARG_NAMES)
    errors = _errors(out, ref)
    assert max(errors.values()) < TOL, errors


# groups = 1 (all heads share B, C), 2 and heads; T not a multiple of the chunk, a chunk longer than T;
# per-chunk states kept (default budget) and recomputed in 3 segments of 2 chunks (26 tokens, chunk 6 ->
# 5 chunks; a chunk's states are 1*4*3*3*4 = 144 bytes, so 300 bytes hold 2).
CASES = {
    "groups1-ragged": Case(batch=2, time=37, heads=4, head_dim=4, groups=1, d_state=3, chunk_size=8),
    "groups2-chunk>T": Case(batch=1, time=19, heads=4, head_dim=4, groups=2, d_state=3, chunk_size=32),
    "groups=heads-segments": Case(batch=1, time=26, heads=4, head_dim=3, groups=4, d_state=3, chunk_size=6,
                                  state_budget_bytes=300),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_xla_chunked_form(case):
    _compare(case, seed=0)


def test_segment_plan_of_the_recompute_case():
    case = CASES["groups=heads-segments"]
    plan = make_plan(p=1, scale=1.0, batch=1, time=case.time, state_heads=4, q_per_state=1, q_div=1, k_div=1,
                     d=case.d_state, e=case.head_dim, D=case.d_state, chunk_size=case.chunk_size, block_d=None,
                     state_budget_bytes=case.state_budget_bytes, interpret=None)
    assert (plan.n_chunks, plan.n_segments, plan.chunks_per_segment, plan.padded_time) == (5, 3, 2, 36)
    assert not plan.store_states


def test_bf16_inputs_against_fp32_reference():
    case = Case(batch=1, time=21, heads=4, head_dim=4, groups=2, d_state=3, chunk_size=8)
    inputs, cts = _inputs(case, seed=4)
    bf = jnp.bfloat16
    inputs_bf = dict(inputs, x=inputs["x"].astype(bf), B=inputs["B"].astype(bf), C=inputs["C"].astype(bf))
    inputs_ref = dict(inputs_bf, **{k: inputs_bf[k].astype(jnp.float32) for k in ("x", "B", "C")})
    out = _value_and_grads(inputs_bf, cts, pallas=True, chunk_size=8)
    ref = _value_and_grads(inputs_ref, cts, pallas=False, chunk_size=8)
    assert out[0].dtype == bf and out[2]["x"].dtype == bf and out[2]["B"].dtype == bf
    errors = _errors(out, ref)
    assert errors["state"] < TOL, errors  # float32 state from exactly upcast inputs
    assert max(errors.values()) < BF16_TOL, errors


@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_other_backends_padding_in_interpret_mode(target):
    # GPU rules pad d_state 3 -> 16, head_dim 4 -> 16 and the chunk to a power of two >= 16; TPU rules use
    # 128-token chunks and 128 value lanes. Same values and gradients.
    _compare(Case(batch=1, time=150, heads=2, head_dim=4, groups=1, d_state=3, chunk_size=None), seed=1,
             target=target, interpret=True)


@pytest.mark.parametrize("target, platform, call", [("tpu", "tpu", "tpu_custom_call"),
                                                    ("gpu", "cuda", "__gpu$xla.gpu.triton")])
def test_forward_and_backward_lower_for_tpu_and_gpu(target, platform, call):
    b, t, h, p, g, n = 2, 300, 8, 64, 2, 128
    args = [jax.ShapeDtypeStruct((b, t, h, p), jnp.bfloat16), jax.ShapeDtypeStruct((b, t, h), jnp.float32),
            jax.ShapeDtypeStruct((h,), jnp.float32), jax.ShapeDtypeStruct((b, t, g, n), jnp.bfloat16),
            jax.ShapeDtypeStruct((b, t, g, n), jnp.bfloat16)]

    def loss(*a):
        y = ssd(*a, state_budget_bytes=1 << 20, interpret=False, target=target)
        return jnp.sum(jnp.square(y.astype(jnp.float32)))  # needs y itself (a linear loss would DCE it)

    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    exported = export.export(jax.jit(jax.grad(loss, argnums=tuple(range(5)))), platforms=[platform],
                             disabled_checks=checks)(*args)
    text = exported.mlir_module()
    assert call in text
    for kernel in ("chunked_states", "chunked_output", "chunked_adjoint_states", "chunked_gradients"):
        assert kernel in text


def test_empty_call_returns_initial_state():
    inputs, _ = _inputs(Case(1, 3, 2, 2, 1, 3, 4), seed=0)
    cut = {k: (v[:, :0] if k in ("x", "dt", "B", "C") else v) for k, v in inputs.items()}
    y, state = ssd(cut["x"], cut["dt"], cut["A"], cut["B"], cut["C"], D=cut["D"],
                   initial_state=cut["initial_state"], return_state=True)
    assert y.shape == (1, 0, 2, 2) and rel_err(state, inputs["initial_state"]) == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(form="parallel"), "form = 'parallel': the Pallas kernels implement only 'chunked'"),
        (dict(chunk_size=0), "chunk_size = 0: must be an integer >= 1"),
        (dict(state_budget_bytes=0), "state_budget_bytes = 0"),
        (dict(target="rocm"), "target = 'rocm'"),
        (dict(interpret=False, target="cpu"), "Pallas has no CPU lowering"),
    ],
)
def test_bad_arguments(kwargs, match):
    x = jnp.zeros((1, 4, 2, 3))
    B = jnp.zeros((1, 4, 1, 5))
    with pytest.raises(ValueError, match=match):
        ssd(x, jnp.ones((1, 4, 2)), -jnp.ones((2,)), B, B, **kwargs)


def test_bad_shapes_name_the_field():
    x = jnp.zeros((1, 4, 2, 3))
    with pytest.raises(ValueError, match="groups"):
        ssd(x, jnp.ones((1, 4, 2)), -jnp.ones((2,)), jnp.zeros((1, 4, 3, 5)), jnp.zeros((1, 4, 3, 5)))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_matches_xla_chunked_form_random_shapes(seed):
    rng = np.random.default_rng(seed)
    heads = int(rng.choice([2, 4]))
    case = Case(batch=int(rng.integers(1, 3)), time=int(rng.integers(1, 40)), heads=heads,
                head_dim=int(rng.integers(1, 8)), groups=int(rng.choice(sorted({1, 2, heads}))),
                d_state=int(rng.integers(1, 8)), chunk_size=int(rng.integers(1, 48)),
                state_budget_bytes=int(rng.choice([1, 10**9])))
    _compare(case, seed)
