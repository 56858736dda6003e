"""A sweep worker: trains one run in its workdir, holding the workdir's lock.

``python -m scaling.sweep.worker WORKDIR [--lock-timeout SECONDS]``, or ``--serve`` to train one workdir after
another as they are written to its stdin (the local launcher's workers: JAX imported once, compiled steps kept).

The launcher writes ``WORKDIR/config.json`` (``{"run_id", "config"}``, the format ``scaling.train.train``
writes) and starts this module. The worker takes an exclusive ``fcntl.flock`` on ``WORKDIR/.lock`` before
training, so two trainers can never write one workdir at once (a second one waits up to the lock timeout,
then exits with :data:`EXIT_LOCKED`), then calls ``train(cfg, workdir)``, which resumes from the newest
checkpoint. It writes nothing outside its workdir; the launcher reads ``status.json`` and ``metrics.jsonl``
when it ends.

Exit codes: 0 done, 3 diverged (as ``scaling train``), 75 the workdir is locked by another trainer,
2 bad workdir/config, 1 any other error (the traceback is in the worker's log). A serving worker answers
each workdir with that code on a line of its stdout.

:func:`spawn` starts a worker that dies with the process that started it (Linux ``PR_SET_PDEATHSIG``), in
its own session (so a Ctrl-C reaches the launcher, which stops its workers), optionally limited to one CPU
thread so that N workers share N cores without oversubscription.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from scaling.rundir import WORKER_LOG

EXIT_DONE, EXIT_ERROR, EXIT_BAD, EXIT_DIVERGED, EXIT_LOCKED = 0, 1, 2, 3, 75
LOCK_NAME = ".lock"
LOG_NAME = WORKER_LOG  # scaling.rundir.WORKER_LOG
SERVER_LOG = "workers.log"

_PR_SET_PDEATHSIG = 1


class WorkdirLocked(RuntimeError):
    """Another trainer holds the workdir's lock."""


def lock_workdir(workdir: str | Path, timeout: float | None = 60.0) -> int:
    """Take the exclusive lock of a run's workdir; return its file descriptor (closing it releases the lock).

    The lock is an ``fcntl.flock`` on ``WORKDIR/.lock``: the kernel drops it when its holder dies, so a
    killed trainer never leaves a stale lock. Waits up to ``timeout`` seconds (None: forever).
    """
    path = Path(workdir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if deadline is not None and time.monotonic() >= deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise WorkdirLocked(f"workdir {str(workdir)!r} is locked by another trainer (pid {holder})") from None
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the message above
    return fd


def _preexec(parent: int, prctl):
    """preexec_fn for Popen: runs in the child between fork and exec. Only async-signal-safe-ish work:
    ``prctl`` was looked up in the parent; if the parent already died, exit rather than run orphaned."""

    def fn():
        if prctl is not None:  # prctl's variadic arguments are unsigned longs
            prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0))
        if os.getppid() != parent:
            os._exit(EXIT_ERROR)

    return fn


