"""A lever of sweep throughput, measured: the quickstart's attention train step, parallel form against the blockwise
form at small blocks (issue 19).

    taskset -c 0 python benchmarks/attention_blocks.py [--sizes d16 d32] [--blocks 32 64] [--rounds 7] [--context T]
        [--preset transformer_small]

At the quickstart's context (128 tokens) ``form="auto"`` runs the parallel form, whose [T, T] scores, causal mask
and softmax backward are most of a small model's step. The blockwise form skips the key blocks above the diagonal.
It runs only from 1,024 tokens, at 512-token blocks, so at 128 tokens it would be one block. This script
builds the quickstart's attention runs (experiments/quickstart.py), runs their real train step (scaling.train)
with each form, and times the forms interleaved, in rounds, in one process on one thread, with the sweep
workers' XLA flags. Run it alone on the machine (e.g. under ``flock /tmp/statescale_cpu.lock``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import os
import statistics
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["d16", "d32"])
    ap.add_argument("--blocks", nargs="+", type=int, default=[32, 64])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--context", type=int, default=None, help="train at this context instead (tokens a step kept)")
    ap.add_argument("--preset", default=None,
                    help="time this model preset (configs/models, batch 8 x context 256) instead of the quickstart's")
    args = ap.parse_args(argv)

    from scaling.xla_env import apply_cpu_defaults

    apply_cpu_defaults()
    os.environ["XLA_FLAGS"] += " --xla_cpu_multi_thread_eigen=false"  # one thread, as a sweep worker
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.sweep.spec import ROOT, expand, load_spec
    from scaling.train import init_train_state, make_steps

    layer = importlib.import_module("scaling.models.attention")
    op = importlib.import_module("scaling.ops.attention")
    cfgs = {}
    if args.preset:
        from scaling import config

        path = ROOT / "configs/models" / f"{args.preset}.py"
        cfgs[args.preset] = config.load(str(path), ["train.batch_size=8", "train.context=256"])
    for plan in () if args.preset else expand(load_spec(ROOT / "experiments/quickstart.py"), check_data=False):
        if plan.cfg.model.pattern == "A" and plan.size in args.sizes:
            cfgs.setdefault(plan.size, plan.cfg)

    def step(cfg, impl, block):
        cfg = copy.deepcopy(cfg)
        cfg.model.attention.impl = impl
        if args.context:  # the same tokens a step at another context
            cfg.train.batch_size = max(1, cfg.train.batch_size * cfg.train.context // args.context)
            cfg.train.context = args.context
        # the layer calls the op without block sizes: give it this block (the layer reads the name when traced)
        layer.attention = functools.partial(op.attention, block_q=block, block_k=block) if block else op.attention
        graphdef, state, tx, _ = init_train_state(cfg)
        train_step, _ = make_steps(graphdef, tx)
        b, t = cfg.train.batch_size, cfg.train.context
        tok = jax.random.randint(jax.random.key(0), (b, t + 1), 0, 200)
        batch = {"inputs": tok[:, :-1], "targets": tok[:, 1:], "loss_mask": jnp.ones((b, t))}
        f = jax.jit(lambda p, o: train_step(p, o, batch, np.float32(1e-3))[2]["loss"])
        p, o = state["params"], state["opt"]
        jax.block_until_ready(f(p, o))
        return lambda: f(p, o)

    out = {}
    for size, cfg in cfgs.items():
        ways = {("parallel", None): step(cfg, "parallel", None)}
        ways |= {("blockwise", blk): step(cfg, "blockwise", blk) for blk in args.blocks}
        layer.attention = op.attention
        times = {k: [] for k in ways}
        for _ in range(args.rounds):
            for k, fn in ways.items():
                t0 = time.perf_counter()
                for _ in range(5):
                    jax.block_until_ready(fn())
                times[k].append((time.perf_counter() - t0) / 5 * 1e3)
        ref = float(ways[("parallel", None)]())
        base = statistics.median(times[("parallel", None)])
        ctx = args.context or cfg.train.context
        print(f"{size}: d_model {cfg.model.d_model}, context {ctx}, {cfg.train.batch_size * cfg.train.context} tokens")
        for (impl, blk), v in times.items():
            ms = statistics.median(v)
            diff = abs(float(ways[(impl, blk)]()) - ref) / ref
            print(f" {impl:9s} block {blk or '-':>3}: {ms:7.2f} ms a step {base / ms:.2f}x, loss off by {diff:.1e}")
            out[f"{size}/{impl}/{blk}"] = ms
    return out


if __name__ == "__main__":
    main()
