"""Packed runs: k runs of one shape trained together in one process, one compiled program a step for all of them.

``train_packed(cfgs, workdirs)`` trains runs whose models have one structure and whose train steps are one
(scaling.train's cached step: the same graph, optimizer constants, batch layout, microbatches and remat). They may
differ in anything that enters as a value: the seed (initial parameters and data order), the learning-rate
schedule (lr, warm-up, floor, schedule), the length (steps, tokens, a FLOP budget), the init scale and the log /
eval / checkpoint intervals (:data:`PACK_FREE`). Each run keeps its own workdir, optimizer state, data iterator,
metrics, evaluations, checkpoints and status, exactly as ``scaling.train.train`` writes them.

One step of the pack is one jitted program holding the k train steps side by side (unrolled, not ``jax.vmap``):
each run's arithmetic is the program it runs alone, so a packed run is bit-for-bit the run trained alone on CPU
(tests/test_train_pack.py, resume after kill -9 included). ``vmap`` would batch the k models' matmuls and
reductions, which changes XLA's summation order on CPU (benchmarks/pack_runs.py measures both). The runs step in
lockstep; a run that ends (its length, or a non-finite loss) leaves the pack and the others go on in a program of
k - 1 steps. Runs resumed from checkpoints at different steps pack too: each step is its own run's.

Whether packing pays depends on the shapes: benchmarks/pack_runs.py measured 1.13x over training the runs one
after another at transformer_tiny (d_model 64, batch 16, context 128) and 0.60x at the quickstart's d_model 16
(docs/performance.md). The local launcher packs only when asked (``scaling sweep --pack K``).
"""

from __future__ import annotations

import functools
import json

import jax

from scaling.train import Run, TrainResult

# Fields that runs of one pack may differ in: values fed to the step (seed, schedule, length) or host-side choices.
PACK_FREE = {
    "model": ("name", "init_std"),
    "train": ("seed", "lr", "min_lr", "min_lr_ratio", "schedule", "warmup_steps", "steps", "tokens", "log_every",
              "eval_every", "checkpoint_every", "keep_checkpoints"),
}


def pack_key(config: dict) -> str:
    """The part of a run config (its dict) that runs of one pack share: everything outside :data:`PACK_FREE`."""
    shared = {section: dict(body) if isinstance(body, dict) else body for section, body in config.items()}
    for section, free in PACK_FREE.items():
        for name in free:
            if isinstance(shared.get(section), dict):
                shared[section].pop(name, None)
    return json.dumps(shared, sort_keys=True, default=str)


@functools.lru_cache(maxsize=16)
def _packed_step(train_step, k: int):
    """One jitted program of k calls of ``train_step`` (each its own run's parameters, batch and lr), donating
    the parameters and optimizer states."""
    def step(params, opts, batches, lrs):
        outs = [train_step(p, o, b, lr) for p, o, b, lr in zip(params, opts, batches, lrs, strict=True)]
        return [x[0] for x in outs], [x[1] for x in outs], [x[2] for x in outs]

    return jax.jit(step, donate_argnums=(0, 1))


def train_packed(cfgs, workdirs, *, progress: bool = False) -> list[TrainResult]:
    """Train the runs ``cfgs`` (validated run configs) in ``workdirs`` together; each resumes from its own newest
    checkpoint. Returns their TrainResults in order. Runs that do not share one train step are refused
    (ValueError naming the first that differs) before any step."""
    if len(cfgs) != len(workdirs) or not cfgs:
        raise ValueError(f"train_packed: {len(cfgs)} configs for {len(workdirs)} workdirs")
    if len({str(w) for w in workdirs}) != len(workdirs):
        raise ValueError("train_packed: a workdir appears twice in the pack")
    keys = [pack_key(c.to_dict()) for c in cfgs]
    for i, key in enumerate(keys[1:], 1):
        if key != keys[0]:
            raise ValueError(f"train_packed: run {i} ({workdirs[i]}) differs from run 0 in more than "
                             f"{', '.join(f'{s}.{n}' for s, ns in PACK_FREE.items() for n in ns)}")
    runs: list[Run] = []
    try:
        for cfg, workdir in zip(cfgs, workdirs, strict=True):
            runs.append(Run(cfg, workdir, progress=progress))
        if any(r.train_step is not runs[0].train_step for r in runs):
            raise ValueError("train_packed: the runs' models do not share one train step (model structure)")
        active = [r for r in runs if not r.ended]
        while active:
            if len(active) == 1:  # the last one left: its own step, as alone
                active[0].step_alone()
            else:
                states = [r.state() for r in active]
                batches = [r.next_batch() for r in active]
                step = _packed_step(active[0].train_step, len(active))
                params, opts, outs = step([s[0] for s in states], [s[1] for s in states], batches,
                                          [r.lr() for r in active])
                for r, p, o, out in zip(active, params, opts, outs, strict=True):
                    r.advance(p, o, out)
            active = [r for r in active if not r.ended]
    finally:
        for r in runs:
            r.close()
    return [r.finish() for r in runs]
