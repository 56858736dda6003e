"""Launchers: run a sweep's pending runs locally, on a Ray cluster or through Slurm (submitit).

``run_sweep(spec, sweep_dir)`` expands the spec (validating everything first), records the runs in the store,
returns stale claims of dead launchers to pending, then claims runs one at a time and hands each to a backend:

``local`` (default)
    N serving worker processes on this machine (``python -m scaling.sweep.worker --serve``, each training one
    run after another; N defaults to one per core, see :func:`default_local_workers`), each in its own
    session, killed by the kernel if the launcher dies (PR_SET_PDEATHSIG); with N > 1 each worker uses one
    CPU thread and is pinned to its own core.
``ray``
    Each run is a Ray task (1 CPU) on an existing cluster (``ray.init(address=...)``, or the Ray instance
    this process already started). The task runs the same worker as a subprocess. The sweep directory
    must be on a filesystem the cluster's nodes share.
``slurm``
    Each run is a Slurm job submitted with submitit (``cluster="local"`` runs the jobs as local processes,
    which is how the tests drive this path without a cluster). Shared filesystem as for Ray.

Only the launcher writes the database: when a run's worker ends it reads the workdir's ``status.json`` and
``metrics.jsonl`` and records them in one transaction. A run that fails goes back to pending until it has
failed ``retries + 1`` times; running the sweep again gives each failed run another ``retries + 1`` tries
(diverged runs are final). Interrupting the launcher (Ctrl-C, or kill -9) loses nothing: running the same
command again skips finished runs, resumes half-trained ones from their checkpoints and runs the rest.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from scaling import rundir
from scaling.rundir import read_progress
from scaling.sweep import spec as _spec
from scaling.sweep import worker as _worker
from scaling.sweep.backends import LAUNCHERS, make_backend, usable_cpus  # noqa: F401 (LAUNCHERS: part of the API)
from scaling.sweep.store import FINISHED, Store, owner_token


@dataclass
class SweepResult:
    """What a launcher did: the run counts by status for the spec's runs, runs it trained, wall seconds."""

    sweep_dir: str
    runs: int
    counts: dict[str, int]
    trained: int = 0
    skipped: int = 0  # runs found finished in their workdir and only recorded
    wall_s: float = 0.0
    failed_ids: list[str] = field(default_factory=list)
    trained_flops: float = 0.0  # training FLOPs of the steps trained in this launch (scaling.sweep.utilisation)
    train_s: float = 0.0  # wall seconds from the first run started to the last one finished
    mfu: float | None = None  # sweep MFU (local launcher), over train_s
    peak_gflops: float | None = None
    cores_used: int | None = None


# ----------------------------------------------------------------------------------------------------
# Workdirs: config in, results out


def write_config(workdir: Path, run_id: str, config: dict) -> None:
    """Write ``config.json`` (scaling.rundir; the worker trains from it); keep an existing one, which must be
    the same run."""
    held = rundir.write_config(workdir, run_id, config)
    if held != run_id:
        raise _spec.SpecError(f"{str(workdir)!r} holds run {held}, not {run_id}")


def read_metrics(workdir: Path, *, batch_size: int, context: int, flops_per_token: float) -> list[dict]:
    """metrics.jsonl as one row per step (train and eval rows merged), with tokens and training FLOPs
    recomputed from the step (tokens = step * batch * context; flops = tokens * 3 * forward FLOPs/token)."""
    rows: dict[int, dict] = {}
    for r in rundir.read_metrics(workdir):
        step = int(r["step"])
        out = rows.setdefault(step, {"step": step})
        if r.get("kind") == "train":
            out["train_loss"], out["lr"] = _finite(r.get("loss")), r.get("lr")
        elif r.get("kind") == "eval":
            out["val_loss"], out["val_bpb"] = _finite(r.get("val_loss")), _finite(r.get("val_bpb"))
            extra = {k: _finite(v) for k, v in r.items() if k not in EVAL_CORE and isinstance(v, (int, float))}
            if extra:
                out["extra"] = extra
    for step, out in rows.items():
        out["tokens"] = step * batch_size * context
        out["flops"] = _spec.train_flops(step, batch_size, context, flops_per_token)
    return [rows[s] for s in sorted(rows)]


