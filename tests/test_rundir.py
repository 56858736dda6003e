"""The run directory (scaling/rundir.py): stable run ids across schema changes, config/status/metrics files."""

import json
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from scaling import config, rundir
from scaling.rundir import run_id

ROOT = Path(__file__).parents[1]
TRANSFORMER = str(ROOT / "configs/models/transformer_tiny.py")
RETENTION = str(ROOT / "configs/models/power_retention_tiny.py")

# Ids computed by the code before scaling/rundir.py existed (scaling.train.run_id, schema 1). They must never
# change: sweep stores and run directories written then match their runs by these ids. If this fails after a
# config field was added, register the field in rundir.ADDED_FIELDS (at the value that does what runs did before).
PINNED = [
    (None, [], "5694d2228514"),
    (TRANSFORMER, [], "60712178f5a6"),
    (RETENTION, [], "bfb7cd783aee"),
    (RETENTION, ["train.lr=0.001", "data.packing=False"], "8e87e07959aa"),  # packing False: its stdlib default
    (TRANSFORMER, ["data.packing=True"], "33f70f9c4d09"),
]


@pytest.mark.parametrize(("path", "overrides", "rid"), PINNED)
def test_existing_run_ids_are_unchanged(path, overrides, rid):
    cfg = config.load(path, overrides)
    assert run_id(cfg) == rid
    assert run_id(cfg.to_dict()) == rid  # the dict form (config.json) hashes the same
    assert run_id(config.from_dict(json.loads(json.dumps(cfg.to_dict())))) == rid  # read back from JSON


def test_added_fields_exist_in_the_defaults():
    d = config.default_config().to_dict()
    for path in rundir.ADDED_FIELDS:
        node = d
        for key in path:
            assert key in node, f"rundir.ADDED_FIELDS names {'.'.join(path)}, which the config does not have"
            node = node[key]


def _add_field(monkeypatch, path, default, *, register=True):
    """Add a field with a default to the config schema (as a new version of the code would)."""
    section, *rest = path
    if section == "model" and len(rest) == 2:  # a mixer's section
        original = config.default_mixer_configs

        def mixers():
            out = original()
            out[rest[0]][rest[1]] = default
            return out

        monkeypatch.setattr(config, "default_mixer_configs", mixers)
    else:
        original = {"train": config.default_train_config, "model": config.default_model_config}[section]
        fn = f"default_{section}_config"

        def defaults():
            out = original()
            out[rest[0]] = default
            return out

        monkeypatch.setattr(config, fn, defaults)
    if register:
        monkeypatch.setitem(rundir.ADDED_FIELDS, tuple(path), default)


@pytest.mark.parametrize(("path", "default", "other"), [
    (("train", "new_knob"), None, 4),
    (("train", "future_accum"), 1, 2),
    (("model", "future_scan"), False, True),
    (("model", "retention", "new_knob"), 0, 3),
])
def test_a_new_field_at_its_default_keeps_every_id(monkeypatch, path, default, other):
    _add_field(monkeypatch, path, default)
    key = ".".join(path)
    for cfg_path, overrides, rid in PINNED:
        cfg = config.load(cfg_path, overrides)
        node = cfg
        for k in path:
            node = node[k]
        assert node == default  # the field is there, at its default
        assert run_id(cfg) == rid
        changed = config.load(cfg_path, [*overrides, (key, other)])
        assert run_id(changed) != rid  # any other value is a different run
    # an explicit value equal to the default is the same run as the default
    assert run_id(config.load(TRANSFORMER, [(key, default)])) == PINNED[1][2]


def test_an_unregistered_field_would_change_the_ids(monkeypatch):
    """Why a field must be registered: without it, the ids of all runs change (the pinned ids catch it)."""
    _add_field(monkeypatch, ("train", "forgotten"), None, register=False)
    assert run_id(config.load(TRANSFORMER)) != PINNED[1][2]


def test_a_sweep_started_before_an_upgrade_resumes_after_it(tmp_path, monkeypatch):
    """The store matches runs by id: a sweep planned before a defaulted field is added finds the same runs after,
    and a config.json written before it (without the field) still hashes to its recorded id (the worker's check)."""
    from scaling.sweep.launchers import prepare
    from tests.sweep.tiny import spec_dict

    spec = spec_dict(axes={"train.lr": [1e-3, 3e-3]})
    _, before, store, _ = prepare(spec, tmp_path)
    store.close()
    old_configs = {p.run_id: json.loads(json.dumps(p.cfg.to_dict())) for p in before}

    _add_field(monkeypatch, ("train", "future_accum"), 1)
    _add_field(monkeypatch, ("train", "future_layout"), None)
    _, after, store, _ = prepare(spec, tmp_path)
    try:
        assert [p.run_id for p in after] == [p.run_id for p in before]
        assert all(p.cfg.train.future_accum == 1 for p in after)
        assert store.add_runs("tiny", [{**p.summary(), "config": p.cfg.to_dict()} for p in after]) == 0
        assert len(store.runs()) == len(before)
    finally:
        store.close()
    for rid, d in old_configs.items():
        assert "future_accum" not in d["train"] and run_id(config.from_dict(d)) == rid


# ----------------------------------------------------------------------------------------------------
# Files


def test_config_json_is_written_once_and_read_back(tmp_path):
    cfg = config.load(TRANSFORMER)
    wd = tmp_path / "run"
    assert rundir.write_config(wd, run_id(cfg), cfg.to_dict()) == run_id(cfg)
    assert rundir.write_config(wd, "other", {}) == run_id(cfg)  # kept: the caller refuses to mix runs
    blob = rundir.read_config(wd)
    assert blob["run_id"] == run_id(cfg) and run_id(config.from_dict(blob["config"])) == run_id(cfg)
    assert sorted(p.name for p in wd.iterdir()) == ["config.json"]  # no temporary file left
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        rundir.read_config(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a run config"):
        rundir.read_config(tmp_path / "bad")


def test_status_json(tmp_path):
    assert rundir.read_status(tmp_path) == {}
    rundir.write_status(tmp_path, "running", step=3)
    assert rundir.read_status(tmp_path) == {"status": "running", "step": 3}
    (tmp_path / "status.json").write_text('{"status": "do')  # cut by a kill
    assert rundir.read_status(tmp_path) == {}


def test_metrics_log_drops_rows_past_the_resume_point_and_readers_skip_cut_lines(tmp_path):
    log = rundir.MetricsLog(tmp_path, 0)
    for step in (1, 2, 3):
        log.write({"kind": "train", "step": step, "loss": 1.0 / step, "tokens_per_s": 10.0})
    log.write({"kind": "eval", "step": 2, "val_loss": 0.7})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "st')  # a line cut by a kill
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 2, 3, 2]
    assert rundir.read_progress(tmp_path) == {"step": 3, "loss": 1.0 / 3, "tokens_per_s": 10.0, "val_loss": 0.7}
    rundir.MetricsLog(tmp_path, 2).close()  # resumed from step 2
    assert [(r["kind"], r["step"]) for r in rundir.read_metrics(tmp_path)] == [
        ("train", 1), ("train", 2), ("eval", 2)]
    assert rundir.read_metrics(tmp_path / "none") == [] and rundir.read_progress(tmp_path / "none") == {}


def test_run_id_takes_a_config_dict_or_its_dict_without_changing_it():
    cfg = config.load(RETENTION)
    d = cfg.to_dict()
    before = json.dumps(d, sort_keys=True, default=str)
    assert run_id(d) == run_id(cfg) == run_id(ConfigDict(d))
    assert json.dumps(d, sort_keys=True, default=str) == before and cfg.data.eos_id is None
