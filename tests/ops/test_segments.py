"""Packed rows in scaling.ops: with segment_ids, every form of attention, power retention and SSD gives each
document (a run of equal ids, padding included) the outputs, final state and gradients of that document run
alone; strong decays stay finite; the Pallas backend falls back to XLA when given segments."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pallas_kernels
from scaling.models import kernels
from scaling.ops import segments
from scaling.ops.attention import attention, init_kv_cache
from scaling.ops.power_retention import RetentionState, power_retention
from scaling.ops.ssd import ssd
from tests.helpers import rel_err

T = 16  # tokens per packed row
ROWS = 2  # packed rows per call
MAX_DOCS = 5  # documents per row, plus a padding run when they do not fill it
REF_ROWS = ROWS * (MAX_DOCS + 1)  # one reference row per run: a fixed shape, compiled once
CHUNK = 4  # small chunks, so documents straddle chunk boundaries
TOL = 1e-5  # norm-relative; the packed and the alone calls differ by fp32 summation order only
# Compiling the gradients dominates these tests' time on CPU; XLA's lowest optimisation level halves it.
FAST_COMPILE = ({"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
                if jax.default_backend() == "cpu" else None)


@pytest.fixture(autouse=True, scope="module")
def _full_precision_matmuls():
    with jax.default_matmul_precision("float32"):
        yield


@st.composite
def layouts(draw):
    """Document lengths of each packed row: 1..9 tokens, at most MAX_DOCS, the rest of the row padding."""
    rows = []
    for _ in range(ROWS):
        lengths, total = [], 0
        for n in draw(st.lists(st.integers(1, 9), min_size=1, max_size=MAX_DOCS)):
            n = min(n, T - total)
            if n:
                lengths.append(n)
                total += n
        rows.append(tuple(lengths))
    return tuple(rows)


def segment_ids(layout) -> np.ndarray:
    """[ROWS, T] int32: documents 1, 2, ... then padding 0."""
    seg = np.zeros((len(layout), T), np.int32)
    for b, lengths in enumerate(layout):
        seg[b, : sum(lengths)] = np.repeat(np.arange(1, len(lengths) + 1), lengths)
    return seg


def runs(seg: np.ndarray) -> list[tuple[int, int, int, bool, bool]]:
    """(row, start, length, first run of its row, last run of its row) of every run of equal ids."""
    out = []
    for b, row in enumerate(seg):
        starts = [0] + [t for t in range(1, len(row)) if row[t] != row[t - 1]]
        ends = starts[1:] + [len(row)]
        out += [(b, s, e - s, i == 0, i == len(starts) - 1) for i, (s, e) in enumerate(zip(starts, ends, strict=True))]
    return out


def unpack(x, layout_runs):
    """x [ROWS, T, ...] -> [REF_ROWS, T, ...]: each run at the start of its own row, zeros after it."""
    x = np.asarray(x)
    out = np.zeros((REF_ROWS,) + x.shape[1:], x.dtype)
    for r, (b, s, n, _, _) in enumerate(layout_runs):
        out[r, :n] = x[b, s: s + n]
    return out


def unpack_state(state, layout_runs, on="first"):
    """States [ROWS, ...] -> [REF_ROWS, ...]: a row's state goes to the reference row of its first (or last) run
    and the other rows get zeros."""
    which = 3 if on == "first" else 4

    def one(x):
        x = np.asarray(x)
        out = np.zeros((REF_ROWS,) + x.shape[1:], x.dtype)
        for r, run in enumerate(layout_runs):
            if run[which]:
                out[r] = x[run[0]]
        return out

    return jax.tree.map(one, state)


def last_run_rows(state_ref, layout_runs):
    """The reference state [REF_ROWS, ...] of each packed row's last run -> [ROWS, ...]."""
    rows = [r for r, (_, _, _, _, last) in enumerate(layout_runs) if last]
    return jax.tree.map(lambda x: np.asarray(x)[rows], state_ref)


def run_mask(layout_runs):
    """[REF_ROWS, T] float32: 1 on each reference row's document, 0 on the zero filler after it."""
    m = np.zeros((REF_ROWS, T), np.float32)
    for r, (_, _, n, _, _) in enumerate(layout_runs):
        m[r, :n] = 1
    return m