EVAL_CORE = ("kind", "step", "val_loss", "val_bpb", "tokens", "flops")


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def collect(row, exit_code: int | None) -> tuple[str, dict, list[dict], str | None]:
    """(status, summary, metrics rows, error) of a run whose worker ended with ``exit_code``
    (None: it was never started because its workdir already held the finished run)."""
    workdir = Path(row["workdir"])
    status_json = rundir.read_status(workdir)
    metrics = read_metrics(workdir, batch_size=row["batch_size"], context=row["context"],
                           flops_per_token=row["flops_per_token"])
    reported = status_json.get("status")
    steps = int(status_json.get("step", max((m["step"] for m in metrics), default=0)))
    if reported == "diverged" or exit_code == _worker.EXIT_DIVERGED:
        status = "diverged"
    elif reported == "done" and exit_code in (None, _worker.EXIT_DONE) and steps >= row["total_steps"]:
        status = "done"
    else:
        status = "failed"
    train_losses = [m["train_loss"] for m in metrics if m.get("train_loss") is not None and m["step"] <= steps]
    evals = [m for m in metrics if m.get("val_loss") is not None and m["step"] <= steps]
    summary = {
        "steps": steps, "tokens": steps * row["batch_size"] * row["context"],
        "flops": _spec.train_flops(steps, row["batch_size"], row["context"], row["flops_per_token"]),
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "final_val_bpb": evals[-1].get("val_bpb") if evals else None,
        # other eval metrics (a synthetic task's accuracy, ...): the newest value of each, as JSON in runs.extra
        "extra": {k: v for m in evals for k, v in m.get("extra", {}).items() if v is not None} or None,
    }
    error = None
    if status == "failed":
        tail = _log_tail(workdir / rundir.WORKER_LOG)
        error = f"exit code {exit_code}: {tail}" if exit_code is not None else tail
    return status, summary, metrics, error


def _log_tail(path: Path, n: int = 1500) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - n, 0))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def finished_in_workdir(row) -> bool:
    """Whether the workdir already holds this run finished (a launcher died before recording it)."""
    s = rundir.read_status(row["workdir"])
    cfg = rundir.read_json(Path(row["workdir"]) / rundir.CONFIG) or {}
    return (cfg.get("run_id") == row["id"] and s.get("status") == "done"
            and int(s.get("step", -1)) >= row["total_steps"])


# ----------------------------------------------------------------------------------------------------
# The sweep


def default_sweep_dir(name: str) -> Path:
    return Path("sweeps") / name


def prepare(spec: str | Path | _spec.Sweep | dict, sweep_dir: str | Path | None = None, *, scale: str | None = None,
            overrides: dict | None = None):
    """(sweep, plans, store, sweep_dir): expand and validate the spec, then record its runs (new ones only).

    ``scale``: the scale of a spec file with scales (``load_spec``); ``overrides``: {key: value} added to the
    spec's overrides for every run (``scaling sweep --set``)."""
    spec_path = None
    if isinstance(spec, (str, Path)):
        spec_path = str(Path(spec).resolve())
        spec = _spec.load_spec(spec, scale=scale)
    elif scale is not None:
        raise _spec.SpecError(f"--scale {scale}: a scale needs a spec file (experiments/papers/*.py)")
    sweep = _spec.as_sweep(spec)
    if overrides:
        sweep = replace(sweep, overrides={**sweep.overrides, **overrides})
    plans = _spec.expand(sweep)  # raises before anything is written
    sweep_dir = Path(sweep_dir or default_sweep_dir(sweep.name)).resolve()
    store = Store(sweep_dir)
    store.add_sweep(sweep.name, asdict(sweep), spec_path)
    store.add_runs(sweep.name, [{**p.summary(), "config": p.cfg.to_dict()} for p in plans])
    return sweep, plans, store, sweep_dir


