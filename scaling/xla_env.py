"""XLA flags statescale's own processes start with: ``with_cpu_defaults(env)``.

One flag, for XLA's CPU backend: ``--xla_cpu_experimental_ynn_fusion_type=-reduce`` leaves reductions to XLA's
own emitters instead of YNNPACK fusions. Measured alone on a 2-core CPU (jax 0.10.2, `scaling bench train`,
batch 8 x context 256, two processes one after the other): mamba2_small's train step 4.20 s -> 3.46 s (31.9% ->
39.0% MFU), power_retention_small 6.36 -> 5.97 s, gated_delta_small 4.14 -> 4.09 s; at the quickstart's shapes
(one core, d_model 16) Mamba-2 28.9 -> 25.1 ms, retention 19.5 -> 16.1 ms, attention 17.2 -> 16.8 ms. In the
profiles the YNNPACK reductions of the backward pass (over [.., 128, 128] scores, [.., 32, 32] chunk blocks)
took up to 22% of a step. The sums are the same math in another order, so losses move in their last bits.

It is added to the scaling CLI's own process (``scaling.cli.main``, before JAX starts a backend), to a sweep
worker's (``scaling.sweep.worker.main``, however the worker was started) and to the environment the launchers
give their workers (``scaling.sweep.worker.worker_env``). An ``XLA_FLAGS`` that already names
``xla_cpu_experimental_ynn_fusion_type`` is left as it is (the user's choice wins); ``STATESCALE_XLA_DEFAULTS=0``
adds nothing. Library calls (``scaling.train.train`` from Python) run with whatever flags their process has.
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"


def with_cpu_defaults(env: dict | None = None) -> dict:
    """``env`` (default a copy of os.environ) with :data:`YNN_FLAG` appended to XLA_FLAGS (see the module doc)."""
    env = dict(os.environ if env is None else env)
    if env.get("STATESCALE_XLA_DEFAULTS") == "0":
        return env
    flags = env.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags:
        env["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return env


def apply_cpu_defaults() -> None:
    """Set this process's XLA_FLAGS as :func:`with_cpu_defaults` does (before its first JAX computation)."""
    os.environ.update(with_cpu_defaults())
