"""Loading a sweep for analysis: ``<sweep_dir>/sweep.db`` -> pandas DataFrames (:func:`load_runs`,
:func:`load_curves`, :func:`load_sweep` -> :class:`SweepData`).

The database is opened read-only (the launcher is its only writer), so loading a sweep while it runs is safe.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from scaling.mixers import SPECS

__all__ = ["CURVE_COLUMNS", "FAMILIES", "RUN_COLUMNS", "SweepData", "family_of", "load_configs", "load_curves",
           "load_runs", "load_sweep"]

# Pattern letter -> mixer family: the config section names of the mixer specs (scaling/mixers/, JAX-free).
FAMILIES = {letter: spec.key for letter, spec in SPECS.items()}

RUN_COLUMNS = (
    "run_id", "sweep", "variant", "size", "family", "pattern", "n_layers", "d_model", "params",
    "non_embedding_params", "state_size", "context", "batch_size", "tokens", "flops", "budget", "flops_per_token",
    "steps", "total_steps", "final_val_loss", "final_val_bpb", "final_train_loss", "status", "seed",
)
SEED_AXIS = "train.seed"
CURVE_COLUMNS = ("run_id", "step", "tokens", "flops", "train_loss", "val_loss", "val_bpb", "lr")


def family_of(pattern: str | None, n_layers: int | None = None) -> str:
    """Mixer family of a layer pattern: attention, retention, mamba (one letter kind), hybrid (several).

    The pattern is repeated and cut to ``n_layers`` first (as the model does), so "MMMA" with 2 layers is mamba.
    """
    if not pattern:
        return "unknown"
    letters = pattern
    if n_layers:
        letters = (pattern * -(-int(n_layers) // len(pattern)))[: int(n_layers)]
    kinds = sorted(set(letters))
    if len(kinds) > 1:
        return "hybrid"
    return FAMILIES.get(kinds[0], f"unknown ({kinds[0]})")


def _db_path(sweep_dir: str | Path) -> Path:
    path = Path(sweep_dir) / "sweep.db"
    if not path.is_file():
        raise FileNotFoundError(f"{str(sweep_dir)!r} is not a sweep directory: it has no sweep.db "
                                "(start one with `scaling sweep SPEC --sweep-dir DIR`)")
    return path


@contextlib.contextmanager
def _connect(sweep_dir: str | Path):
    """A read-only connection: analysis never writes the database (the launcher is its only writer)."""
    path = _db_path(sweep_dir).resolve()
    db = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=30.0)
    try:
        yield db
    finally:
        db.close()


def _config_fields(config_json: str | None) -> dict[str, Any]:
    try:
        cfg = json.loads(config_json or "{}")
    except json.JSONDecodeError:
        cfg = {}
    model = cfg.get("model", {})
    return {"pattern": model.get("pattern"), "n_layers": model.get("n_layers"), "d_model": model.get("d_model"),
            "seed": cfg.get("train", {}).get("seed")}


def load_runs(sweep_dir: str | Path, *, statuses: Sequence[str] = ("done",)) -> pd.DataFrame:
    """The runs of ``<sweep_dir>/sweep.db`` with a status in ``statuses``, one row each, in spec order.

    Columns (RUN_COLUMNS, then one per sweep axis, e.g. ``train.context``): ``run_id``; ``sweep``, ``variant``,
    ``size`` (spec labels); ``family`` (attention / retention / mamba / hybrid, from the layer pattern),
    ``pattern``, ``n_layers``, ``d_model``; ``params`` and ``non_embedding_params`` (counts); ``state_size``
    (elements per sequence at the run's context); ``context`` (tokens), ``batch_size`` (sequences);
    ``tokens`` (trained), ``flops`` (training FLOPs spent, 3 x forward), ``budget`` (the FLOP budget it was
    matched to, NaN without FLOP matching), ``flops_per_token`` (forward); ``steps``, ``total_steps``;
    ``final_val_loss``, ``final_train_loss`` (nats per token) and ``final_val_bpb`` (bits per byte); ``status``;
    ``seed`` (train.seed: runs that differ only in it are replicates of one point, never an axis).
    A run's other final eval metrics (``runs.extra``, e.g. a synthetic task's ``task_accuracy``) become columns
    ``final_<metric>`` after the axes.
    """
    from scaling.sweep.store import STATUSES

    bad = [s for s in statuses if s not in STATUSES]
    if bad:
        raise ValueError(f"statuses: {bad} not among {', '.join(STATUSES)}")
    with _connect(sweep_dir) as db:
        q = f"SELECT * FROM runs WHERE status IN ({', '.join('?' * len(statuses))}) ORDER BY seq"
        raw = pd.read_sql_query(q, db, params=list(statuses))
    records = []
    for r in raw.to_dict("records"):
        rec = {"run_id": r["id"], **{k: r.get(k) for k in RUN_COLUMNS if k in r}}
        rec.update(_config_fields(r.get("config")))
        rec["family"] = family_of(rec["pattern"], rec["n_layers"])
        try:
            point = json.loads(r.get("point") or "{}")
        except json.JSONDecodeError:
            point = {}
        # JSON turned tuple axis values (train.eval_contexts = (64, 128)) into lists; tuples can be grouped by
        # a seed is a replicate, not an axis: the analysis pools runs that differ only in seed (column "seed")
        rec.update({k: tuple(v) if isinstance(v, list) else v for k, v in point.items() if k != SEED_AXIS})
        try:  # other final eval metrics (runs.extra), as columns named final_<metric>
            extra = json.loads(r["extra"]) if isinstance(r.get("extra"), str) else {}
        except json.JSONDecodeError:
            extra = {}
        rec.update({f"final_{k}": v for k, v in extra.items()})
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=None if records else list(RUN_COLUMNS))
    axes = [c for c in df.columns if c not in RUN_COLUMNS and not c.startswith("final_")]
    extras = sorted(c for c in df.columns if c not in RUN_COLUMNS and c.startswith("final_"))
    df = df.reindex(columns=list(RUN_COLUMNS) + axes + extras)
    for col in extras:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("seed", "params", "non_embedding_params", "state_size", "context", "batch_size", "tokens", "flops",
                "budget", "flops_per_token", "steps", "total_steps", "final_val_loss", "final_val_bpb",
                "final_train_loss", "n_layers", "d_model"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("variant", "size"):
        df[col] = df[col].fillna("").astype(str)
    df.attrs["axes"] = axes
    return df


def load_curves(sweep_dir: str | Path, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The metrics table: one row per (run, logged step) with CURVE_COLUMNS: ``run_id``, ``step``, ``tokens`` and
    ``flops`` (training FLOPs) seen by that step, ``train_loss`` / ``val_loss`` (nats per token, NaN where not
    logged at that step), ``val_bpb``, ``lr``. Only the runs in ``run_ids`` when given."""
    with _connect(sweep_dir) as db:
        df = pd.read_sql_query("SELECT * FROM metrics ORDER BY run_id, step", db)
    df = df[list(CURVE_COLUMNS)]
    if run_ids is not None:
        df = df[df["run_id"].isin(set(run_ids))]
    for col in CURVE_COLUMNS[1:]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df.reset_index(drop=True)