def assert_close(actual, expected, name, tol=TOL):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{name}: non-finite values"
    err = rel_err(actual, expected)
    assert err <= tol, f"{name}: norm-relative error {err:.2e} > {tol:.0e}"


def value_and_grads(call, time_args, shared, state0, w_y, w_state, seg):
    """y, final state and the gradients of <y, w_y> + <state, w_state> w.r.t. (time_args, shared, state0)."""
    def loss(time_args, shared, state0):
        y, state = call(time_args, shared, state0, seg)
        tie = sum(jnp.sum(s * w) for s, w in zip(jax.tree.leaves(state), jax.tree.leaves(w_state), strict=True))
        return jnp.sum(y * w_y) + tie, (y, state)

    (_, (y, state)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(time_args, shared, state0)
    return y, state, grads


@functools.cache
def _jitted(call):
    # One compiled function per call (and argument structure), shared by the hypothesis examples.
    return jax.jit(functools.partial(value_and_grads, call), compiler_options=FAST_COMPILE)


def check_packed_equals_alone(call, time_args, shared, state0, layout, seed):
    """The packed call (segment_ids) against the same call without segments on one run per row."""
    seg = segment_ids(layout)
    layout_runs = runs(seg)
    rng = np.random.default_rng(seed + 1)
    y_shape = jax.eval_shape(lambda: call(time_args, shared, state0, seg)[0]).shape
    w_y = rng.normal(size=y_shape).astype(np.float32)
    w_state = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), state0)

    packed = _jitted(call)
    y, state, (g_time, g_shared, g_state) = packed(time_args, shared, state0, w_y, w_state, seg)

    # Alone: each run at the start of a row of zeros (causal: the filler after it changes nothing before it),
    # the row's initial state on its first run, the state's weight on its last.
    ref_time = tuple(unpack(x, layout_runs) for x in time_args)
    y_r, state_r, (g_time_r, g_shared_r, g_state_r) = packed(
        ref_time, shared, unpack_state(state0, layout_runs), unpack(w_y, layout_runs),
        unpack_state(w_state, layout_runs, on="last"), None)

    mask = run_mask(layout_runs)
    def on_runs(x):
        return unpack(x, layout_runs) * mask.reshape(mask.shape + (1,) * (np.ndim(x) - 2))
    def ref_on_runs(x):
        return np.asarray(x) * mask.reshape(mask.shape + (1,) * (np.ndim(x) - 2))

    assert_close(on_runs(y), ref_on_runs(y_r), "y")
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(last_run_rows(state_r, layout_runs)), strict=True):
        assert_close(a, b, "final state")
    for i, (a, b) in enumerate(zip(g_time, g_time_r, strict=True)):
        assert_close(on_runs(a), ref_on_runs(b), f"d/d time arg {i}")
    for i, (a, b) in enumerate(zip(g_shared, g_shared_r, strict=True)):
        assert_close(a, b, f"d/d shared arg {i}")
    firsts = [r for r, (_, _, _, first, _) in enumerate(layout_runs) if first]
    for a, b in zip(jax.tree.leaves(g_state), jax.tree.leaves(g_state_r), strict=True):
        assert_close(a, np.asarray(b)[firsts], "d/d initial state")


# Pinned layouts: length-1 documents at the start, middle and end; documents straddling chunks of 4;
# a row that is one document (no boundary); a row ending in padding.
PINNED = [((1, 4, 1, 7, 3), (5, 6)), ((16,), (3, 1, 1, 9)), ((9, 6, 1), (2, 2, 2, 2))]


def _ssd_inputs(seed, strong=False):
    rng = np.random.default_rng(seed)
    h, p, g, n = 4, 3, 2, 5
    f32 = np.float32
    dt_hi, a_hi = (8.0, 30.0) if strong else (1.0, 2.0)
    time_args = (rng.normal(size=(ROWS, T, h, p)).astype(f32), rng.uniform(0.05, dt_hi, (ROWS, T, h)).astype(f32),
                 rng.normal(size=(ROWS, T, g, n)).astype(f32), rng.normal(size=(ROWS, T, g, n)).astype(f32))
    shared = (-rng.uniform(0.1, a_hi, (h,)).astype(f32), rng.normal(size=(h,)).astype(f32))
    return time_args, shared, rng.normal(size=(ROWS, h, p, n)).astype(f32)


