"""Launchers end to end on the tiny spec: kill -9 then resume, two launchers at once, retries, the workdir lock,
status and export, and the Ray and submitit (local executor) paths."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from scaling.sweep import run_sweep
from scaling.sweep.backends import usable_cpus
from scaling.sweep.worker import EXIT_LOCKED, lock_workdir
from tests.sweep.tiny import ROOT, spec_dict, write_spec


def _cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "scaling.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _db(sweep_dir):
    db = sqlite3.connect(Path(sweep_dir) / "sweep.db")
    db.row_factory = sqlite3.Row
    return db


def _rows(sweep_dir):
    with _db(sweep_dir) as db:
        return {r["id"]: dict(r) for r in db.execute("SELECT * FROM runs ORDER BY seq")}


def _metrics(sweep_dir, rid):
    with _db(sweep_dir) as db:
        return [tuple(r) for r in db.execute("SELECT * FROM metrics WHERE run_id=? ORDER BY step", (rid,))]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _check_done(sweep_dir):
    rows = _rows(sweep_dir)
    for rid, r in rows.items():
        assert r["status"] == "done", (rid, r["error"])
        assert r["steps"] == r["total_steps"] and r["final_val_loss"] is not None
        assert abs(r["flops"] / r["budget"] - 1) <= 0.05
        steps = [m[1] for m in _metrics(sweep_dir, rid)]
        assert steps == list(range(1, r["total_steps"] + 1))  # log_every 1: every step once, none duplicated
    return rows


@pytest.mark.slow
def test_kill_9_mid_sweep_then_rerun_finishes_every_run_once(tmp_path):
    spec = write_spec(tmp_path / "spec.py", steps=(12, 400, 14))
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", str(spec), "--sweep-dir", str(sweep_dir), "--workers", "1", "--no-progress"]
    proc = _cli(args)
    deadline = time.time() + 240
    first = second = None
    while time.time() < deadline:  # kill once the first run is recorded and the long second one is mid-way
        try:
            rows = list(_rows(sweep_dir).values()) if (sweep_dir / "sweep.db").exists() else []
        except sqlite3.OperationalError:  # the launcher is still creating the tables
            rows = []
        if len(rows) == 3:
            first, second = rows[0], rows[1]
            m = Path(second["workdir"]) / "metrics.jsonl"
            if first["status"] == "done" and m.exists() and len(m.read_text().splitlines()) >= 25:
                break
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    else:
        pytest.fail("the sweep did not reach the second run in time")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = _rows(sweep_dir)
    second = rows[second["id"]]
    assert second["status"] == "running" and second["job"].startswith("pid:")
    worker_pid = int(second["job"].split(":")[1])
    for _ in range(100):  # PR_SET_PDEATHSIG: the worker dies with its launcher
        if _gone(worker_pid):
            break
        time.sleep(0.1)
    assert _gone(worker_pid)
    assert json.loads((Path(second["workdir"]) / "status.json").read_text())["status"] == "running"
    before_first, before_metrics = rows[first["id"]], _metrics(sweep_dir, first["id"])

    out = _cli(args).communicate(timeout=300)[0]
    assert "went back to pending" in out and second["id"] in out
    rows = _check_done(sweep_dir)
    ids = list(rows)
    assert [rows[i]["attempts"] for i in ids] == [1, 2, 1]
    assert rows[ids[0]] == before_first  # the finished run's record is untouched
    assert _metrics(sweep_dir, ids[0]) == before_metrics
    log = (Path(rows[ids[1]]["workdir"]) / "worker.log").read_text()
    assert log.count(f"run {ids[1]}") == 2  # trained in two pieces, the second resumed from its checkpoint

    # a third time: nothing left to do
    out = _cli(args).communicate(timeout=120)[0]
    assert "trained 0" in out and _rows(sweep_dir) == rows

    # status and export
    st = _cli(["status", str(sweep_dir), "--export", "csv", str(tmp_path / "runs.csv")])
    out = st.communicate(timeout=120)[0]
    assert st.returncode == 0, out
    assert all(i in out for i in ids) and "400/400" in out
    df = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(df["id"]) == sorted(ids) and set(df["status"]) == {"done"}
    assert {"params", "state_size", "flops", "tokens", "final_val_loss", "context"} <= set(df.columns)


@pytest.mark.slow
def test_two_launchers_at_once_split_the_work(tmp_path):
    spec = write_spec(tmp_path / "spec.py", steps=(10, 12, 14, 16))
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", str(spec), "--sweep-dir", str(sweep_dir), "--workers", "1", "--no-progress"]
    procs = [_cli(args), _cli(args)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    rows = _check_done(sweep_dir)
    assert len(rows) == 4 and all(r["attempts"] == 1 for r in rows.values())
    assert len({r["pid"] for r in rows.values()}) == 2  # both launchers trained runs
    for rid, r in rows.items():
        log = (Path(r["workdir"]) / "worker.log").read_text()
        assert log.count(f"run {rid}") == 1
    # each launcher's sweep MFU: its own runs' FLOPs over its wall time and the (test's fixed) peak of one core
    with _db(sweep_dir) as db:
        launches = [dict(r) for r in db.execute("SELECT * FROM launches")]
    assert len(launches) == 2 and sum(x["trained"] for x in launches) == 4
    assert sum(x["flops"] for x in launches) == pytest.approx(sum(r["flops"] for r in rows.values()))
    for x in launches:
        assert x["cores_used"] == x["cpus"] and x["peak_gflops"] == 100.0  # one worker: all cores (conftest)
        assert x["mfu"] == pytest.approx(x["flops"] / (x["wall_s"] * 100e9))
    assert all("sweep MFU" in out and "GFLOP/s fp32 GEMM peak" in out for out in outs)


def test_failed_runs_are_retried_then_marked_failed(tmp_path):
    spec = spec_dict(steps=(10,))
    from scaling.sweep import expand

    (plan,) = expand(spec)
    wd = tmp_path / "sweep" / "runs" / plan.run_id
    wd.mkdir(parents=True)
    # a workdir whose config.json has this run's id but a config that cannot be built: the worker fails
    (wd / "config.json").write_text(json.dumps({"run_id": plan.run_id, "config": {"model": {"d_model": "x"}}}))
    res = run_sweep(spec, tmp_path / "sweep", retries=1, log=lambda s: None)
    assert res.counts["failed"] == 1 and res.failed_ids == [plan.run_id]
    (row,) = _rows(tmp_path / "sweep").values()
    assert row["attempts"] == 2 and row["failures"] == 2 and "d_model" in row["error"]
    # the cause fixed (here: the bad workdir removed), running the sweep again retries the failed run
    shutil.rmtree(wd)
    said = []
    res = run_sweep(spec, tmp_path / "sweep", retries=1, log=said.append)
    assert res.counts["done"] == 1 and not res.failed_ids
    assert any("1 failed run(s) go back to pending" in s for s in said)
    # the launch's sweep MFU: the run's FLOPs over the launch's training time and the peak (conftest's 100 GFLOP/s)
    (row,) = _rows(tmp_path / "sweep").values()
    assert res.trained_flops == pytest.approx(row["flops"]) and res.peak_gflops == 100.0
    assert res.mfu == pytest.approx(row["flops"] / (res.train_s * 100e9 * res.cores_used / usable_cpus()))
    with _db(tmp_path / "sweep") as db:
        failed, launch = [dict(r) for r in db.execute("SELECT * FROM launches ORDER BY started")]
    assert failed["trained"] == 2 and failed["flops"] == 0 and failed["mfu"] is None  # two failed attempts
    assert launch["trained"] == 1 and launch["mfu"] == pytest.approx(res.mfu)


def test_workdir_lock_keeps_a_second_trainer_out(tmp_path):
    (plan,) = __import__("scaling.sweep", fromlist=["expand"]).expand(spec_dict(steps=(10,)))
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps({"run_id": plan.run_id, "config": plan.cfg.to_dict()}))
    fd = lock_workdir(wd, timeout=1)
    try:
        p = subprocess.run([sys.executable, "-m", "scaling.sweep.worker", str(wd), "--lock-timeout", "0.5"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == EXIT_LOCKED and "locked by another trainer" in p.stderr
        assert not (wd / "metrics.jsonl").exists()
    finally:
        os.close(fd)
    fd = lock_workdir(wd, timeout=1)  # released with its holder
    os.close(fd)


@pytest.mark.slow
def test_ray_launcher_runs_a_sweep(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(spec_dict(steps=(10, 12)), tmp_path / "sweep", launcher="ray", log=lambda s: None)
    finally:
        ray.shutdown()
    assert res.counts["done"] == 2, _rows(tmp_path / "sweep")
    rows = _check_done(tmp_path / "sweep")
    assert all(r["job"].startswith("ray:") for r in rows.values())


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep(tmp_path):
    pytest.importorskip("submitit")
    res = run_sweep(spec_dict(steps=(10, 12)), tmp_path / "sweep", launcher="slurm", slurm_cluster="local",
                    log=lambda s: None)
    assert res.counts["done"] == 2, _rows(tmp_path / "sweep")
    rows = _check_done(tmp_path / "sweep")
    assert all(r["job"].startswith("slurm:") for r in rows.values())


def _workdir(path: Path, plan) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"run_id": plan.run_id, "config": plan.cfg.to_dict()}))
    return path


@pytest.mark.long
def test_serving_worker_trains_runs_in_turn_and_survives_a_bad_one(tmp_path):
    """One serving worker answers each workdir with its exit code: two runs trained in one process equal the same
    runs trained by one-shot workers (metrics and final loss), and a bad workdir between them fails alone."""
    from scaling.sweep import expand
    from scaling.sweep.backends import LocalBackend
    from scaling.sweep.worker import EXIT_BAD, EXIT_DONE

    plans = expand(spec_dict(steps=(4, 6)))
    served = [_workdir(tmp_path / "served" / p.run_id, p) for p in plans]
    bad = tmp_path / "served" / "bad"
    bad.mkdir()
    backend = LocalBackend(1, tmp_path)
    try:
        codes, pids = [], set()
        for wd in (served[0], bad, served[1]):
            job = backend.submit(wd)
            deadline = time.time() + 240
            while (code := backend.poll(job)[0]) is None:
                assert time.time() < deadline, (wd / "worker.log").read_text() if wd.exists() else ""
                time.sleep(0.1)
            codes.append(code)
            pids.add(job.pid)
    finally:
        backend.close()
    assert codes == [EXIT_DONE, EXIT_BAD, EXIT_DONE] and len(pids) == 1  # one process served all three
    for p, wd in list(zip(plans, served, strict=True))[1:]:  # the run trained after another one in the process
        alone = _workdir(tmp_path / "alone" / p.run_id, p)
        proc = subprocess.run([sys.executable, "-m", "scaling.sweep.worker", str(alone)], cwd=ROOT,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == EXIT_DONE, proc.stdout + proc.stderr
        rows = [[{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
                 for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (wd, alone)]
        assert rows[0] == rows[1]
        assert f"run {p.run_id}" in (wd / "worker.log").read_text()


@pytest.mark.slow
def test_a_serving_worker_that_dies_fails_its_run_and_the_next_run_gets_a_new_one(tmp_path):
    from scaling.sweep import expand
    from scaling.sweep.backends import LocalBackend
    from scaling.sweep.worker import EXIT_DONE, EXIT_ERROR

    short, long_ = expand(spec_dict(steps=(6, 400)))
    backend = LocalBackend(1, tmp_path)
    try:
        job = backend.submit(_workdir(tmp_path / "long", long_))
        metrics = tmp_path / "long" / "metrics.jsonl"
        deadline = time.time() + 240
        while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
            assert time.time() < deadline and backend.poll(job)[0] is None
            time.sleep(0.05)
        os.kill(job.pid, signal.SIGKILL)
        while (answer := backend.poll(job))[0] is None:
            time.sleep(0.05)
        assert answer[0] == EXIT_ERROR and "died" in answer[1]
        job2 = backend.submit(_workdir(tmp_path / "short", short))
        assert job2.pid != job.pid
        while (code := backend.poll(job2)[0]) is None:
            assert time.time() < deadline + 240
            time.sleep(0.1)
        assert code == EXIT_DONE
    finally:
        backend.close()


def test_pack_trains_runs_of_one_shape_together_and_needs_the_local_launcher(tmp_path):
    """--pack 3 on a spec of one shape at three lengths and two seeds: every run done and recorded once, the first
    three trained as one pack by one worker, the rest as a pack of the three left; other launchers are refused."""
    from scaling.sweep.spec import SpecError

    spec = spec_dict(steps=(4, 6, 8), seeds=2)
    result = run_sweep(spec, tmp_path / "sw", workers=1, pack=3, log=lambda *_: None)
    assert result.trained == 6 and result.counts["done"] == 6
    rows = _check_done(tmp_path / "sw")
    packed = [rid for rid, r in rows.items() if "(packed)" in Path(r["workdir"], "worker.log").read_text()
              or "trained in a pack" in Path(r["workdir"], "worker.log").read_text()]
    assert len(packed) == 6
    assert len({r["job"] for r in rows.values()}) == 1  # one serving worker trained both packs
    with pytest.raises(SpecError, match="--pack 2"):
        run_sweep(spec, tmp_path / "ray", launcher="ray", pack=2)
