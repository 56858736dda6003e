"""FLOP-matched sweeps: a spec expanded into runs, a SQLite results store, and launchers (local, Ray, Slurm).

    from scaling.sweep import load_spec, expand, run_sweep
    plans = expand(load_spec("experiments/quickstart.py"))     # validated, deterministic, FLOP-matched
    result = run_sweep("experiments/quickstart.py", "sweeps/quickstart", workers=2)

See spec.py for the spec fields, store.py for the tables, launchers.py for the launchers, worker.py for the
process that trains one run.
"""

import importlib

_EXPORTS = {
    "LAUNCHERS": "backends", "SweepResult": "launchers", "prepare": "launchers", "run_sweep": "launchers",
    "RunPlan": "spec", "SpecError": "spec", "Sweep": "spec", "expand": "spec", "load_spec": "spec",
    "match_budget": "spec", "table_rows": "table", "Store": "store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    # lazy, so that `scaling.sweep.store` (and the status command) do not import JAX through the spec module
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"scaling.sweep.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'scaling.sweep' has no attribute {name!r}")