def run_sweep(spec, sweep_dir=None, *, launcher: str = "local", workers: int | None = None, retries: int = 1,
              progress: bool = False, ray_address: str | None = None, slurm_cluster: str | None = None,
              slurm_params: dict | None = None, poll_s: float = 0.5, log=print, scale: str | None = None,
              overrides: dict | None = None, pack: int = 1) -> SweepResult:
    """Run every pending run of ``spec`` (a spec file, a Sweep or a dict) and record the results.

    Args:
      sweep_dir: where sweep.db and runs/<run id>/ live (default sweeps/<name>).
      launcher: "local", "ray" or "slurm".
      workers: runs at once (local: default_local_workers(); Ray: the cluster's CPUs; Slurm: all).
      retries: a failed run is tried again up to this many times (diverged runs are final).
      progress: a live rich display; otherwise one line per finished run through ``log``.
      scale, overrides: see :func:`prepare`.
      pack: local launcher: up to this many pending runs of one shape (scaling.train_pack.pack_key: they differ
        only in seed, schedule, length or logging) are trained together by one worker, in one program a step.
    """
    if launcher not in LAUNCHERS:
        raise _spec.SpecError(f"--launcher {launcher!r}: must be one of {', '.join(LAUNCHERS)}")
    if workers is not None and workers < 1:
        raise _spec.SpecError(f"--workers {workers}: must be >= 1")
    if retries < 0:
        raise _spec.SpecError(f"--retries {retries}: must be >= 0")
    if pack < 1 or (pack > 1 and launcher != "local"):
        raise _spec.SpecError(f"--pack {pack}: must be >= 1, and 1 unless --launcher local (packs are trained by "
                              "the local launcher's workers)")
    t0 = time.time()
    sweep, plans, store, sweep_dir = prepare(spec, sweep_dir, scale=scale, overrides=overrides)
    ids = [p.run_id for p in plans]
    owner = owner_token()
    try:
        stale = store.recover_stale()
        if stale:
            log(f"{len(stale)} run(s) of a launcher that died went back to pending: {', '.join(stale)}")
        retried = store.retry_failed(ids)
        if retried:
            log(f"{len(retried)} failed run(s) go back to pending for another {retries + 1} tries: "
                f"{', '.join(retried)}")
        result = SweepResult(str(sweep_dir), len(ids), store.counts(ids))
        if not result.counts["pending"]:
            result.wall_s = time.time() - t0
            return result
        backend = make_backend(launcher, workers=workers, sweep_dir=sweep_dir, ray_address=ray_address,
                               slurm_cluster=slurm_cluster, slurm_params=slurm_params)
        display = _Display(sweep.name, store, ids, enabled=progress, log=log)
        # a SIGTERM (a scheduler ending the launcher's own job, `kill`) stops the workers and gives their runs
        # back exactly like Ctrl-C; only the main thread may set handlers
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if on_main else None
        t_train = time.time()
        try:
            keys = _pack_keys(plans) if pack > 1 else None
            _drive(store, ids, backend, owner, retries, display, result, poll_s, pack, keys)
        finally:
            if on_main:
                signal.signal(signal.SIGTERM, previous)
            display.close()
            backend.close()
        result.train_s = time.time() - t_train
        result.counts = store.counts(ids)
        result.failed_ids = [r["id"] for r in store.runs(ids) if r["status"] == "failed"]
        _utilisation(store, result, launcher, backend.slots, t_train)
        result.wall_s = time.time() - t0
        return result
    finally:
        store.close()


def _utilisation(store: Store, result: SweepResult, launcher: str, workers: int, started: float) -> None:
    """Sweep MFU of this launch (local launcher only: the peak is this machine's), kept in the ``launches`` table."""
    from scaling.sweep import utilisation

    cpus = usable_cpus()
    row = {"started": started, "wall_s": result.train_s, "launcher": launcher, "workers": workers,
           "trained": result.trained, "flops": result.trained_flops, "cpus": cpus, "host": socket.gethostname()}
    if launcher == "local" and result.trained_flops > 0:
        result.peak_gflops = utilisation.machine_peak()["peak_gflops_per_s"]
        result.cores_used = utilisation.cores_used(workers, cpus)
        result.mfu = utilisation.sweep_mfu(result.trained_flops, result.train_s, result.peak_gflops,
                                           result.cores_used, cpus)
        row.update(cores_used=result.cores_used, peak_gflops=result.peak_gflops, mfu=result.mfu)
    if result.trained:
        store.record_launch(**row)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _pack_keys(plans) -> dict[str, str]:
    """Run id -> the key of the runs it may be packed with (scaling.train_pack.pack_key)."""
    from scaling.train_pack import pack_key

    return {p.run_id: pack_key(p.cfg.to_dict()) for p in plans}


def _claim_group(store: Store, owner, ids, pack: int, keys) -> list:
    """The next run to train, with up to ``pack - 1`` pending runs of its key (claimed too); [] when none."""
    row = store.claim(owner, ids)
    if row is None:
        return []
    group = [row]
    if pack > 1:
        mates = [i for i in ids if keys.get(i) == keys.get(row["id"]) and i != row["id"]]
        while mates and len(group) < pack:
            mate = store.claim(owner, mates)
            if mate is None:
                break
            group.append(mate)
            mates.remove(mate["id"])
    return group


