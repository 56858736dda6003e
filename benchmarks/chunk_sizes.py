"""Which chunk size is fastest for each chunked mixer, measured (issue 19): the numbers behind scaling/mixers/chunks.py.

    python benchmarks/chunk_sizes.py [--chunks 32 64 128] [--shapes preset quickstart] [--rounds 3] [--json PATH]

For each chunked mixer it times scaling.train's real train step (forward, backward, AdamW) at each chunk size, at
two shapes: its small preset (batch 8 x context 256, as ``scaling bench train``), and a quickstart model (d_model 16
and 32, 2 layers, batch 16 x context 128, experiments/quickstart.py's mixer settings). The chunk sizes of one
shape are timed side by side in one process, interleaved round by round (each round times every chunk once, as a
median of ``--repeats`` steps), so drift of the machine falls on all of them alike; it reports the median over
rounds and each chunk's time relative to the fastest. The step's math does not depend on the chunk (the chunked
forms are exact for any chunk), so step time is the whole comparison. Run it alone (``flock
/tmp/statescale_cpu.lock``): a few minutes per mixer on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# mixer section -> (its small preset, the quickstart's overrides for it at d_model d)
MIXERS = {
    "retention": ("power_retention_small", lambda d: {"model.pattern": "R", "model.retention.n_heads": 2,
                                                      "model.retention.n_kv_heads": 2}),
    "mamba": ("mamba2_small", lambda d: {"model.pattern": "M", "model.mamba.d_state": 16,
                                         "model.mamba.head_dim": d if d < 16 else 16}),
    "gla": ("gla_small", lambda d: {"model.pattern": "G", "model.gla.n_heads": 2}),
    "gated_delta": ("gated_delta_small", lambda d: {"model.pattern": "D", "model.gated_delta.n_heads": 2}),
    "based": ("based_small", lambda d: {"model.pattern": "B", "model.based.n_heads": 2}),
}
QUICKSTART = {"model.n_layers": 2, "train.batch_size": 16, "train.context": 128}


def _cases(shape: str, section: str) -> list[tuple[str, str, dict]]:
    """(label, config file, overrides) of one mixer at one shape."""
    from scaling import bench

    preset, quick = MIXERS[section]
    if shape == "preset":
        return [(preset, str(bench.PRESET_DIR / f"{preset}.py"), {"train.batch_size": 8, "train.context": 256})]
    return [(f"quickstart d{d}", str(bench.PRESET_DIR / "transformer_tiny.py"),
             {**QUICKSTART, "model.d_model": d, **quick(d)}) for d in (16, 32)]


def _step_fn(cfg):
    from scaling.train import init_train_state, make_steps

    graphdef, state, tx, _ = init_train_state(cfg)
    step, _ = make_steps(graphdef, tx)
    b, t = cfg.train.batch_size, cfg.train.context
    tokens = jax.random.randint(jax.random.key(0), (b, t + 1), 0, cfg.model.vocab_size)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": jnp.ones((b, t))}
    lr = np.float32(cfg.train.lr)
    params, opt = state["params"], state["opt"]
    fn = lambda: step(params, opt, batch, lr)[2]["loss"]  # noqa: E731
    jax.block_until_ready(fn())  # compile
    return fn


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(section: str, shape: str, chunks, rounds: int, repeats: int) -> list[dict]:
    from scaling import config

    rows = []
    for label, path, over in _cases(shape, section):
        fns = {c: _step_fn(config.load(path, [f"{k}={v}" for k, v in over.items()]
                                       + [f"model.{section}.chunk_size={c}"])) for c in chunks}
        per = {c: [] for c in chunks}
        for _ in range(rounds):
            for c in chunks:
                per[c].append(_median_s(fns[c], repeats))
        med = {c: statistics.median(v) for c, v in per.items()}
        best = min(med, key=med.get)
        for c in chunks:
            rows.append({"mixer": section, "shape": label, "chunk": c, "step_ms": 1e3 * med[c],
                         "rounds_ms": [1e3 * x for x in per[c]], "vs_fastest": med[c] / med[best],
                         "fastest": c == best})
        print(f"{section:12s} {label:22s} " + "  ".join(f"c{c}: {1e3 * med[c]:8.1f} ms" for c in chunks)
              + f"   fastest {best}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    chunks = sorted({r["chunk"] for r in rows})
    lines = ["| mixer | shape | " + " | ".join(f"chunk {c} (ms)" for c in chunks) + " | fastest |",
             "|---|---|" + "---:|" * len(chunks) + "---|"]
    for key in dict.fromkeys((r["mixer"], r["shape"]) for r in rows):
        got = {r["chunk"]: r for r in rows if (r["mixer"], r["shape"]) == key}
        best = next(c for c, r in got.items() if r["fastest"])
        cells = [f"{got[c]['step_ms']:.1f} ({got[c]['vs_fastest']:.2f}x)" for c in chunks]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=list(MIXERS))
    ap.add_argument("--chunks", nargs="+", type=int, default=[32, 64, 128])
    ap.add_argument("--shapes", nargs="+", default=["quickstart", "preset"], choices=["quickstart", "preset"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="steps a round, of which the median counts")
    ap.add_argument("--json", type=Path, default=Path("bench_results/chunk_sizes.json"))
    args = ap.parse_args(argv)

    from scaling.bench_util import machine_info
    from scaling.xla_env import apply_cpu_defaults

    apply_cpu_defaults()
    rows = [r for shape in args.shapes for s in args.mixers
            for r in measure(s, shape, args.chunks, args.rounds, args.repeats)]
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_info(), "backend": jax.default_backend(), "rows": rows},
                                    indent=2))
    return rows


if __name__ == "__main__":
    main()
