"""Results store: schema, atomic claims across threads and processes, stale claims, retries, metrics upserts."""

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scaling.sweep.store import Store, owner_alive, owner_token, to_frame

ROOT = Path(__file__).parents[2]


def _runs(n, start=0):
    return [{"id": f"run{i:04d}", "config": {"i": i}, "variant": "v", "budget": 1e9, "total_steps": 10,
             "context": 32, "batch_size": 4, "flops_per_token": 1e3, "params": 100, "non_embedding_params": 50,
             "state_size": 64} for i in range(start, start + n)]


def test_schema_wal_and_idempotent_registration(tmp_path):
    with Store(tmp_path) as s:
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        s.add_sweep("t", {"name": "t"})
        assert s.add_runs("t", _runs(5)) == 5
        assert s.add_runs("t", _runs(7)) == 2  # the 5 known runs are left alone, 2 are new
        assert [r["id"] for r in s.runs()] == [f"run{i:04d}" for i in range(7)]
        assert s.counts() == {"pending": 7, "running": 0, "done": 0, "failed": 0, "diverged": 0}
        cols = {r[1] for r in s.db.execute("PRAGMA table_info(runs)")}
        for c in ("params", "non_embedding_params", "state_size", "context", "flops", "tokens", "final_val_loss",
                  "final_train_loss", "attempts", "host", "pid", "owner", "budget", "status", "config"):
            assert c in cols


def test_claims_from_threads_are_exclusive(tmp_path):
    with Store(tmp_path) as s:
        s.add_sweep("t", {})
        s.add_runs("t", _runs(60))
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer():
        with Store(tmp_path) as s:
            while (row := s.claim()) is not None:
                with lock:
                    claimed.append(row["id"])

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"run{i:04d}" for i in range(60)]  # each exactly once
    with Store(tmp_path) as s:
        assert all(r["attempts"] == 1 and r["status"] == "running" for r in s.runs())


CLAIMER = """
import sys, json
from scaling.sweep.store import Store
out = []
with Store(sys.argv[1]) as s:
    while (row := s.claim()) is not None:
        out.append(row["id"])
print(json.dumps(out))
"""


def test_claims_from_processes_are_exclusive(tmp_path):
    with Store(tmp_path) as s:
        s.add_sweep("t", {})
        s.add_runs("t", _runs(80))
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT) for _ in range(3)]
    got = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    flat = [i for g in got for i in g]
    assert sorted(flat) == [f"run{i:04d}" for i in range(80)]
    with Store(tmp_path) as s:
        owners = {r["owner"] for r in s.runs()}
    assert len(owners) == sum(1 for g in got if g)  # each process is its own owner


def test_claim_respects_ids_and_order(tmp_path):
    with Store(tmp_path) as s:
        s.add_sweep("t", {})
        s.add_runs("t", _runs(5))
        assert s.claim(ids=["run0003", "run0001"])["id"] == "run0001"
        assert s.claim(ids=["run0003", "run0001"])["id"] == "run0003"
        assert s.claim(ids=["run0003", "run0001"]) is None
        assert s.claim()["id"] == "run0000"


def test_stale_claims_of_dead_launchers_return_to_pending(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_owner = owner_token(dead.pid).rsplit(":", 1)[0] + ":12345"  # its pid and a start time of no live process
    assert not owner_alive(dead_owner) and owner_alive(owner_token())
    with Store(tmp_path) as s:
        s.add_sweep("t", {})
        s.add_runs("t", _runs(3))
        s.claim(owner=dead_owner)
        s.claim()  # ours: alive
        assert s.recover_stale() == ["run0000"]
        rows = {r["id"]: r for r in s.runs()}
        assert rows["run0000"]["status"] == "pending" and rows["run0000"]["attempts"] == 1
        assert rows["run0001"]["status"] == "running"
        assert s.claim()["id"] == "run0000"
        assert s.run("run0000")["attempts"] == 2


def test_finish_upserts_metrics_and_retries_failures(tmp_path):
    rows = [{"step": 1, "train_loss": 5.0, "tokens": 128, "flops": 1.0}, {"step": 2, "train_loss": 4.0},
            {"step": 2, "val_loss": 4.5}]
    with Store(tmp_path) as s:
        s.add_sweep("t", {})
        s.add_runs("t", _runs(2))
        r = s.claim()
        summary = {"steps": 2, "tokens": 256, "flops": 2.0, "final_val_loss": 4.5, "final_train_loss": 4.0}
        assert s.finish(r["id"], "failed", summary=summary, metrics=rows, retries=1, error="boom") == "pending"
        r = s.claim()
        assert r["id"] == "run0000" and r["attempts"] == 2
        assert s.finish(r["id"], "done", summary=summary, metrics=rows, retries=1) == "done"
        m = s.metrics("run0000")
        assert [(x["step"], x["train_loss"], x["val_loss"]) for x in m] == [(1, 5.0, None), (2, 4.0, 4.5)]
        done = s.run("run0000")
        assert done["status"] == "done" and done["flops"] == 2.0 and done["final_val_loss"] == 4.5
        assert done["failures"] == 1 and done["finished"] is not None
        # a run that keeps failing ends failed after retries + 1 tries
        r = s.claim()
        assert s.finish(r["id"], "failed", summary=summary, metrics=[], retries=0, error="boom") == "failed"
        assert s.counts()["failed"] == 1
        # recording twice never duplicates metrics rows
        with pytest.raises(sqlite3.IntegrityError):
            s.db.execute("INSERT INTO metrics (run_id, step) VALUES ('run0000', 1)")
        df = to_frame(s)
        assert list(df["id"]) == ["run0000", "run0001"] and "final_val_loss" in df.columns
