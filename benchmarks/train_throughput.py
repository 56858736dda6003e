"""Training throughput (tokens/s) of each model preset on this machine.

    python benchmarks/train_throughput.py [--presets transformer_tiny ...] [--steps 5] [--json out.json]

Builds the real train step of scaling.train (AdamW, clipping, the model's chunked forms), runs it on
synthetic tokens after one warm-up step, and reports the median step time, tokens/s and achieved
FLOP/s from the accounting (3 x forward FLOPs per token).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from scaling import accounting, config
from scaling.bench import median_time
from scaling.train import init_train_state, make_steps

ROOT = Path(__file__).parents[1]


def measure(preset: str, batch: int, context: int, steps: int) -> dict:
    cfg = config.load(ROOT / "configs/models" / f"{preset}.py",
                      [f"train.batch_size={batch}", f"train.context={context}"])
    graphdef, state, tx, _ = init_train_state(cfg)
    train_step, _ = make_steps(graphdef, tx)
    key = jax.random.key(0)
    tokens = jax.random.randint(key, (batch, context + 1), 0, 256)
    b = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": jnp.ones((batch, context))}
    params, opt = state["params"], state["opt"]
    # the same parameters every step: a fixed-cost step, timed like every other harness number
    dt = median_time(lambda p, o: train_step(p, o, b)[2]["loss"], params, opt, repeats=steps)
    tps = batch * context / dt
    return {"preset": preset, "batch": batch, "context": context, "step_s": dt, "tokens_per_s": tps,
            "params": accounting.params(cfg)["total"],
            "gflops_per_s": tps * accounting.train_flops_per_token(cfg, context) / 1e9}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+",
                    default=sorted(p.stem for p in (ROOT / "configs/models").glob("*.py")))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    rows = []
    for preset in a.presets:
        batch = 16 if preset.endswith("_tiny") else 4
        row = measure(preset, batch, a.context, a.steps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| preset | params | batch x context | step (s) | tokens/s | achieved GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['params']:,} | {r['batch']} x {r['context']} | {r['step_s']:.3f} | "
              f"{r['tokens_per_s']:,.0f} | {r['gflops_per_s']:.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "jax": jax.__version__}, indent=2))


if __name__ == "__main__":
    main()
