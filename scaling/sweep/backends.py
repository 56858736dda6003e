"""Backends of the launchers: submit a run's workdir, poll for its exit code, cancel it.

``local``: serving workers on this machine (:class:`LocalBackend`); ``ray``: a Ray task per run; ``slurm``: a
submitit job per run (see scaling.sweep.launchers for how a sweep drives them).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from scaling.sweep import spec as _spec
from scaling.sweep import worker as _worker

LAUNCHERS = ("local", "ray", "slurm")


class _Job:
    """A run, or a pack of runs, handed to a serving worker: its exit code (a list for a pack) once the worker
    answers."""

    def __init__(self, server: subprocess.Popen, pack: bool):
        self.server, self.pack, self.code = server, pack, None

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

    def submit(self, workdir):
        """Hand a workdir, or a list of them (one pack: scaling.train_pack), to an idle worker."""
        pack = isinstance(workdir, (list, tuple))
        workdirs = [Path(w) for w in (workdir if pack else [workdir])]
        proc, cpu, served = self._worker()
        job = _Job(proc, pack)
        try:
            proc.stdin.write(("\t".join(str(w.resolve()) for w in workdirs) + "\n").encode())
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
            codes = [int(c) for c in line.split()]
            job.code = codes if job.pack else codes[0]
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


def usable_cpus() -> int:
    """Cores this process may run on (its affinity where the OS has one, else the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_local_workers() -> int:
    """Workers of the local launcher when not given: one per CPU core this process may use, at most 8 and one
    per 2 GiB of available memory (a worker holds JAX, the model and the corpus); 1 when a GPU or TPU is
    visible, since every worker would share it."""
    if any(Path("/dev").glob("nvidia[0-9]*")) or any(Path("/dev").glob("accel[0-9]*")):
        return 1
    cpus = usable_cpus()
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