@functools.cache
def _ssd_call(form):
    def call(time_args, shared, state0, seg):
        x, dt, B, C = time_args
        A, D = shared
        return ssd(x, dt, A, B, C, D=D, chunk_size=CHUNK, form=form, initial_state=state0, return_state=True,
                   segment_ids=seg)
    return call


@settings(max_examples=3, deadline=None, derandomize=True, database=None)
@given(layout=layouts(), seed=st.integers(0, 2**16))
@example(layout=PINNED[0], seed=0)
@example(layout=PINNED[1], seed=1)
@example(layout=PINNED[2], seed=2)
def test_ssd_packed_equals_alone(layout, seed):
    time_args, shared, state0 = _ssd_inputs(seed)
    for form in ("chunked", "parallel", "recurrent"):
        check_packed_equals_alone(_ssd_call(form), time_args, shared, state0, layout, seed)


def _retention_inputs(seed, gate=True, strong=False):
    rng = np.random.default_rng(seed)
    hq, hk, d, e = 4, 2, 4, 3
    f32 = np.float32
    time_args = (rng.normal(size=(ROWS, T, hq, d)).astype(f32), rng.normal(size=(ROWS, T, hk, d)).astype(f32),
                 rng.normal(size=(ROWS, T, hk, e)).astype(f32))
    if gate:
        lo = 20.0 if strong else 0.5
        time_args += (-rng.uniform(0.0, lo, (ROWS, T, hk)).astype(f32),)
    D = 10  # sympow_dim(4, 2)
    state0 = RetentionState(rng.normal(size=(ROWS, hk, D, e)).astype(f32) ** 2 / D,
                            rng.uniform(0.5, 1.0, (ROWS, hk, D)).astype(f32))
    return time_args, (), state0


@functools.cache
def _retention_call(form):
    def call(time_args, shared, state0, seg):
        q, k, v, *log_g = time_args
        return power_retention(q, k, v, log_g[0] if log_g else None, p=2, chunk_size=CHUNK, form=form,
                               initial_state=state0, return_state=True, segment_ids=seg)
    return call


@settings(max_examples=3, deadline=None, derandomize=True, database=None)
@given(layout=layouts(), seed=st.integers(0, 2**16), gate=st.booleans())
@example(layout=PINNED[0], seed=0, gate=True)
@example(layout=PINNED[1], seed=1, gate=False)
@example(layout=PINNED[2], seed=2, gate=True)
def test_power_retention_packed_equals_alone(layout, seed, gate):
    time_args, shared, state0 = _retention_inputs(seed, gate)
    for form in ("chunked", "parallel", "recurrent"):
        check_packed_equals_alone(_retention_call(form), time_args, shared, state0, layout, seed)


def test_strong_decays_stay_finite_at_boundaries():
    """Log decays of -100 and below a step (exp underflows to 0) next to document starts: values and
    gradients finite and equal to each document alone."""
    time_args, shared, state0 = _ssd_inputs(7, strong=True)
    check_packed_equals_alone(_ssd_call("chunked"), time_args, shared, state0, PINNED[0], 7)
    time_args, shared, state0 = _retention_inputs(8, gate=True, strong=True)
    check_packed_equals_alone(_retention_call("chunked"), time_args, shared, state0, PINNED[0], 8)


def _attention_inputs(seed):
    rng = np.random.default_rng(seed)
    hq, hk, d = 4, 2, 4
    f32 = np.float32
    return (rng.normal(size=(ROWS, T, hq, d)).astype(f32), rng.normal(size=(ROWS, T, hk, d)).astype(f32),
            rng.normal(size=(ROWS, T, hk, d)).astype(f32))


@functools.cache
def _attention_call(window):
    def call(time_args, shared, state0, seg):
        return attention(*time_args, window=window, segment_ids=seg), state0
    return call


@settings(max_examples=3, deadline=None, derandomize=True, database=None)
@given(layout=layouts(), seed=st.integers(0, 2**16), window=st.sampled_from([None, 3]))
@example(layout=PINNED[0], seed=0, window=None)
@example(layout=PINNED[1], seed=1, window=3)
def test_attention_packed_equals_alone(layout, seed, window):
    check_packed_equals_alone(_attention_call(window), _attention_inputs(seed), (), (), layout, seed)


