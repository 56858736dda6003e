"""The results store of a sweep: SQLite at ``<sweep_dir>/sweep.db`` (WAL mode, explicit transactions).

Tables
------
``sweeps``   one row per sweep name: the spec path and the spec as JSON, creation and update times.
``runs``     one row per run id: the resolved config (JSON), status (pending / running / done / failed /
             diverged), attempts (claims), failures, the claiming launcher (host, pid, owner), the worker
             (job: a pid, Ray task or Slurm job id), timestamps (unix seconds), and the summary columns
             analysis queries directly: budget and FLOPs (training FLOPs, 3 x forward), params,
             non_embedding_params, state_size (elements per sequence), context, tokens, steps done and
             total, final val loss / bits per byte and final train loss (nats per token), and ``extra``: the
             run's other final eval metrics as JSON (e.g. ``{"task_accuracy": 0.97}``; see launchers.collect),
             and ``depends_on``: the id of a run that must be done before this one is claimed (a run whose
             ``train.init_from`` is another run of the sweep); if that run ends failed or diverged, this
             one is marked failed instead of waiting forever.
``metrics``  one row per (run id, step): tokens, flops, train loss, val loss, val bpb, lr; the primary key
             makes re-ingesting a run (after a resume) replace its rows instead of duplicating them.

Only launchers write the database; workers write only their run's workdir (``<sweep_dir>/runs/<id>/``).
Claiming is atomic (``BEGIN IMMEDIATE``): a pending run is claimed by exactly one launcher, also across
processes. A claim whose launcher died on this host (checked by pid and process start time, so a reused pid
does not count as alive) goes back to pending on the next launcher's start.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STATUSES = ("pending", "running", "done", "failed", "diverged")
FINISHED = ("done", "failed", "diverged")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY, spec_path TEXT, spec TEXT, created REAL, updated REAL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    sweep TEXT NOT NULL REFERENCES sweeps(name),
    variant TEXT, size TEXT, point TEXT,
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed', 'diverged')),
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    host TEXT, pid INTEGER, owner TEXT, job TEXT,
    created REAL, claimed REAL, finished REAL, updated REAL,
    budget REAL, planned_flops REAL, flops_per_token REAL, flops REAL,
    params INTEGER, non_embedding_params INTEGER, state_size INTEGER, context INTEGER, batch_size INTEGER,
    tokens INTEGER, steps INTEGER NOT NULL DEFAULT 0, total_steps INTEGER,
    final_val_loss REAL, final_val_bpb REAL, final_train_loss REAL,
    error TEXT, workdir TEXT, extra TEXT, depends_on TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, seq);
CREATE TABLE IF NOT EXISTS launches (
    started REAL NOT NULL, wall_s REAL, launcher TEXT, workers INTEGER, trained INTEGER, flops REAL,
    cores_used INTEGER, cpus INTEGER, peak_gflops REAL, mfu REAL, host TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    tokens INTEGER, flops REAL, train_loss REAL, val_loss REAL, val_bpb REAL, lr REAL,
    PRIMARY KEY (run_id, step)
);
"""

RUN_SUMMARY_COLUMNS = (
    "variant", "size", "point", "budget", "planned_flops", "flops_per_token", "total_steps", "params",
    "non_embedding_params", "state_size", "context", "batch_size", "depends_on",
)


