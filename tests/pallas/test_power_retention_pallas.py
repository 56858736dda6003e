"""pallas_kernels.power_retention against scaling.ops' XLA chunked form, in Pallas interpret mode on CPU:
values, the final state and every gradient (q, k, v, log_g, initial state S and z) over p = 1..4, GQA,
ragged T, several feature tiles and recomputed segments; bf16 inputs; other backends' padding run in
interpret mode; each backend's tiling rules; lowering for Mosaic TPU and Triton without a device; errors."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from pallas_kernels import make_plan, power_retention
from pallas_kernels._config import check_rules
from scaling.ops.power_retention import RetentionState, sympow_dim
from scaling.ops.power_retention import power_retention as xla_power_retention
from tests.helpers import rel_err
from tests.ops.test_power_retention import _make_case  # the XLA tests' inputs and cotangents

TOL = 1e-4  # fp32, norm-relative, per output and per gradient; measured errors are ~1e-7
# bf16 inputs: y and dq/dk/dv come back in bf16 (relative rounding 2^-9 per element); the state is float32.
BF16_TOL = 1e-2
# XLA options that cut CPU compile time several-fold and change no semantics.
FAST_COMPILE = (
    {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
    if jax.default_backend() == "cpu"
    else None
)
_STATIC = ("p", "normalize", "chunk_size", "block_d", "state_budget_bytes", "target", "interpret")


@pytest.fixture(autouse=True, scope="module")
def _full_fp32_matmuls():
    # Both sides then run exact fp32 matmuls on any backend (TF32 / bf16 passes would dominate the error).
    with jax.default_matmul_precision("highest"):
        yield


@functools.partial(jax.jit, static_argnames=("pallas",) + _STATIC, compiler_options=FAST_COMPILE)
def _value_and_grads(args, cts, *, pallas, p, normalize, chunk_size, block_d=None, state_budget_bytes=None,
                     target=None, interpret=None):
    """(y, final state, d<y, cts>/d every input) for the Pallas kernels or the XLA chunked form."""
    if pallas:
        fn = functools.partial(power_retention, block_d=block_d, state_budget_bytes=state_budget_bytes,
                               target=target, interpret=interpret)
    else:
        fn = functools.partial(xla_power_retention, form="chunked")

    def loss(a):
        y, state = fn(a["q"], a["k"], a["v"], a["log_g"], p=p, normalize=normalize, chunk_size=chunk_size,
                      initial_state=a["state"], return_state=True)
        y32 = y.astype(jnp.float32)
        return jnp.sum(y32 * cts["y"]) + jnp.sum(state.S * cts["S"]) + jnp.sum(state.z * cts["z"]), (y, state)

    (_, (y, state)), grads = jax.value_and_grad(loss, has_aux=True)(args)
    return y, state, grads


def _errors(out, ref):
    """Norm-relative error of y, S, z and of every gradient leaf (named d<input>[i])."""
    (y, state, grads), (y_ref, state_ref, grads_ref) = out, ref
    errors = {"y": rel_err(y, y_ref), "S": rel_err(state.S, state_ref.S), "z": rel_err(state.z, state_ref.z)}
    for name, g_ref in grads_ref.items():
        if g_ref is None:
            assert grads[name] is None
            continue
        for i, (leaf, leaf_ref) in enumerate(zip(jax.tree.leaves(grads[name]), jax.tree.leaves(g_ref),
                                                 strict=True)):
            assert leaf.shape == leaf_ref.shape and np.all(np.isfinite(np.asarray(leaf, np.float32)))
            errors[f"d{name}[{i}]"] = rel_err(leaf, leaf_ref)
    return errors


def _compare(seed, *, p, normalize, chunk_size, b, T, hq, hk, d, e, gated=True, stateful=True, **kernel):
    args, cts = _make_case(seed, b=b, T=T, hq=hq, hk=hk, d=d, e=e, p=p, gated=gated, stateful=stateful)
    opts = dict(p=p, normalize=normalize)
    # chunk_size=None (the backend's default) is the kernels' own; the XLA form then uses its default.
    ref = _value_and_grads(args, cts, pallas=False, chunk_size=chunk_size or 64, **opts)
    out = _value_and_grads(args, cts, pallas=True, chunk_size=chunk_size, **opts, **kernel)
    assert out[0].shape == (b, T, hq, e) and out[0].dtype == jnp.float32
    assert out[1].S.dtype == jnp.float32 and out[1].S.shape == ref[1].S.shape
    errors = _errors(out, ref)
    assert max(errors.values()) < TOL, errors
    assert len(errors) == 3 + 4 + 2 * stateful - (not gated)  # y, S, z, dq, dk, dv, (dlog_g), (dS0, dz0)


# Across the cases: p = 1..4 with both normalisations; GQA (hq = 2 hk and 4 hk) and hq = hk; T not a multiple
# of the chunk and a chunk longer than T; gate and none; initial state and none; e != d; several feature
# tiles with a padded last tile (block_d); states kept (default budget) and recomputed per segment, with
# segments that do not divide the chunk count (state_budget_bytes).
CASES = {
    "p1-gqa-ragged": dict(p=1, normalize="rmsnorm", chunk_size=4, b=2, T=13, hq=4, hk=2, d=5, e=3),
    "p2-chunk>T-nogate": dict(p=2, normalize="sum", chunk_size=16, b=1, T=11, hq=2, hk=2, d=4, e=4,
                              gated=False, stateful=False),
    "p3-tiles-recompute": dict(p=3, normalize="rmsnorm", chunk_size=4, b=1, T=13, hq=2, hk=1, d=3, e=4,
                               block_d=4, state_budget_bytes=1),
    # D = 15 in 2 tiles of 8; a chunk's state is 2*16*3*4 = 384 bytes, so 800 bytes -> 3 segments of 2 chunks.
    "p4-gqa4-segments": dict(p=4, normalize="sum", chunk_size=4, b=1, T=18, hq=8, hk=2, d=3, e=2,
                             block_d=8, state_budget_bytes=800),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_xla_chunked_form(case):
    _compare(0, **case)


def test_segment_plan_of_the_cases():
    # The budget in the cases above really splits time as described (and the default keeps every state).
    plan = functools.partial(make_plan, scale=1.0, q_div=1, k_div=1, chunk_size=4, interpret=None)
    p4 = plan(p=4, batch=1, time=18, state_heads=2, q_per_state=4, d=3, e=3, D=15, block_d=8,
              state_budget_bytes=800)
    assert (p4.n_tiles, p4.D_pad, p4.n_chunks, p4.n_segments, p4.chunks_per_segment) == (2, 16, 5, 3, 2)
    assert not p4.store_states and p4.padded_time == 24
    p3 = plan(p=3, batch=1, time=13, state_heads=1, q_per_state=2, d=3, e=5, D=10, block_d=4,
              state_budget_bytes=1)
    assert (p3.n_tiles, p3.n_segments, p3.chunks_per_segment) == (3, 4, 1)
    p1 = plan(p=1, batch=2, time=13, state_heads=2, q_per_state=2, d=5, e=4, D=5, block_d=None,
              state_budget_bytes=None)
    assert p1.store_states and p1.n_tiles == 1 and p1.D_pad == 5


def test_bf16_inputs_against_fp32_reference():
    args, cts = _make_case(3, b=1, T=13, hq=4, hk=2, d=4, e=3, p=2)
    bf = jnp.bfloat16
    args_bf = dict(args, q=args["q"].astype(bf), k=args["k"].astype(bf), v=args["v"].astype(bf))
    # The reference sees the same (bf16-representable) values in float32.
    args_ref = dict(args_bf, q=args_bf["q"].astype(jnp.float32), k=args_bf["k"].astype(jnp.float32),
                    v=args_bf["v"].astype(jnp.float32))
    opts = dict(p=2, normalize="sum", chunk_size=4)
    out = _value_and_grads(args_bf, cts, pallas=True, **opts)
    ref = _value_and_grads(args_ref, cts, pallas=False, **opts)
    assert out[0].dtype == bf and out[2]["q"].dtype == bf
    errors = _errors(out, ref)
    # The kernels upcast in fast memory, so the float32 state matches as in fp32.
    assert errors["S"] < TOL and errors["z"] < TOL, errors
    assert max(errors.values()) < BF16_TOL, errors


@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_other_backends_padding_in_interpret_mode(target):
    # GPU rules pad d 3 -> 16, e + 1 = 4 -> 16, D = 6 -> 16 and use 64-token chunks (3 here); TPU rules use
    # 128-token chunks (2 here), 128 value lanes and a 128-row feature tile. Same values and gradients.
    case = dict(p=2, normalize="sum", chunk_size=None, b=1, T=150, hq=2, hk=1, d=3, e=3)
    _compare(1, **case, target=target, interpret=True)


@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_plans_follow_backend_tiling_rules(target):
    for p, d, e, T, chunk in itertools.product((1, 2, 3, 4), (3, 16, 64, 100), (1, 64, 128), (1, 77, 5000),
                                               (None, 1, 48, 64, 300)):
        plan = make_plan(p=p, scale=1.0, batch=2, time=T, state_heads=2, q_per_state=3, q_div=1, k_div=1,
                         d=d, e=e + 1, D=sympow_dim(d, p), chunk_size=chunk, block_d=None,
                         state_budget_bytes=None, interpret=True, backend=target)
        assert check_rules(plan) == [], (p, d, e, T, chunk)
        assert plan.d_pad >= d and plan.e_pad >= e + 1 and plan.D_pad >= sympow_dim(d, p)
        assert plan.padded_time >= T


def _export(fn, args, platform):
    # Lowering runs Pallas' Mosaic TPU / Triton lowering in Python; no device is needed. The Triton custom
    # call has no serialization guarantee, so that check is waived (nothing is serialized to disk).
    checks = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    return export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*args).mlir_module()


@pytest.mark.parametrize("target, platform, call", [("tpu", "tpu", "tpu_custom_call"),
                                                    ("gpu", "cuda", "__gpu$xla.gpu.triton")])
def test_forward_and_backward_lower_for_tpu_and_gpu(target, platform, call):
    # bf16, GQA with 3 q heads per kv head, ragged T, two feature tiles, and a budget that forces segments.
    shapes = [(2, 300, 6, 16), (2, 300, 2, 16), (2, 300, 2, 32)]
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in shapes] + [
        jax.ShapeDtypeStruct((2, 300, 2), jnp.float32)]

    def loss(q, k, v, log_g):
        y = power_retention(q, k, v, log_g, p=2, block_d=64, state_budget_bytes=1 << 20, interpret=False,
                            target=target)
        return jnp.sum(y.astype(jnp.float32))

    text = _export(jax.grad(loss, argnums=(0, 1, 2, 3)), args, platform)
    assert call in text
    for kernel in ("chunked_states", "chunked_output", "chunked_adjoint_states", "chunked_gradients"):
        assert kernel in text


def test_state_chaining_and_empty_call():
    args, _ = _make_case(2, b=1, T=14, hq=2, hk=1, d=3, e=3, p=2)
    call = jax.jit(functools.partial(power_retention, p=2, chunk_size=4, return_state=True),
                   compiler_options=FAST_COMPILE)
    q, k, v, lg, s0 = args["q"], args["k"], args["v"], args["log_g"], args["state"]
    y_all, s_all = call(q, k, v, lg, initial_state=s0)
    y1, s1 = call(q[:, :5], k[:, :5], v[:, :5], lg[:, :5], initial_state=s0)
    y2, s2 = call(q[:, 5:], k[:, 5:], v[:, 5:], lg[:, 5:], initial_state=s1)
    assert isinstance(s2, RetentionState)
    assert rel_err(jnp.concatenate([y1, y2], axis=1), y_all) < TOL
    assert rel_err(s2.S, s_all.S) < TOL and rel_err(s2.z, s_all.z) < TOL
    y0, s_empty = power_retention(q[:, :0], k[:, :0], v[:, :0], lg[:, :0], initial_state=s0, return_state=True)
    assert y0.shape == (1, 0, 2, 3) and rel_err(s_empty.S, s0.S) == 0


def test_long_context_strong_decay_stays_finite():
    # Summed log gates reach -8000 over the call; only in-chunk sums (>= -64 * 4) are ever exponentiated.
    args, _ = _make_case(5, b=1, T=2048, hq=2, hk=1, d=4, e=4, p=2, stateful=False)
    log_g = jnp.asarray(np.random.default_rng(5).uniform(-4.0, -0.01, (1, 2048, 1)), jnp.float32)
    opts = dict(p=2, chunk_size=64, return_state=True)
    y, state = jax.jit(functools.partial(power_retention, **opts))(args["q"], args["k"], args["v"], log_g)
    y_ref, state_ref = jax.jit(functools.partial(xla_power_retention, **opts))(args["q"], args["k"], args["v"],
                                                                               log_g)
    assert np.all(np.isfinite(np.asarray(y))) and np.all(np.isfinite(np.asarray(state.S)))
    assert rel_err(y, y_ref) < TOL and rel_err(state.S, state_ref.S) < TOL


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(form="recurrent"), "form = 'recurrent': the Pallas kernels implement only 'chunked'"),
        (dict(chunk_size=0), "chunk_size = 0: must be an integer >= 1"),
        (dict(block_d=2.5), "block_d = 2.5: must be an integer >= 1"),
        (dict(state_budget_bytes=-1), "state_budget_bytes = -1"),
        (dict(interpret="yes"), "interpret = 'yes'"),
        (dict(target="cuda"), "target = 'cuda': must be one of 'cpu', 'gpu', 'tpu'"),
        (dict(p=5), "p = 5: must be one of 1, 2, 3, 4"),
        (dict(p=3), "odd power"),
        (dict(interpret=False, target="cpu"), "Pallas has no CPU lowering"),
    ],
)
def test_bad_arguments(kwargs, match):
    q = jnp.zeros((1, 4, 2, 3))
    with pytest.raises(ValueError, match=match):
        power_retention(q, q, q, **kwargs)


def test_tpu_plan_refuses_a_state_beyond_vmem():
    # p = 4, d = 64: D = 766,480 features; the per-chunk state alone is hundreds of MiB.
    q = jnp.zeros((1, 8, 1, 64))
    with pytest.raises(ValueError, match="MiB of VMEM"):
        power_retention(q, q, q, p=4, target="tpu", interpret=False)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_matches_xla_chunked_form_random_shapes(seed):
    # d >= 2: with d = 1 and normalize="sum", y does not depend on q and dq is pure cancellation.
    rng = np.random.default_rng(seed)
    p = int(rng.integers(1, 5))
    hk = int(rng.integers(1, 3))
    case = dict(p=p, normalize="rmsnorm" if p % 2 else str(rng.choice(["sum", "rmsnorm"])),
                chunk_size=int(rng.choice([1, 3, 8, 64])), b=int(rng.integers(1, 3)), T=int(rng.integers(1, 40)),
                hq=hk * int(rng.integers(1, 4)), hk=hk, d=int(rng.integers(2, 6 if p < 4 else 4)),
                e=int(rng.integers(2, 7)), gated=bool(rng.integers(2)), stateful=bool(rng.integers(2)),
                block_d=int(rng.choice([4, 16, 128])), state_budget_bytes=int(rng.choice([1, 10**4, 10**9])))
    _compare(seed, **case)