def load_configs(sweep_dir: str | Path) -> dict[str, str]:
    """Run id -> the run's resolved config as the store keeps it (JSON text, ``runs.config``)."""
    with _connect(sweep_dir) as db:
        return dict(db.execute("SELECT id, config FROM runs").fetchall())


@dataclass
class SweepData:
    """A sweep's finished runs and their curves (see :func:`load_runs`, :func:`load_curves`).

    counts: runs per status (all statuses); sweeps: the sweep names in the database; axes: the sweep-axis columns
    of ``runs`` (point keys such as ``train.context``).
    """

    path: Path
    runs: pd.DataFrame
    curves: pd.DataFrame
    counts: dict[str, int]
    sweeps: list[str]
    axes: list[str]
    not_done: pd.DataFrame  # id, status, error of the runs not analysed
    specs: dict[str, dict] = field(default_factory=dict)  # sweep name -> its spec (the Sweep fields as JSON)


def load_sweep(sweep_dir: str | Path) -> SweepData:
    """Load everything the analysis reads from ``<sweep_dir>/sweep.db``: done runs, their curves, status counts."""
    from scaling.sweep.store import STATUSES

    runs = load_runs(sweep_dir)
    curves = load_curves(sweep_dir, runs["run_id"])
    with _connect(sweep_dir) as db:
        status = pd.read_sql_query("SELECT id AS run_id, status, error FROM runs ORDER BY seq", db)
        rows = db.execute("SELECT name, spec FROM sweeps ORDER BY created").fetchall()
    sweeps = [r[0] for r in rows]
    specs = {r[0]: json.loads(r[1] or "{}") for r in rows}
    counts = {s: int((status["status"] == s).sum()) for s in STATUSES}
    return SweepData(path=Path(sweep_dir), runs=runs, curves=curves, counts=counts, sweeps=sweeps,
                     axes=list(runs.attrs.get("axes", [])), not_done=status[status["status"] != "done"], specs=specs)
