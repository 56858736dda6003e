"""A lever of sweep throughput, measured: k runs of one shape trained together in one process (issue 19).

    python benchmarks/pack_runs.py [--preset transformer_tiny] [--k 3] [--steps 30] [--set KEY=VALUE ...]

k runs that differ only in their seed, 4 steps each from their own init and data order, three ways:
- alone: k calls of the run's own jitted train step (what k workers, or one worker in turn, do);
- unrolled: one jitted program holding the k train steps side by side;
- vmapped: ``jax.vmap`` of the train step over the k stacked models.
It reports whether each way's parameters after the 4 steps equal the runs trained alone bit for bit, and the time
of one step of all k runs (median of --steps after a warm-up), side by side in one process. Run it alone on the
machine (e.g. under ``flock /tmp/statescale_cpu.lock``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _stack(xs):
    return jax.tree.map(lambda *a: jnp.stack(a), *xs)


def _median_ms(fn, steps: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="transformer_tiny")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--set", action="append", default=["model.n_layers=2", "train.batch_size=16",
                                                       "train.context=128"])
    args = ap.parse_args(argv)

    from scaling import bench, config
    from scaling.data import make_train_iterator
    from scaling.train import init_train_state, make_steps

    cfgs = [config.load(bench.PRESET_DIR / f"{args.preset}.py", [*args.set, f"train.seed={s}"]) for s in range(args.k)]
    states, batches = [], []
    for c in cfgs:
        graphdef, state, tx, _ = init_train_state(c)
        states.append(state)
        it = make_train_iterator(c.data, batch_size=c.train.batch_size, context=c.train.context, seed=c.train.seed)
        batches.append([next(it) for _ in range(4)])
    step, _ = make_steps(graphdef, tx)
    lr = jnp.float32(1e-3)

    def alone(ps, os, bs):
        return [step(p, o, b, lr)[:2] for p, o, b in zip(ps, os, bs, strict=True)]

    unrolled = jax.jit(lambda ps, os, bs: [step(p, o, b, lr)[:2] for p, o, b in zip(ps, os, bs, strict=True)])
    vmapped = jax.jit(jax.vmap(lambda p, o, b: step(p, o, b, lr)[:2]))

    def four(fn, stacked: bool):
        ps, os = [s["params"] for s in states], [s["opt"] for s in states]
        if stacked:
            ps, os = _stack(ps), _stack(os)
        for i in range(4):
            bs = [b[i] for b in batches]
            out = fn(ps, os, _stack(bs) if stacked else bs)
            ps, os = out if stacked else ([x[0] for x in out], [x[1] for x in out])
        return [jax.tree.map(lambda a, r=r: a[r], ps) for r in range(args.k)] if stacked else ps

    ref = four(alone, False)
    equal = lambda got: all(bool(np.array_equal(np.asarray(a), np.asarray(b)))
                            for g, r in zip(got, ref, strict=True)
                            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(r), strict=True))
    result = {"preset": args.preset, "k": args.k, "set": args.set, "machine": bench.machine_info(),
              "bit_identical": {"unrolled": equal(four(unrolled, False)), "vmapped": equal(four(vmapped, True))}}
    ps, os, b0 = [s["params"] for s in states], [s["opt"] for s in states], [b[0] for b in batches]
    P, O, B = _stack(ps), _stack(os), _stack(b0)
    result["ms_per_step_of_all_k"] = {
        "alone": _median_ms(lambda: alone(ps, os, b0), args.steps),
        "unrolled": _median_ms(lambda: unrolled(ps, os, b0), args.steps),
        "vmapped": _median_ms(lambda: vmapped(P, O, B), args.steps)}
    t = result["ms_per_step_of_all_k"]
    print(f"{args.preset} x {args.k} ({', '.join(args.set)}), {jax.devices()[0].platform}:")
    for way in ("alone", "unrolled", "vmapped"):
        same = "" if way == "alone" else f", bit-identical to alone: {result['bit_identical'][way]}"
        print(f"  {way:9s} {t[way]:8.2f} ms per step of all {args.k} ({t['alone'] / t[way]:.2f}x alone){same}")
    return result


if __name__ == "__main__":
    main()