def _drive(store: Store, ids, backend, owner, retries, display, result: SweepResult, poll_s: float,
           pack: int = 1, keys: dict | None = None) -> None:
    active: dict[str, tuple[Any, list, float]] = {}  # first run id -> (handle, rows, start time)
    try:
        while True:
            while len(active) < backend.slots:
                group = _claim_group(store, owner, ids, pack, keys)
                if not group:
                    break
                rows = []
                for row in group:
                    workdir = Path(row["workdir"])
                    write_config(workdir, row["id"], json.loads(row["config"]))
                    if finished_in_workdir(row):  # trained before a launcher died unrecorded: record it only
                        _record(store, row, None, None, retries, owner, display, result, time.time())
                        result.skipped += 1
                    else:
                        rows.append(row)
                if not rows:
                    continue
                workdirs = [Path(r["workdir"]) for r in rows]
                handle = backend.submit(workdirs if len(rows) > 1 else workdirs[0])
                for row in rows:
                    store.set_job(row["id"], backend.job_id(handle))
                    display.started(row)
                active[rows[0]["id"]] = (handle, rows, time.time())
            if not active:
                break
            for key, (handle, rows, started) in list(active.items()):
                code, err = backend.poll(handle)
                if code is not None:
                    del active[key]
                    codes = code if isinstance(code, list) else [code] * len(rows)  # a dead worker fails its pack
                    for row, c in zip(rows, codes, strict=True):
                        result.trained += 1
                        _record(store, row, c, err, retries, owner, display, result, started)
            display.refresh(active)
            time.sleep(poll_s)
    except BaseException:
        # Ctrl-C (or any error): stop our workers and give their runs back, so a rerun resumes them
        for handle, rows, _ in active.values():
            backend.cancel(handle)
            for row in rows:
                store.release(row["id"], owner)
        raise


def _record(store, row, code, err, retries, owner, display, result, started) -> None:
    status, summary, metrics, error = collect(row, code)
    if code is not None:  # trained here: the FLOPs of the steps this launch added
        result.trained_flops += max((summary.get("flops") or 0.0) - (row["flops"] or 0.0), 0.0)
    if err:
        error = f"{err}; {error or ''}"
    stored = store.finish(row["id"], status, summary=summary, metrics=metrics, retries=retries, error=error,
                          owner=owner)
    display.finished(row, stored, summary, time.time() - started, error)


# ----------------------------------------------------------------------------------------------------
# Display


class _Display:
    """A live rich display (overall bar plus one bar per running run), or one log line per finished run."""

    def __init__(self, name: str, store: Store, ids, *, enabled: bool, log=print):
        self.name, self.store, self.ids, self.enabled, self.log = name, store, list(ids), enabled, log
        self.tasks: dict[str, int] = {}
        counts = store.counts(ids)
        self.total = len(self.ids)
        self.done = sum(counts[s] for s in FINISHED)
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), refresh_per_second=4)
        self.progress.start()
        self.overall = self.progress.add_task(f"[bold]sweep {name}", total=self.total, completed=self.done,
                                              info=self._counts_text(counts))

    @staticmethod
    def _counts_text(counts) -> str:
        return "  ".join(f"{k} {v}" for k, v in counts.items() if v)

    def _label(self, row) -> str:
        point = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in json.loads(row["point"] or "{}").items())
        size = f" {row['size']}" if row["size"] else ""
        budget = f" {row['budget']:.1e}" if row["budget"] else ""
        return f"  {row['id']} {row['variant']}{size}{budget}" + (f" [{point}]" if point else "")

    def started(self, row) -> None:
        if self.enabled:
            self.tasks[row["id"]] = self.progress.add_task(self._label(row), total=row["total_steps"],
                                                           completed=0, info="starting")

    def refresh(self, active) -> None:
        if not self.enabled:
            return
        for row in (r for _, rows, _ in active.values() for r in rows):
            rid = row["id"]
            if rid in self.tasks:
                p = read_progress(row["workdir"])
                info = []
                if p.get("loss") is not None:
                    info.append(f"loss {p['loss']:.3f}")
                if p.get("val_loss") is not None:
                    info.append(f"val {p['val_loss']:.3f}")
                if p.get("tokens_per_s"):
                    info.append(f"{p['tokens_per_s']:,.0f} tok/s")
                self.progress.update(self.tasks[rid], completed=p.get("step", 0), info="  ".join(info) or "compiling")
        self.progress.update(self.overall, completed=self.done, info=self._counts_text(self.store.counts(self.ids)))

    def finished(self, row, status, summary, seconds, error) -> None:
        if status in FINISHED:
            self.done += 1
        val = summary.get("final_val_loss")
        line = (f"[{self.done}/{self.total}] {status:8s} {row['id']} {row['variant']}"
                f"{' ' + row['size'] if row['size'] else ''}  steps {summary['steps']}/{row['total_steps']}  "
                f"val {'-' if val is None else f'{val:.4f}'}  flops {summary['flops']:.3e}  {seconds:.0f} s")
        if status == "pending":
            line += "  (failed; will retry)"
        if error and status in ("failed", "pending"):
            line += "\n    " + error.strip().splitlines()[-1][:300]
        if self.enabled:
            if row["id"] in self.tasks:
                self.progress.remove_task(self.tasks.pop(row["id"]))
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            self.log(line)
            sys.stdout.flush()

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