def worker_env(single_thread: bool, base: dict | None = None) -> dict[str, str]:
    """Environment of a worker: statescale's XLA CPU defaults (scaling.xla_env) and, with ``single_thread``,
    XLA's CPU client and the BLAS/OpenMP pools on one thread, so N workers on N cores do not fight over them
    (``--xla_cpu_multi_thread_eigen=false`` is the XLA CPU flag jax 0.10 accepts; unknown XLA flags abort)."""
    from scaling.xla_env import with_cpu_defaults

    env = with_cpu_defaults(dict(os.environ if base is None else base))
    env["PYTHONUNBUFFERED"] = "1"
    if single_thread:
        flags = env.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            env["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
    return env


COMPILATION_CACHE = "jax_cache"


def compilation_cache_env(cache_dir: str | Path, env: dict[str, str]) -> dict[str, str]:
    """JAX's persistent compilation cache (its documented JAX_* options) in ``cache_dir``, unless the user set
    one. Runs of a sweep that share shapes (seeds, budgets of one model) then compile their initialisers and
    evaluation step once; on a 2-core CPU that halves the fixed cost of a small run (39 s -> 20 s measured)."""
    env = dict(env)
    if "JAX_COMPILATION_CACHE_DIR" not in env:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
    return env


def _popen(cmd, *, env, stdin, stdout, stderr, cpu: int | None) -> subprocess.Popen:
    """Start ``cmd`` in its own session, dying with the calling thread (PR_SET_PDEATHSIG); ``cpu``: pin it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=env, start_new_session=True,
                            preexec_fn=_preexec(os.getpid(), prctl), cwd=os.getcwd())
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(proc.pid, {cpu})
        except OSError:  # the process may already have exited, or the cpu is not ours
            pass
    return proc


def spawn(workdir: str | Path, *, single_thread: bool = False, cpu: int | None = None,
          lock_timeout: float | None = 60.0, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m scaling.sweep.worker WORKDIR`` with output appended to ``WORKDIR/worker.log``.

    The child gets SIGKILL when the calling *thread* exits (PR_SET_PDEATHSIG is per thread), so call this
    from a thread that lives as long as the launcher (the main thread). ``cpu``: pin it to that core.
    """
    workdir = Path(workdir)
    cmd = [sys.executable, "-m", "scaling.sweep.worker", str(workdir)]
    env = worker_env(single_thread, env)
    if workdir.parent.name == "runs":  # a sweep's run: share compiled programs with its sibling runs
        env = compilation_cache_env(workdir.parent.parent / COMPILATION_CACHE, env)
    if lock_timeout is not None:
        cmd += ["--lock-timeout", str(lock_timeout)]
    log = open(workdir / LOG_NAME, "ab")  # noqa: SIM115 (closed below; the child keeps its copy)
    try:
        return _popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cpu=cpu)
    finally:
        log.close()


def spawn_server(sweep_dir: str | Path, *, single_thread: bool = False, cpu: int | None = None,
                 lock_timeout: float | None = 60.0, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m scaling.sweep.worker --serve``: a worker that trains one run per workdir written to its
    stdin (one path a line) and answers each with its exit code on stdout. JAX is imported once and compiled
    steps are reused between runs of one shape, so a sweep of small runs does not pay them per run. Its own
    output outside runs goes to ``SWEEP_DIR/workers.log``; each run's to its ``WORKDIR/worker.log``."""
    sweep_dir = Path(sweep_dir)
    cmd = [sys.executable, "-m", "scaling.sweep.worker", "--serve"]
    if lock_timeout is not None:
        cmd += ["--lock-timeout", str(lock_timeout)]
    env = compilation_cache_env(sweep_dir / COMPILATION_CACHE, worker_env(single_thread, env))
    log = open(sweep_dir / SERVER_LOG, "ab")  # noqa: SIM115 (closed below; the child keeps its copy)
    try:
        return _popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cpu=cpu)
    finally:
        log.close()


def run_job(workdir: str, single_thread: bool = True, lock_timeout: float | None = None) -> int:
    """Run one worker to completion in a subprocess and return its exit code (the Ray / Slurm job body).

    A subprocess (rather than training in the job's own process) gives each run a fresh JAX with the
    worker's XLA flags, and the same code path as the local launcher.
    """
    proc = spawn(workdir, single_thread=single_thread, lock_timeout=lock_timeout)
    try:
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _read_run(workdir: Path):
    """The run config of ``workdir``'s config.json, or an exit code (no config, or not its run id)."""
    from scaling import config as _config
    from scaling.rundir import has_config, read_config, run_id

    if not has_config(workdir):
        print(f"worker: {str(workdir)!r} has no config.json", file=sys.stderr)
        return EXIT_BAD
    blob = read_config(workdir)
    cfg = _config.from_dict(blob["config"])
    if run_id(cfg) != blob.get("run_id"):
        print(f"worker: config.json in {str(workdir)!r} does not hash to its run id {blob.get('run_id')}",
              file=sys.stderr)
        return EXIT_BAD
    return cfg


