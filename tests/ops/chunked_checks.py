"""Checks shared by the tests of the chunked linear-RNN ops with a [d_k, d_v] matrix state (GLA, Gated DeltaNet)
and Based: the norm-relative comparison, every form against the reference (values, gradients, state), state
chaining, and packed documents against each document run alone. Each test file keeps its own inputs, float64
recurrence, numerical-range and argument tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

FORMS = ("parallel", "chunked", "recurrent")
RTOL = 1e-5  # norm-relative, fp32 against fp32 (or float64) for every output: o, state and every gradient


def assert_close(actual, expected, name, rtol=RTOL, norm=None):
    """Norm-relative error; ``norm`` (default: the norm of ``expected``) is the scale errors are measured in."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: non-finite values"
    err = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected) if norm is None else norm, 1e-30)
    assert err <= rtol, f"{name}: norm-relative error {err:.3e} > {rtol:.0e}"


def value_and_grads(args, fn, inputs, w_o, w_S):
    """(o, final state, {arg: gradient}) of sum(o * w_o) + sum(S * w_S) for an op ``fn(*args[:-1],
    initial_state=args[-1])``; ``args`` name the inputs in the op's order, the initial state last."""
    n = len(args) - 1

    def loss(*xs):
        o, S = fn(*xs[:n], initial_state=xs[n], return_state=True)
        return jnp.sum(o * w_o) + jnp.sum(S * w_S), (o, S)

    (_, (o, S)), grads = jax.value_and_grad(loss, argnums=tuple(range(n + 1)), has_aux=True)(*(inputs[a] for a in args))
    return o, S, dict(zip(args, grads, strict=True))


@functools.cache
def jitted(op, form, chunk_size=64):
    return jax.jit(functools.partial(op, form=form, chunk_size=chunk_size, return_state=True))


def check_forms(op, reference, make_inputs, numpy_recurrence, args, b, t, h, dk, dv, chunk, seed):
    """The reference against the float64 recurrence, then every form against the reference: o, the final state
    and the gradient of every input."""
    inputs = make_inputs(b, t, h, dk, dv, seed)
    rng = np.random.default_rng(seed + 1)
    w_o = rng.normal(size=(b, t, h, dv)).astype(np.float32)
    w_S = rng.normal(size=(b, h, dk, dv)).astype(np.float32)
    o_ref, S_ref, g_ref = jax.jit(functools.partial(value_and_grads, args, reference))(inputs, w_o, w_S)
    o_np, S_np = numpy_recurrence(**inputs)
    assert_close(o_ref, o_np, "reference o vs float64 recurrence")
    assert_close(S_ref, S_np, "reference state vs float64 recurrence")
    for form in FORMS:
        fn = functools.partial(op, form=form, chunk_size=chunk)
        o, S, grads = jax.jit(functools.partial(value_and_grads, args, fn))(inputs, w_o, w_S)
        assert_close(o, o_ref, f"{form} o")
        assert_close(S, S_ref, f"{form} state")
        for name in args:
            assert_close(grads[name], g_ref[name], f"{form} d/d{name}")


def time_slice(inputs, start, stop, state_args=("initial_state",)):
    return {a: x if a in state_args else x[:, start:stop] for a, x in inputs.items()}


def check_prefix_then_suffix(op, inputs, form):
    """Tokens 0..11 then 11..end from the first call's state equal one call over all of them."""
    t = inputs["q"].shape[1]
    o_whole, S_whole = jitted(op, form, 8)(**inputs)
    o_a, S_a = jitted(op, form, 8)(**time_slice(inputs, 0, 11))  # 11: not a chunk boundary
    o_b, S_b = jitted(op, form, 8)(**dict(time_slice(inputs, 11, t), initial_state=S_a))
    assert_close(jnp.concatenate([o_a, o_b], axis=1), o_whole, f"{form} o")
    assert_close(S_b, S_whole, f"{form} state")


def check_chunked_prefill_then_recurrent_decode(op, inputs, prefill=13):
    t = inputs["q"].shape[1]
    o_whole, S_whole = jitted(op, "chunked", 8)(**inputs)
    o, S = jitted(op, "chunked", 8)(**time_slice(inputs, 0, prefill))
    outs = [o]
    for i in range(prefill, t):
        o, S = jitted(op, "recurrent")(**dict(time_slice(inputs, i, i + 1), initial_state=S))
        outs.append(o)
    assert_close(jnp.concatenate(outs, axis=1), o_whole, "decode o")
    assert_close(S, S_whole, "decode state")


# Packed rows: documents of lengths (row 0) 5, 9, 1, 8 and (row 1) 9, 5, 9; ids 1, 2, ... (0 is padding, a run too).
LAYOUT = ((5, 9, 1, 8), (9, 5, 9))


def segments(layout, t):
    seg = np.zeros((len(layout), t), np.int32)
    for row, lengths in enumerate(layout):
        start = 0
        for doc, n in enumerate(lengths):
            seg[row, start:start + n] = doc + 1
            start += n
    return seg


def documents(layout):
    """(row, start, length, first, last) of every document of the layout."""
    out = []
    for row, lengths in enumerate(layout):
        starts = np.cumsum((0,) + tuple(lengths))
        out += [(row, int(starts[d]), n, d == 0, d == len(lengths) - 1) for d, n in enumerate(lengths)]
    return out


def _same_final_state(S, S_alone, row, d, n, where):
    assert_close(S[row], S_alone[d], f"{where} final state")


def check_packed_documents(vg, fn, inputs, w, time_args, state_args, form, final_state=_same_final_state):
    """``vg(fn, inputs, *w)`` -> (o, state, grads) over rows packed as LAYOUT equals each document alone: one row
    per document, from its first token, the initial state only for a row's first document, then tokens of zeros
    (the op's no-op inputs). ``w[0]`` weighs o per token, the rest weigh the state. ``final_state(S, S_alone, row,
    d, n, where)`` compares a row's final state with its last document's."""
    t = inputs["q"].shape[1]
    o, S, grads = jax.jit(functools.partial(vg, functools.partial(fn, segment_ids=segments(LAYOUT, t))))(inputs, *w)
    docs = documents(LAYOUT)
    alone = {a: np.zeros((len(docs),) + x.shape[1:], x.dtype) for a, x in inputs.items()}
    w_alone = [np.zeros((len(docs),) + x.shape[1:], x.dtype) for x in w]
    for d, (row, start, n, first, last) in enumerate(docs):
        for a in time_args:
            alone[a][d, :n] = inputs[a][row, start:start + n]
        w_alone[0][d, :n] = w[0][row, start:start + n]
        for a in state_args if first else ():
            alone[a][d] = inputs[a][row]
        for w_a, w_p in zip(w_alone[1:], w[1:], strict=True):
            w_a[d] = w_p[row] * last
    o_a, S_a, g_a = jax.jit(functools.partial(vg, fn))(alone, *w_alone)
    for d, (row, start, n, first, last) in enumerate(docs):
        where = f"{form} row {row} document at {start}"
        assert_close(o[row, start:start + n], o_a[d, :n], f"{where} o")
        for a in time_args:
            # A one-token document's gate gradient is 0 up to round-off: measured against the whole row's.
            assert_close(grads[a][row, start:start + n], g_a[a][d, :n], f"{where} d/d{a}",
                         norm=np.linalg.norm(grads[a][row]))
        for a in state_args if first else ():
            assert_close(grads[a][row], g_a[a][d], f"{where} d/d{a}")
        if last:
            final_state(S, S_a, row, d, n, where)