# ----------------------------------------------------------------------------------------------------
# Process identity: a pid plus its start time, so that a recycled pid is not mistaken for the launcher


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux /proc), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses; the fields after the last ')' are fixed
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_token(pid: int | None = None) -> str:
    """``host:pid:start`` identifying a live process (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{process_start(pid) or 0}"


def owner_alive(owner: str) -> bool:
    """Whether the process named by an :func:`owner_token` of this host still runs."""
    _host, pid, start = owner.rsplit(":", 2)
    pid, start = int(pid), int(start)
    now = process_start(pid)
    if now is None:
        if Path("/proc").is_dir():
            return False
        try:  # no /proc: signal 0 only tells whether some process has the pid
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return start == 0 or now == start


# ----------------------------------------------------------------------------------------------------


class Store:
    """A connection to ``<sweep_dir>/sweep.db``. One per thread or process (sqlite3 connections are not
    shared across threads). Every write is a short ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, sweep_dir: str | Path, *, timeout: float = 60.0):
        self.sweep_dir = Path(sweep_dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.sweep_dir / "sweep.db"
        # autocommit mode: transactions are explicit (BEGIN IMMEDIATE), so a claim's read and write are one
        self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self._retry(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
        # NORMAL is durable against a killed process (not a power cut) in WAL mode, and far fewer fsyncs
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.tx():  # (executescript would commit on its own; run the statements one by one instead)
            for stmt in filter(str.strip, SCHEMA.split(";")):
                self.db.execute(stmt)
            have = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
            if "extra" not in have:  # a database written before the column existed
                self.db.execute("ALTER TABLE runs ADD COLUMN extra TEXT")
            if "depends_on" not in have:
                self.db.execute("ALTER TABLE runs ADD COLUMN depends_on TEXT")

    def _retry(self, fn, tries: int = 50):
        for i in range(tries):
            try:
                return fn()
            except sqlite3.OperationalError as e:  # switching to WAL needs a moment alone with the file
                if "locked" not in str(e) or i == tries - 1:
                    raise
                time.sleep(0.05 * (1 + i % 5))

    @contextlib.contextmanager
    def tx(self):
        """One write transaction: BEGIN IMMEDIATE takes the write lock up front, so read-then-write is atomic."""
        self._retry(lambda: self.db.execute("BEGIN IMMEDIATE"))
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------------------
    # Registration

    def add_sweep(self, name: str, spec: dict, spec_path: str | None = None) -> None:
        now = time.time()
        blob = json.dumps(spec, sort_keys=True, default=str)
        with self.tx() as db:
            db.execute("INSERT INTO sweeps (name, spec_path, spec, created, updated) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET spec_path=excluded.spec_path, spec=excluded.spec, "
                       "updated=excluded.updated", (name, spec_path, blob, now, now))

    def add_runs(self, sweep: str, runs: Iterable[dict[str, Any]]) -> int:
        """Insert runs not yet known (by id); existing runs, whatever their status, are left alone.

        Each run is a dict with "id", "config" (a dict) and the RUN_SUMMARY_COLUMNS. Returns how many were new.
        """
        now = time.time()
        added = 0
        with self.tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM runs").fetchone()[0]
            for r in runs:
                cols = {c: r.get(c) for c in RUN_SUMMARY_COLUMNS}
                cur = db.execute(
                    f"INSERT OR IGNORE INTO runs (id, seq, sweep, config, status, created, updated, workdir, "
                    f"{', '.join(cols)}) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, {', '.join('?' * len(cols))})",
                    (r["id"], seq, sweep, json.dumps(r["config"], sort_keys=True, default=str), now, now,
                     str(self.workdir(r["id"])), *cols.values()))
                if cur.rowcount:
                    added += 1
                    seq += 1
        return added

    def workdir(self, run_id: str) -> Path:
        return self.sweep_dir / "runs" / run_id

    # ------------------------------------------------------------------------------------------------
    # Claims

    def claim(self, owner: str | None = None, ids: Iterable[str] | None = None) -> sqlite3.Row | None:
        """Atomically move the first pending run (in spec order, among ``ids`` if given) whose ``depends_on``
        run (if any) is done to running, owned by ``owner`` (default: this process). Returns its row, or None
        when nothing can be claimed now. A pending run whose dependency ended failed or diverged is marked
        failed on the way."""
        owner = owner or owner_token()
        host, pid, _ = owner.rsplit(":", 2)
        allowed = None if ids is None else set(ids)
        now = time.time()
        with self.tx() as db:
            for row in db.execute("SELECT r.id, r.depends_on, d.status AS dep_status FROM runs r LEFT JOIN runs d "
                                  "ON d.id = r.depends_on WHERE r.status = 'pending' ORDER BY r.seq").fetchall():
                if allowed is not None and row["id"] not in allowed:
                    continue
                if row["depends_on"] and row["dep_status"] in ("failed", "diverged"):
                    db.execute("UPDATE runs SET status='failed', finished=?, updated=?, error=? WHERE id=?",
                               (now, now, f"run {row['depends_on']}, which it is initialised from, ended "
                                f"{row['dep_status']}", row["id"]))
                    continue
                if row["depends_on"] and row["dep_status"] != "done":
                    continue  # waits for the run it starts from
                db.execute("UPDATE runs SET status='running', attempts=attempts+1, host=?, pid=?, owner=?, "
                           "job=NULL, claimed=?, updated=?, error=NULL WHERE id=? AND status='pending'",
                           (host, int(pid), owner, now, now, row["id"]))
                return db.execute("SELECT * FROM runs WHERE id=?", (row["id"],)).fetchone()
        return None

    def set_job(self, run_id: str, job: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE runs SET job=?, updated=? WHERE id=?", (str(job), time.time(), run_id))

    def release(self, run_id: str, owner: str | None = None) -> None:
        """Give a claimed run back (pending) without counting a failure: the launcher was interrupted."""
        owner = owner or owner_token()
        with self.tx() as db:
            db.execute("UPDATE runs SET status='pending', owner=NULL, job=NULL, updated=? "
                       "WHERE id=? AND status='running' AND owner=?", (time.time(), run_id, owner))

    def recover_stale(self) -> list[str]:
        """Runs claimed by a launcher of this host that no longer runs go back to pending. Returns their ids."""
        host = socket.gethostname()
        stale = []
        with self.tx() as db:
            for row in db.execute("SELECT id, owner FROM runs WHERE status='running' AND host=?", (host,)):
                if not row["owner"] or not owner_alive(row["owner"]):
                    stale.append(row["id"])
            for rid in stale:
                db.execute("UPDATE runs SET status='pending', owner=NULL, job=NULL, updated=? WHERE id=?",
                           (time.time(), rid))
        return stale

    def retry_failed(self, ids=None) -> list[str]:
        """Failed runs (among ``ids`` if given) go back to pending with a fresh count of failures: a new launcher
        invocation retries them (diverged runs stay final). Returns their ids."""
        wanted = None if ids is None else set(ids)
        with self.tx() as db:
            rows = db.execute("SELECT id FROM runs WHERE status='failed'").fetchall()
            chosen = [r["id"] for r in rows if wanted is None or r["id"] in wanted]
            for rid in chosen:
                db.execute("UPDATE runs SET status='pending', failures=0, owner=NULL, job=NULL, updated=? "
                           "WHERE id=?", (time.time(), rid))
        return chosen

    # ------------------------------------------------------------------------------------------------
    # Results

    def finish(self, run_id: str, status: str, *, summary: dict[str, Any], metrics: list[dict[str, Any]],
               retries: int = 0, error: str | None = None, owner: str | None = None) -> str:
        """Record the end of a claimed run: its metrics rows (upserted by step) and summary, in one transaction.

        ``status`` is what the worker reported: "done", "diverged" or "failed". A failure goes back to pending
        while the run has failed at most ``retries`` times, else it is final. Returns the status stored.
        """
        if status not in FINISHED:
            raise ValueError(f"status {status!r}: must be one of {', '.join(FINISHED)}")
        owner = owner or owner_token()
        now = time.time()
        with self.tx() as db:
            row = db.execute("SELECT status, owner, failures FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"run {run_id} is not in {self.path}")
            if row["status"] != "running" or row["owner"] != owner:
                return row["status"]  # not ours (any more): another launcher recovered it; leave its record
            failures = row["failures"] + (status == "failed")
            stored = "pending" if status == "failed" and failures <= retries else status
            self._upsert_metrics(db, run_id, metrics)
            cols = {k: summary.get(k) for k in ("steps", "tokens", "flops", "final_val_loss", "final_val_bpb",
                                                  "final_train_loss")}
            cols["extra"] = json.dumps(summary["extra"], sort_keys=True) if summary.get("extra") else None
            db.execute(
                f"UPDATE runs SET status=?, failures=?, error=?, finished=?, updated=?, "
                f"{', '.join(f'{k}=COALESCE(?, {k})' for k in cols)}"
                f"{', owner=NULL' if stored == 'pending' else ''} WHERE id=?",
                (stored, failures, error, now if stored in FINISHED else None, now, *cols.values(), run_id))
            return stored

    @staticmethod
    def _upsert_metrics(db, run_id: str, rows: list[dict[str, Any]]) -> None:
        db.executemany(
            "INSERT INTO metrics (run_id, step, tokens, flops, train_loss, val_loss, val_bpb, lr) "
            "VALUES (:run_id, :step, :tokens, :flops, :train_loss, :val_loss, :val_bpb, :lr) "
            "ON CONFLICT(run_id, step) DO UPDATE SET tokens=excluded.tokens, flops=excluded.flops, "
            "train_loss=COALESCE(excluded.train_loss, train_loss), val_loss=COALESCE(excluded.val_loss, val_loss), "
            "val_bpb=COALESCE(excluded.val_bpb, val_bpb), lr=COALESCE(excluded.lr, lr)",
            [{"run_id": run_id, "tokens": None, "flops": None, "train_loss": None, "val_loss": None,
              "val_bpb": None, "lr": None, **r} for r in rows])

    # ------------------------------------------------------------------------------------------------
    # Queries

    def runs(self, ids: Iterable[str] | None = None) -> list[sqlite3.Row]:
        rows = self.db.execute("SELECT * FROM runs ORDER BY seq").fetchall()
        if ids is not None:
            keep = set(ids)
            rows = [r for r in rows if r["id"] in keep]
        return rows

    def run(self, run_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()

    def metrics(self, run_id: str) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM metrics WHERE run_id=? ORDER BY step", (run_id,)).fetchall()

    def counts(self, ids: Iterable[str] | None = None) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.runs(ids):
            out[r["status"]] += 1
        return out

    def record_launch(self, **row: Any) -> None:
        """One row of ``launches``: what a launcher trained, in how long, and its sweep MFU
        (scaling.sweep.utilisation)."""
        cols = ("started", "wall_s", "launcher", "workers", "trained", "flops", "cores_used", "cpus", "peak_gflops",
                "mfu", "host")
        with self.tx() as db:
            db.execute(f"INSERT INTO launches ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                       tuple(row.get(c) for c in cols))

    def launches(self) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT * FROM launches ORDER BY started"))

    def sweeps(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM sweeps ORDER BY created").fetchall()


def open_existing(sweep_dir: str | Path) -> Store:
    """A Store on a sweep directory that must already hold sweep.db (for `scaling status`)."""
    if not (Path(sweep_dir) / "sweep.db").is_file():
        raise FileNotFoundError(f"{str(sweep_dir)!r} is not a sweep directory: it has no sweep.db "
                                "(start one with `scaling sweep SPEC --sweep-dir DIR`)")
    return Store(sweep_dir)


def to_frame(store: Store, *, live_progress: bool = True):
    """The runs as a flat pandas DataFrame, one row per run: every runs column (config as JSON) plus one
    column per axis key of the run's point (e.g. ``train.lr``). ``steps`` of a running run is read from its
    workdir's metrics.jsonl when ``live_progress`` (the database has it only once the run ends)."""
    import pandas as pd

    from scaling.rundir import read_progress

    records = []
    for r in store.runs():
        rec = dict(r)
        if live_progress and rec["status"] == "running" and rec["workdir"]:
            rec["steps"] = read_progress(rec["workdir"]).get("step", rec["steps"])
        for key, value in json.loads(rec["point"] or "{}").items():
            rec[key] = value
        records.append(rec)
    return pd.DataFrame.from_records(records)