def train_workdirs(workdirs, *, lock_timeout: float | None = 60.0) -> list[int]:
    """Train the runs whose config.json are in ``workdirs``, each under its workdir lock; one exit code each.
    One workdir: scaling.train.train. Several: one pack (scaling.train_pack.train_packed), every run of it
    answered with the same code when the pack cannot start (a bad config, a lock held)."""
    workdirs = [Path(w) for w in workdirs]
    cfgs = [_read_run(w) for w in workdirs]
    bad = next((c for c in cfgs if isinstance(c, int)), None)
    if bad is not None:
        return [bad] * len(workdirs)
    fds = []
    try:
        for w in workdirs:
            fds.append(lock_workdir(w, lock_timeout))
    except WorkdirLocked as e:
        print(f"worker: {e}", file=sys.stderr)
        for fd in fds:
            os.close(fd)
        return [EXIT_LOCKED] * len(workdirs)
    try:
        from scaling.rundir import run_id

        for cfg, w in zip(cfgs, workdirs, strict=True):
            print(f"worker {os.getpid()}: run {run_id(cfg)} in {w}" + (" (packed)" if len(cfgs) > 1 else ""),
                  flush=True)
        if len(workdirs) == 1:
            from scaling.train import train

            results = [train(cfgs[0], workdirs[0], progress=False)]
        else:
            from scaling.train_pack import train_packed

            results = train_packed(cfgs, workdirs)
        for w, r in zip(workdirs, results, strict=True):
            print(f"worker {os.getpid()}: {w.name} {r.status} at step {r.step}", flush=True)
        return [EXIT_DONE if r.status == "done" else EXIT_DIVERGED for r in results]
    finally:
        for fd in fds:
            os.close(fd)


def train_workdir(workdir: str | Path, *, lock_timeout: float | None = 60.0) -> int:
    """Train the run whose config.json is in ``workdir`` under the workdir lock; return an exit code."""
    return train_workdirs([workdir], lock_timeout=lock_timeout)[0]


def _train_logged(workdirs: list[str], lock_timeout: float | None) -> list[int]:
    """train_workdirs with this process's stdout and stderr (file descriptors 1 and 2, so XLA's output too)
    appended to the first workdir's ``worker.log`` (the others' logs name it); an exception is logged there and
    answered with EXIT_ERROR."""
    try:
        log = os.open(Path(workdirs[0]) / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        for other in workdirs[1:]:
            with open(Path(other) / LOG_NAME, "a") as f:
                f.write(f"trained in a pack; its log: {Path(workdirs[0]) / LOG_NAME}\n")
    except OSError as e:
        print(f"worker: cannot open the log of {workdirs[0]!r}: {e}", file=sys.stderr)
        return [EXIT_BAD] * len(workdirs)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)  # opened only once the log is: a bad workdir leaks no descriptor
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        return train_workdirs(workdirs, lock_timeout=lock_timeout)
    except Exception:
        traceback.print_exc()
        return [EXIT_ERROR] * len(workdirs)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, target in zip(saved, (1, 2), strict=True):
            os.dup2(fd, target)
            os.close(fd)


def serve(lock_timeout: float | None = None, *, requests=None, answers=None) -> int:
    """Train the run of each workdir read from ``requests`` (default stdin, one path a line) in turn; answer
    each with its exit code on a line of ``answers`` (default the original stdout). A line of several paths
    separated by tabs is one pack (scaling.train_pack), answered with their codes on one line, separated by
    spaces. Ends at end of input."""
    requests = sys.stdin if requests is None else requests
    answers = os.fdopen(os.dup(1), "w", buffering=1) if answers is None else answers
    for line in requests:
        workdirs = [w for w in line.rstrip("\n").split("\t") if w.strip()]
        if workdirs:
            codes = _train_logged(workdirs, lock_timeout)
            answers.write(" ".join(map(str, codes)) + "\n")
            answers.flush()
    return EXIT_DONE


def main(argv=None) -> int:
    from scaling.xla_env import apply_cpu_defaults

    apply_cpu_defaults()  # however it was started (by hand, a launcher, Ray or Slurm): the CLI's XLA flags
    p = argparse.ArgumentParser(prog="python -m scaling.sweep.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", nargs="?", help="the run's workdir (omit with --serve)")
    p.add_argument("--serve", action="store_true",
                   help="train the workdirs read from stdin, one a line, answering each with its exit code")
    p.add_argument("--lock-timeout", type=float, default=None,
                   help="seconds to wait for another trainer to release the workdir (default: forever)")
    args = p.parse_args(argv)
    if args.serve == (args.workdir is not None):
        p.error("give a WORKDIR or --serve, not both")
    if args.serve:
        return serve(args.lock_timeout)
    return train_workdir(args.workdir, lock_timeout=args.lock_timeout)


if __name__ == "__main__":
    sys.exit(main())
