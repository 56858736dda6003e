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
failed ``retries + 1`` times. Interrupting the launcher (Ctrl-C, or kill -9) loses nothing: running the same
command again skips finished runs, resumes half-trained ones from their checkpoints and runs the rest.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from scaling.sweep import spec as _spec
from scaling.sweep import worker as _worker
from scaling.sweep.store import FINISHED, Store, owner_token

LAUNCHERS = ("local", "ray", "slurm")


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


# ----------------------------------------------------------------------------------------------------
# Workdirs: config in, results out


def write_config(workdir: Path, run_id: str, config: dict) -> None:
    """Write ``config.json`` as ``scaling.train.train`` writes it (the worker trains from it); keep an
    existing one, which must be the same run."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("run_id") != run_id:
            raise _spec.SpecError(f"{str(workdir)!r} holds run {old.get('run_id')}, not {run_id}")
        return
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"run_id": run_id, "config": config}, indent=2, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_metrics(workdir: Path, *, batch_size: int, context: int, flops_per_token: float) -> list[dict]:
    """metrics.jsonl as one row per step (train and eval rows merged), with tokens and training FLOPs
    recomputed from the step (tokens = step * batch * context; flops = tokens * 3 * forward FLOPs/token)."""
    path = workdir / "metrics.jsonl"
    rows: dict[int, dict] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
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
    status_json = _read_json(workdir / "status.json") or {}
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
        tail = _log_tail(workdir / _worker.LOG_NAME)
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
    s = _read_json(Path(row["workdir"]) / "status.json") or {}
    cfg = _read_json(Path(row["workdir"]) / "config.json") or {}
    return (cfg.get("run_id") == row["id"] and s.get("status") == "done"
            and int(s.get("step", -1)) >= row["total_steps"])


def read_progress(workdir: str | Path) -> dict[str, Any]:
    """The newest train and eval rows of a run's metrics.jsonl (reads only the file's tail)."""
    path = Path(workdir) / "metrics.jsonl"
    out: dict[str, Any] = {}
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - 4096, 0))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind") == "train":
            out.update(step=r["step"], loss=r.get("loss"), tokens_per_s=r.get("tokens_per_s"))
        elif r.get("kind") == "eval":
            out.update(val_loss=r.get("val_loss"))
    return out


# ----------------------------------------------------------------------------------------------------
# Backends: submit a workdir, poll for its exit code, cancel


class _Job:
    """A run handed to a serving worker: its exit code once the worker answers."""

    def __init__(self, server: subprocess.Popen, workdir: Path):
        self.server, self.workdir, self.code = server, workdir, None

    @property
    def pid(self) -> int:
        return self.server.pid


class LocalBackend:
    """Serving workers on this machine (``python -m scaling.sweep.worker --serve``), one per slot, each training
    one run after another; with several slots each is pinned to one core. A worker that dies fails only its
    run; the next run starts a new one. Every ``runs_per_worker`` runs a worker is replaced, bounding what a
    long-lived process accumulates."""

    name = "local"

    def __init__(self, workers: int, sweep_dir: Path, lock_timeout: float = 60.0, runs_per_worker: int = 32):
        self.slots = workers
        self.sweep_dir = Path(sweep_dir)
        self.single_thread = workers > 1
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        # pin only when every worker can have a core of its own; otherwise let the scheduler spread them
        self.cpus = cpus if self.single_thread and len(cpus) >= workers else []
        self.lock_timeout = lock_timeout
        self.runs_per_worker = runs_per_worker
        self.idle: list[tuple[subprocess.Popen, int | None, int]] = []  # (worker, cpu, runs served)
        self.busy: dict[int, tuple[_Job, int | None, int]] = {}  # pid -> (job, cpu, runs served)
        self.buffers: dict[int, bytes] = {}

    def _worker(self) -> tuple[subprocess.Popen, int | None, int]:
        while self.idle:
            proc, cpu, served = self.idle.pop()
            if proc.poll() is None:
                return proc, cpu, served
        taken = {cpu for _, cpu, _ in self.busy.values()}
        cpu = next((c for c in self.cpus if c not in taken), None)
        proc = _worker.spawn_server(self.sweep_dir, single_thread=self.single_thread, cpu=cpu,
                                    lock_timeout=self.lock_timeout)
        os.set_blocking(proc.stdout.fileno(), False)
        self.buffers[proc.pid] = b""
        return proc, cpu, 0

    def submit(self, workdir: Path):
        proc, cpu, served = self._worker()
        job = _Job(proc, Path(workdir))
        try:
            proc.stdin.write(f"{Path(workdir).resolve()}\n".encode())
            proc.stdin.flush()
        except OSError:  # it died between the check and the write: its exit is seen by poll
            pass
        self.busy[proc.pid] = (job, cpu, served + 1)
        return job

    def job_id(self, job) -> str:
        return f"pid:{job.pid}"

    def poll(self, job) -> tuple[int | None, str | None]:
        if job.code is not None:
            return job.code, None
        proc = job.server
        try:
            chunk = proc.stdout.read() or b""
        except OSError:
            chunk = b""
        self.buffers[proc.pid] = self.buffers.get(proc.pid, b"") + chunk
        if b"\n" in self.buffers[proc.pid]:
            line, self.buffers[proc.pid] = self.buffers[proc.pid].split(b"\n", 1)
            job.code = int(line)
            _, cpu, served = self.busy.pop(proc.pid)
            if served >= self.runs_per_worker:
                self._stop(proc)
            else:
                self.idle.append((proc, cpu, served))
            return job.code, None
        if proc.poll() is not None:  # died mid-run (killed, out of memory, a crash in native code)
            self.busy.pop(proc.pid, None)
            self.buffers.pop(proc.pid, None)
            job.code = _worker.EXIT_ERROR
            return job.code, f"worker pid {proc.pid} died with exit code {proc.returncode}"
        return None, None

    def cancel(self, job) -> None:
        self.busy.pop(job.pid, None)
        proc = job.server
        if proc.poll() is None:
            proc.terminate()  # the worker's checkpoints are atomic: a kill at any point loses no saved step
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @staticmethod
    def _stop(proc) -> None:
        try:
            proc.stdin.close()  # end of input: the worker exits after its current run (it has none)
            proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    def close(self) -> None:
        for proc, _, _ in self.idle:
            self._stop(proc)
        self.idle = []


class RayBackend:
    """Each run a Ray task of 1 CPU running the worker as a subprocess."""

    name = "ray"

    def __init__(self, workers: int | None, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise _spec.SpecError("--launcher ray needs Ray: pip install 'statescale[cluster]'") from None
        self.ray = ray
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or "auto"
            try:
                ray.init(address=address, log_to_driver=False)
            except ConnectionError as e:
                raise _spec.SpecError(f"--ray-address {address}: no Ray cluster to connect to ({e}); start one with "
                                      "`ray start --head`, or give its address") from None
        self.remote = ray.remote(num_cpus=1, max_retries=0)(_worker.run_job)
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = workers or max(cluster_cpus, 1)

    def submit(self, workdir: Path):
        return self.remote.remote(str(workdir.resolve()), True, None)

    def job_id(self, ref) -> str:
        return f"ray:{ref.hex()}"

    def poll(self, ref) -> tuple[int | None, str | None]:
        ready, _ = self.ray.wait([ref], timeout=0)
        if not ready:
            return None, None
        try:
            return int(self.ray.get(ref)), None
        except Exception as e:  # the task itself failed (node lost, worker crashed)
            return _worker.EXIT_ERROR, f"ray task failed: {e}"

    def cancel(self, ref) -> None:
        try:
            self.ray.cancel(ref, force=True)
        except Exception:  # already finished
            pass

    def close(self) -> None:
        pass


class SlurmBackend:
    """Each run a Slurm job submitted with submitit (``cluster="local"``: local processes, for tests)."""

    name = "slurm"

    def __init__(self, workers: int | None, folder: Path, cluster: str | None = None, params: dict | None = None):
        try:
            import submitit
        except ImportError:
            raise _spec.SpecError("--launcher slurm needs submitit: pip install 'statescale[cluster]'") from None
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params = {"timeout_min": 24 * 60, "cpus_per_task": 1, "nodes": 1, "tasks_per_node": 1, **(params or {})}
        try:
            self.executor.update_parameters(**params)
        except Exception as e:  # submitit names the unknown parameter
            raise _spec.SpecError(f"--slurm-param: {e}") from None
        self.slots = workers or 10_000  # a scheduler queues the jobs; submit them all unless told otherwise

    def submit(self, workdir: Path):
        return self.executor.submit(_worker.run_job, str(workdir.resolve()), True, None)

    def job_id(self, job) -> str:
        return f"slurm:{job.job_id}"

    def poll(self, job) -> tuple[int | None, str | None]:
        if not job.done():
            return None, None
        try:
            return int(job.result()), None
        except Exception as e:
            return _worker.EXIT_ERROR, f"slurm job {job.job_id} failed: {e}"

    def cancel(self, job) -> None:
        try:
            job.cancel(check=False)
        except Exception:
            pass

    def close(self) -> None:
        pass


def default_local_workers() -> int:
    """Workers of the local launcher when not given: one per CPU core this process may use, at most 8 and one
    per 2 GiB of available memory (a worker holds JAX, the model and the corpus); 1 when a GPU or TPU is
    visible, since every worker would share it."""
    if any(Path("/dev").glob("nvidia[0-9]*")) or any(Path("/dev").glob("accel[0-9]*")):
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kib = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable:")))
        by_memory = max(kib // (2 * 1024 * 1024), 1)
    except (OSError, StopIteration, ValueError):
        by_memory = cpus
    return max(1, min(cpus, 8, by_memory))


def make_backend(launcher: str, *, workers: int | None, sweep_dir: Path, ray_address: str | None = None,
                 slurm_cluster: str | None = None, slurm_params: dict | None = None):
    if launcher == "local":
        return LocalBackend(workers or default_local_workers(), sweep_dir)
    if launcher == "ray":
        return RayBackend(workers, ray_address)
    if launcher == "slurm":
        return SlurmBackend(workers, sweep_dir / "slurm", slurm_cluster, slurm_params)
    raise _spec.SpecError(f"--launcher {launcher!r}: must be one of {', '.join(LAUNCHERS)}")


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
              overrides: dict | None = None) -> SweepResult:
    """Run every pending run of ``spec`` (a spec file, a Sweep or a dict) and record the results.

    Args:
      sweep_dir: where sweep.db and runs/<run id>/ live (default sweeps/<name>).
      launcher: "local", "ray" or "slurm".
      workers: runs at once (local: default_local_workers(); Ray: the cluster's CPUs; Slurm: all).
      retries: a failed run is tried again up to this many times (diverged runs are final).
      progress: a live rich display; otherwise one line per finished run through ``log``.
      scale, overrides: see :func:`prepare`.
    """
    if launcher not in LAUNCHERS:
        raise _spec.SpecError(f"--launcher {launcher!r}: must be one of {', '.join(LAUNCHERS)}")
    if workers is not None and workers < 1:
        raise _spec.SpecError(f"--workers {workers}: must be >= 1")
    if retries < 0:
        raise _spec.SpecError(f"--retries {retries}: must be >= 0")
    t0 = time.time()
    sweep, plans, store, sweep_dir = prepare(spec, sweep_dir, scale=scale, overrides=overrides)
    ids = [p.run_id for p in plans]
    owner = owner_token()
    try:
        stale = store.recover_stale()
        if stale:
            log(f"{len(stale)} run(s) of a launcher that died went back to pending: {', '.join(stale)}")
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
        try:
            _drive(store, ids, backend, owner, retries, display, result, poll_s)
        finally:
            if on_main:
                signal.signal(signal.SIGTERM, previous)
            display.close()
            backend.close()
        result.counts = store.counts(ids)
        result.failed_ids = [r["id"] for r in store.runs(ids) if r["status"] == "failed"]
        result.wall_s = time.time() - t0
        return result
    finally:
        store.close()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _drive(store: Store, ids, backend, owner, retries, display, result: SweepResult, poll_s: float) -> None:
    active: dict[str, tuple[Any, Any, float]] = {}  # run id -> (handle, row, start time)
    try:
        while True:
            while len(active) < backend.slots:
                row = store.claim(owner, ids)
                if row is None:
                    break
                workdir = Path(row["workdir"])
                write_config(workdir, row["id"], json.loads(row["config"]))
                if finished_in_workdir(row):  # trained before a launcher died unrecorded: record it only
                    _record(store, row, None, None, retries, owner, display, result, time.time())
                    result.skipped += 1
                    continue
                handle = backend.submit(workdir)
                store.set_job(row["id"], backend.job_id(handle))
                active[row["id"]] = (handle, row, time.time())
                display.started(row)
            if not active:
                break
            for rid, (handle, row, started) in list(active.items()):
                code, err = backend.poll(handle)
                if code is not None:
                    del active[rid]
                    result.trained += 1
                    _record(store, row, code, err, retries, owner, display, result, started)
            display.refresh(active)
            time.sleep(poll_s)
    except BaseException:
        # Ctrl-C (or any error): stop our workers and give their runs back, so a rerun resumes them
        for rid, (handle, _, _) in active.items():
            backend.cancel(handle)
            store.release(rid, owner)
        raise


def _record(store, row, code, err, retries, owner, display, result, started) -> None:
    status, summary, metrics, error = collect(row, code)
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
        for rid, (_, row, _) in active.items():
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


# ----------------------------------------------------------------------------------------------------
# Tables for the command line


def format_seconds(s: float) -> str:
    """A duration for tables: 42 s, 7.5 min, 3.2 h, 4.1 d."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if s >= 2 * size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.0f} s"


def print_plan(plans, console=None, *, peak_flops: float | None = None, mfu: float | None = None,
               device: str | None = None) -> None:
    """The expanded run table of ``scaling sweep --dry-run``; with ``peak_flops`` and ``mfu`` an estimated
    wall time per run (training FLOPs / (mfu x peak_flops)) and in total, ``device`` naming the assumption."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    from scaling.sweep.table import table_rows

    rows = table_rows(plans, peak_flops, mfu)
    timed = peak_flops is not None and mfu is not None
    table = Table(title=f"{len(rows)} runs", show_lines=False)
    has_size = any(r["size"] for r in rows)
    has_point = any(r["point"] for r in rows)
    cols = ["run id", "variant"] + (["size"] if has_size else []) + (["axes"] if has_point else []) + [
        "context", "params", "non-emb", "state", "tokens", "steps", "FLOPs", "budget", "vs budget"] + (
        ["est. wall"] if timed else [])
    for c in cols:
        table.add_column(c, justify="left" if c in ("run id", "variant", "size", "axes") else "right", no_wrap=True)
    for r in rows:
        cells = [r["run_id"], r["variant"]] + ([r["size"]] if has_size else []) + ([r["point"]] if has_point else [])
        cells += [f"{r['context']:,}", f"{r['params']:,}", f"{r['non_embedding_params']:,}", f"{r['state_size']:,}",
                  f"{r['tokens']:,}", f"{r['steps']:,}", f"{r['flops']:.3e}",
                  "-" if r["budget"] is None else f"{r['budget']:.2e}",
                  "-" if r["budget_error"] is None else f"{100 * r['budget_error']:+.2f}%"]
        cells += [format_seconds(r["wall_s"])] if timed else []
        table.add_row(*cells)
    console.print(table)
    total = sum(r["flops"] for r in rows)
    console.print(f"total {total:.3e} training FLOPs (3 x forward), {sum(r['tokens'] for r in rows):,} tokens; "
                  "state: elements per sequence at the run's context. Nothing was run (--dry-run).")
    if timed:
        wall = sum(r["wall_s"] for r in rows)
        console.print(f"est. wall: training FLOPs / (MFU {mfu:g} x peak {peak_flops:.3g} FLOP/s"
                      f"{f', {device}' if device else ''}), one run at a time on the whole device; all runs "
                      f"{format_seconds(wall)} (--peak-flops and --mfu change the assumption).")


_STATUS_ORDER = {"running": 0, "pending": 1, "failed": 2, "diverged": 3, "done": 4}
_STATUS_STYLE = {"running": "cyan", "pending": "white", "failed": "red", "diverged": "magenta", "done": "green"}


def print_status(sweep_dir, console=None) -> dict[str, int]:
    """A rich table of a sweep's runs by status, with progress (steps done / total); returns the counts."""
    from rich.console import Console
    from rich.table import Table

    from scaling.sweep.store import open_existing, to_frame

    console = console or Console()
    with open_existing(sweep_dir) as store:
        df = to_frame(store)
        counts = store.counts()
        names = ", ".join(r["name"] for r in store.sweeps())
    table = Table(title=f"sweep {names} ({sweep_dir}): " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    right = ("budget", "progress", "attempts", "val loss", "train loss", "FLOPs", "params", "state")
    has_size = bool(len(df)) and bool(df["size"].fillna("").astype(bool).any())
    has_point = bool(len(df)) and bool((df["point"].fillna("{}") != "{}").any())
    optional = (["size"] if has_size else []) + (["axes"] if has_point else [])
    for c in ("status", "run id", "variant", *optional, *right, "job / error"):
        table.add_column(c, justify="right" if c in right else "left", no_wrap=c != "job / error")
    if len(df):
        df = df.assign(_order=df["status"].map(_STATUS_ORDER)).sort_values(["_order", "seq"])
    for _, r in df.iterrows():
        point = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in json.loads(r["point"] or "{}").items())
        frac = f"{int(r['steps'])}/{int(r['total_steps'])}" if r["total_steps"] else "-"
        note = r["job"] if r["status"] == "running" else (r["error"] or "").strip().splitlines()[-1:] or [""]
        note = note if isinstance(note, str) else note[0][:80]
        extra = ([r["size"] or ""] if has_size else []) + ([point] if has_point else [])
        table.add_row(
            f"[{_STATUS_STYLE[r['status']]}]{r['status']}", r["id"], r["variant"] or "", *extra,
            "-" if _isnan(r["budget"]) else f"{r['budget']:.2e}", frac, str(int(r["attempts"])),
            _num(r["final_val_loss"]), _num(r["final_train_loss"]),
            "-" if _isnan(r["flops"]) else f"{r['flops']:.3e}", f"{int(r['params']):,}",
            f"{int(r['state_size']):,}", note or "")
    console.print(table)
    return counts


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x) -> str:
    return "-" if _isnan(x) else f"{x:.4f}"


def check_export_format(fmt: str) -> None:
    """Raise a SpecError naming the problem unless ``fmt`` can be written here (parquet needs pyarrow)."""
    if fmt not in ("csv", "parquet"):
        raise _spec.SpecError(f"--export {fmt!r}: must be csv or parquet")
    if fmt == "parquet":
        import importlib.util

        if not (importlib.util.find_spec("pyarrow") or importlib.util.find_spec("fastparquet")):
            raise _spec.SpecError("--export parquet needs pyarrow, which is not installed: `pip install pyarrow`, "
                                  "or use --export csv")


def export(sweep_dir, fmt: str, path) -> int:
    """Write the flat run table (:func:`scaling.sweep.store.to_frame`) as csv or parquet; returns rows written."""
    from scaling.sweep.store import open_existing, to_frame

    check_export_format(fmt)
    with open_existing(sweep_dir) as store:
        df = to_frame(store)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return len(df)
