"""Synthetic sweeps for tests and demos: a sweep.db whose losses follow known laws, written through the store's own
API with no model trained. A test fixture (moved here from scaling.analysis.report), not library code."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SYNTHETIC_LAW", "SYNTHETIC_SIZES", "SYNTHETIC_VARIANTS", "synthetic_law_loss", "synthetic_sweep"]


SYNTHETIC_LAW: dict[str, Any] = {
    # L = E + A/N^alpha + B/D^beta + B_f/S^gamma_f + K/T^delta  (nats/token); N non-embedding params, D tokens,
    # S state elements per sequence, T context. Chinchilla's own E, A, B, alpha, beta (Hoffmann et al. 2022).
    "E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28,
    "state": {"attention": (5.0, 0.2), "retention": (20.0, 0.25), "mamba": (30.0, 0.3)},
    "K": 20.0, "delta": 0.5,
}

# Model sizes (d_model, n_layers): about 12 d^3 / 64 non-embedding parameters, 0.6M to 200M.
SYNTHETIC_SIZES = ((160, 2), (192, 3), (256, 4), (320, 5), (384, 6), (512, 8), (640, 10), (768, 12), (1024, 16))
# Variants: family, pattern, and the per-layer state as a function of (d_model, context).
SYNTHETIC_VARIANTS: dict[str, tuple[str, str, Callable[[int, int], float]]] = {
    "attention": ("attention", "A", lambda d, T: 2 * T * d),
    "retention-p2-hd16": ("retention", "R", lambda d, T: (d // 16) * 136 * 17),
    "retention-p2-hd32": ("retention", "R", lambda d, T: (d // 32) * 528 * 33),
    "retention-p4-hd16": ("retention", "R", lambda d, T: (d // 16) * 3876 * 17),
    "mamba-d16": ("mamba", "M", lambda d, T: 2 * d * 16 + 3 * (2 * d + 32)),
    "mamba-d64": ("mamba", "M", lambda d, T: 2 * d * 64 + 3 * (2 * d + 128)),
    "mamba-d256": ("mamba", "M", lambda d, T: 2 * d * 256 + 3 * (2 * d + 512)),
}


def synthetic_law_loss(N, D, S, T, family: str, law: dict[str, Any] = SYNTHETIC_LAW) -> np.ndarray:
    """Loss (nats/token) of the synthetic law at N params, D tokens, S state elements, T context."""
    B_f, gamma = law["state"][family]
    return (law["E"] + law["A"] / np.asarray(N, float) ** law["alpha"] + law["B"] / np.asarray(D, float) ** law["beta"]
            + B_f / np.asarray(S, float) ** gamma + law["K"] / np.asarray(T, float) ** law["delta"])


def synthetic_sweep(sweep_dir: str | Path, *, variants: Sequence[str] | None = None,
                    sizes: Sequence[tuple[int, int]] = SYNTHETIC_SIZES, budgets: Sequence[float] = (1e15, 1e16, 1e17),
                    contexts: Sequence[int] = (512,), ratio_range: tuple[float, float] = (1.0, 400.0),
                    state_flops: float = 4.0, tokens_per_step: int = 65536, curve_points: int = 12,
                    noise: float = 0.003, seed: int = 0, law: dict[str, Any] = SYNTHETIC_LAW,
                    name: str = "synthetic") -> Path:
    """Write ``<sweep_dir>/sweep.db`` for a sweep whose losses follow ``law`` exactly (times log-normal noise of
    relative size ``noise``), through the store's own API. No model is trained. Returns the sweep directory.

    Each (variant, size, context, budget) is a done run when its tokens-per-parameter ratio lies in
    ``ratio_range`` (the isoFLOP mode of a sweep spec). Costs: 2N forward FLOPs per token plus, for attention,
    the score terms 4 n_layers T d_model, for the recurrent mixers ``state_flops`` per state element (reading
    and updating the state; 0 makes C = 6ND exactly); training 3x. Tokens: whole steps of ``tokens_per_step`` (batch =
    tokens_per_step / context). Curves: ``curve_points`` log-spaced steps whose train and validation losses follow
    the law at the tokens seen so far (a run stopped there would have that loss), each with its own noise.
    """
    from scaling.sweep.store import Store, owner_token

    variants = list(SYNTHETIC_VARIANTS) if variants is None else list(variants)
    unknown = [v for v in variants if v not in SYNTHETIC_VARIANTS]
    if unknown:
        raise ValueError(f"variants: {unknown} unknown; choose from {', '.join(SYNTHETIC_VARIANTS)}")
    rng = np.random.default_rng(seed)
    multi_ctx = len(contexts) > 1
    plans = []
    for variant in variants:
        family, pattern, state_fn = SYNTHETIC_VARIANTS[variant]
        for d, layers in sizes:
            n = 12 * layers * d * d
            for T in contexts:
                S = int(layers * state_fn(d, T))
                fwd = 2.0 * n + (4.0 * layers * T * d if family == "attention" else state_flops * S)
                for C in budgets:
                    batch = max(1, tokens_per_step // T)
                    steps = max(1, round(C / (3 * fwd) / (batch * T)))
                    tokens = steps * batch * T
                    if not ratio_range[0] <= tokens / n <= ratio_range[1]:
                        continue
                    cfg = {"model": {"name": variant, "pattern": pattern, "n_layers": layers, "d_model": d,
                                     "vocab_size": 256},
                           "train": {"context": T, "batch_size": batch, "steps": steps}, "synthetic": True}
                    rid = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
                    point = {"train.context": T, "train.batch_size": batch} if multi_ctx else {}
                    plans.append({
                        "id": rid, "config": cfg, "variant": variant, "size": f"d{d}", "point": json.dumps(point),
                        "budget": float(C), "planned_flops": 3 * fwd * tokens, "flops_per_token": fwd,
                        "total_steps": steps, "params": n + 256 * d, "non_embedding_params": n,
                        "state_size": S, "context": T, "batch_size": batch,
                        "_family": family})
    owner = owner_token()
    with Store(sweep_dir) as store:
        store.add_sweep(name, {"name": name, "synthetic": True, "law": law}, None)
        store.add_runs(name, plans)
        by_id = {p["id"]: p for p in plans}
        while (row := store.claim(owner)) is not None:
            p = by_id[row["id"]]
            steps = p["total_steps"]
            at = np.unique(np.geomspace(max(1, steps / 64), steps, curve_points).round().astype(int))
            tok = at * p["batch_size"] * p["context"]
            clean = synthetic_law_loss(p["non_embedding_params"], tok, p["state_size"], p["context"], p["_family"],
                                       law)
            train = clean * np.exp(rng.normal(0, noise, len(at)))
            val = clean * np.exp(rng.normal(0, noise, len(at)))
            metrics = [{"step": int(s), "tokens": int(t), "flops": 3.0 * p["flops_per_token"] * float(t),
                        "train_loss": float(a), "val_loss": float(b), "lr": 1e-3}
                       for s, t, a, b in zip(at, tok, train, val, strict=True)]
            summary = {"steps": steps, "tokens": int(tok[-1]), "flops": metrics[-1]["flops"],
                       "final_val_loss": float(val[-1]), "final_train_loss": float(train[-1]),
                       "final_val_bpb": float(val[-1]) / math.log(2)}
            store.finish(row["id"], "done", summary=summary, metrics=metrics, owner=owner)
    return Path(sweep_dir)
