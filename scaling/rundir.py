"""The run directory: one module owns its files and the run id.

A run's workdir holds

``config.json``
    ``{"run_id": ..., "config": ...}``: the resolved config and its :func:`run_id`. Written once, by whoever
    starts the run (``scaling train``, a sweep launcher, ``scaling convert``); a workdir holds one run.
``status.json``
    ``{"status": "running" | "done" | "diverged", "step": ..., ...summary}``, rewritten atomically.
``metrics.jsonl``
    One JSON row per logged step (``"kind": "train"``) or evaluation (``"kind": "eval"``); see
    :class:`MetricsLog`. A line cut by a kill is skipped by every reader.
``eval_contexts.json``, ``tb/``, ``checkpoints/`` (scaling.checkpoint), ``worker.log`` (a sweep worker's output).

Run ids. ``run_id(cfg)`` is the first 12 hex digits of the SHA-256 of the resolved config as sorted JSON, with
two adjustments, so that a run's id stays what it was when the run (or its sweep) started:

- **Fields added after schema 1 are left out of the hash while at their default.** Each is registered in
  :data:`ADDED_FIELDS` with the value that means "what runs did before the field existed". A config at that
  value hashes as if the field did not exist, so adding a field keeps the id of every existing run and sweep
  (a sweep resumes after an upgrade: its store matches runs by id); any other value is hashed and gives a new
  id. Adding a config field therefore takes one line here, ``("train", "microbatches"): 1,``; a field added
  without it changes every id (the pinned ids of tests/test_rundir.py catch that).
- Fields in :data:`RESOLVED_WHEN_NONE` (None meaning "another field's default") hash as what they resolve to.
- Fields in :data:`LAYOUT_FIELDS` (``train.mesh``) are never hashed: they place the run on the machine without
  changing what it computes, so a run checkpointed on one mesh resumes on another.

Values, not differences from the defaults, are hashed: changing the default of an existing field keeps the ids
of existing runs (their config.json holds the old value) and gives new runs at the new default new ids.
:data:`SCHEMA_VERSION` names this rule; a rule that changed ids would bump it and hash it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# Fields added after schema 1 (a path of keys into the config) -> the value at which the field does what runs
# did before it existed: left out of the hash at that value. One line per field added.
ADDED_FIELDS: dict[tuple[str, ...], Any] = {
    ("data", "eos_id"): None,
    ("train", "microbatches"): None,
    ("train", "remat"): None,
    ("model", "scan_layers"): None,
    ("model", "attention", "impl"): "auto",
    ("model", "embed_norm"): False,
    ("model", "mlp"): True,
    ("model", "retention", "form"): "chunked",
    ("train", "min_lr"): None,
    ("train", "schedule"): "cosine",
    ("train", "blend_steps"): None,
    # mixer sections added later (scaling/mixers/): left out of every run that keeps these values. Frozen copies of
    # the defaults they were added with, not read from the specs: a later change of a default must not change the
    # ids of runs that stored the old one
    ("model", "gla"): {"n_heads": 4, "chunk_size": 64, "gate_rank": 16, "gate_normalizer": 16.0, "conv": 0},
    ("model", "gated_delta"): {"n_heads": 4, "chunk_size": 64, "conv": 4, "dt_min": 1e-3, "dt_max": 1e-1,
                               "a_init_range": (1.0, 16.0)},
    ("model", "based"): {"n_heads": 4, "feature_dim": 16, "chunk_size": 64, "window": 64, "rope_theta": 10_000.0,
                         "conv": 0},
}

# How a run is laid out on the machine, not what it computes (the sharded run equals the one-device run, tests
# hold it to 1e-5): never hashed, so a run checkpointed on one mesh resumes on another.
LAYOUT_FIELDS: tuple[tuple[str, ...], ...] = (("train", "mesh"),)

# Fields whose None means "the default of another field": hashed as what they resolve to, so that a run configured
# with the resolved value explicitly (as every run was before None was allowed) keeps its id.
RESOLVED_WHEN_NONE = {("data", "packing"): lambda d: _default_packing(d["data"].get("source", "stdlib"))}

CONFIG, STATUS, METRICS, EVAL_CONTEXTS = "config.json", "status.json", "metrics.jsonl", "eval_contexts.json"
CHECKPOINTS, TENSORBOARD, WORKER_LOG = "checkpoints", "tb", "worker.log"


def _default_packing(source: str) -> bool:
    from scaling.data.config import default_packing

    return default_packing(source)


def _as_dict(cfg) -> dict:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else copy.deepcopy(dict(cfg))


def _canon(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _parent(d: dict, path: tuple[str, ...]) -> dict | None:
    """The dict holding the last key of ``path`` in the nested dict ``d``, or None if a section is missing."""
    node = d
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def hashed_config(cfg) -> dict:
    """The dict :func:`run_id` hashes: the resolved config without the LAYOUT_FIELDS, without the ADDED_FIELDS at
    their registered value, with RESOLVED_WHEN_NONE fields resolved."""
    d = _as_dict(cfg)
    for path in LAYOUT_FIELDS:
        node = _parent(d, path)
        if node is not None:
            node.pop(path[-1], None)
    for path, default in ADDED_FIELDS.items():
        node, key = _parent(d, path), path[-1]
        if node is not None and key in node and _canon(node[key]) == _canon(default):
            del node[key]
    for (section, key), resolve in RESOLVED_WHEN_NONE.items():
        if key in d.get(section, {}) and d[section][key] is None:
            d[section] = {**d[section], key: resolve(d)}
    return d


def run_id(cfg) -> str:
    """A stable id of a run config (a ConfigDict or its dict form): see the module docstring."""
    return hashlib.sha256(_canon(hashed_config(cfg)).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------------
# JSON files


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file beside it, then ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None if it is missing or unreadable (e.g. cut by a kill)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def has_config(workdir: str | Path) -> bool:
    return (Path(workdir) / CONFIG).is_file()


def write_config(workdir: str | Path, rid: str, config: dict) -> str | None:
    """Write ``config.json`` (``rid`` and the config's dict form) unless the workdir already has one; create the
    workdir. Returns the run id the workdir holds: ``rid``, or another (the caller refuses to mix runs)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if has_config(workdir):
        return (read_json(workdir / CONFIG) or {}).get("run_id")
    write_json(workdir / CONFIG, {"run_id": rid, "config": config})
    return rid


def read_config(workdir: str | Path) -> dict:
    """``config.json`` of a run workdir: ``{"run_id", "config"}`` (the config as a dict: give it to
    ``scaling.config.from_dict``). Raises FileNotFoundError if there is none, ValueError if it is not one."""
    path = Path(workdir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{str(workdir)!r} is not a run workdir: it has no {CONFIG}")
    blob = read_json(path)
    if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict):
        raise ValueError(f"{str(path)!r}: not a run config written by `scaling train`")
    return blob


def write_status(workdir: str | Path, status: str, **fields) -> None:
    write_json(Path(workdir) / STATUS, {"status": status, **fields})


def read_status(workdir: str | Path) -> dict:
    """``status.json`` ({} when there is none yet or it cannot be read)."""
    return read_json(Path(workdir) / STATUS) or {}


# ----------------------------------------------------------------------------------------------------
# Metrics


class NoMetrics:
    """The metrics log of a process other than the primary one in a multi-host run: writes nothing."""

    def write(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLog:
    """metrics.jsonl (rows past a resume point are dropped) and TensorBoard scalars."""

    def __init__(self, workdir: Path, resume_step: int):
        workdir = Path(workdir)
        self.path = workdir / METRICS
        kept = [line for line, row in _lines(self.path) if row["step"] <= resume_step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(r + "\n" for r in kept))
        os.replace(tmp, self.path)
        self.file = self.path.open("a")
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / TENSORBOARD), purge_step=resume_step + 1 if resume_step else None)

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        prefix = row["kind"]
        for key, value in row.items():
            if key not in ("kind", "step") and isinstance(value, (int, float)):
                self.tb.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def _lines(path: Path, text: str | None = None):
    """(line, row) of each whole JSON line of ``path`` (or of ``text``)."""
    if text is None:
        try:
            text = path.read_text()
        except OSError:
            return
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if isinstance(row, dict):
            yield line, row


def read_metrics(workdir: str | Path) -> list[dict]:
    """The rows of metrics.jsonl in file order ([] without one)."""
    return [row for _, row in _lines(Path(workdir) / METRICS)]


def read_progress(workdir: str | Path) -> dict[str, Any]:
    """The newest train and eval rows of a run's metrics.jsonl (reads only the file's tail): ``step``, ``loss``,
    ``tokens_per_s`` and ``val_loss``."""
    path = Path(workdir) / METRICS
    out: dict[str, Any] = {}
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - 4096, 0))
            text = f.read().decode(errors="replace")
    except OSError:
        return out
    for _, r in _lines(path, text):
        if r.get("kind") == "train":
            out.update(step=r["step"], loss=r.get("loss"), tokens_per_s=r.get("tokens_per_s"))
        elif r.get("kind") == "eval":
            out.update(val_loss=r.get("val_loss"))
    return out