@pytest.mark.parametrize("form", ["parallel", "recurrent"])
@pytest.mark.parametrize("window", [None, 4])
def test_attention_with_a_cache_continues_the_first_document_only(form, window):
    """After a prefill of 5 tokens, the call's first document sees the cache; later documents do not."""
    q, k, v = _attention_inputs(3)
    layout = PINNED[0]
    seg = segment_ids(layout)
    cache = init_kv_cache(ROWS, 32, 2, 4, window=window)
    rng = np.random.default_rng(4)
    prev = [rng.normal(size=x.shape).astype(np.float32)[:, :5] for x in (q, k, v)]
    attend = jax.jit(functools.partial(attention, window=window), static_argnames=("form", "return_state"),
                     compiler_options=FAST_COMPILE)
    _, cache = attend(*prev, initial_state=cache, return_state=True)
    y = attend(q, k, v, form=form, initial_state=cache, segment_ids=seg)
    y_first = attend(q, k, v, form=form, initial_state=cache)  # causal: valid on the first document
    layout_runs = runs(seg)
    y_alone = np.asarray(attend(*(unpack(x, layout_runs) for x in (q, k, v))))
    for r, (b, s, n, first, _) in enumerate(layout_runs):
        want = np.asarray(y_first)[b, :n] if first else y_alone[r, :n]
        assert_close(np.asarray(y)[b, s: s + n], want, f"run {r} (row {b}, start {s})")


def test_run_helpers():
    seg = jnp.array([[1, 1, 2, 2, 2, 3, 0, 0], [4, 1, 1, 1, 1, 1, 1, 2]])
    np.testing.assert_array_equal(segments.run_index(seg), [[0, 0, 1, 1, 1, 2, 3, 3], [0, 1, 1, 1, 1, 1, 1, 2]])
    np.testing.assert_array_equal(segments.positions_in_document(seg),
                                  [[0, 1, 0, 1, 2, 0, 0, 1], [0, 0, 1, 2, 3, 4, 5, 0]])
    m = segments.chunk_masks(seg, 3, 3)  # chunks of 3, the last padded by one token
    np.testing.assert_array_equal(m.through, [[False, False, False], [False, True, False]])
    np.testing.assert_array_equal(m.from_start[0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(m.to_end[0], [[0, 0, 1], [0, 0, 1], [1, 1, 1]])
    np.testing.assert_array_equal(m.same[1, 0], [[1, 0, 0], [0, 1, 1], [0, 1, 1]])
    with pytest.raises(ValueError, match="segment_ids must be an integer"):
        ssd(*[np.zeros(s, np.float32) for s in [(1, 4, 2, 2), (1, 4, 2), (2,), (1, 4, 1, 2), (1, 4, 1, 2)]],
            segment_ids=np.zeros((1, 5), np.int32))


@pytest.mark.parametrize("name", ["ssd", "power_retention"])
def test_pallas_backend_falls_back_to_xla_with_segments(name, monkeypatch):
    """The kernels take no segments: with segment_ids, backend="pallas" runs the XLA chunked form."""
    def refuse(*args, **kwargs):
        raise AssertionError("the Pallas kernel was called")

    monkeypatch.setattr(pallas_kernels, name, refuse)
    seg = segment_ids(PINNED[0])
    if name == "ssd":
        (x, dt, B, C), (A, D), h0 = _ssd_inputs(5)
        def fn(seg, backend):
            return kernels.ssd(x, dt, A, B, C, D=D, chunk_size=CHUNK, initial_state=h0, return_state=True,
                               backend=backend, segment_ids=seg)
    else:
        (q, k, v, lg), _, s0 = _retention_inputs(5)
        def fn(seg, backend):
            return kernels.power_retention(q, k, v, lg, chunk_size=CHUNK, initial_state=s0, return_state=True,
                                           backend=backend, segment_ids=seg)
    fn = jax.jit(fn, static_argnames="backend", compiler_options=FAST_COMPILE)
    got = fn(seg, backend="pallas")
    want = fn(seg, backend="xla")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AssertionError, match="Pallas kernel was called"):
        fn(None, backend="pallas")  # without segments the kernel runs
