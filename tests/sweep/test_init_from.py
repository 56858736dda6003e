"""Runs initialised from other runs of a sweep: train.init_from = "variant:<label>" and run ordering."""

import json

import pytest

from scaling.analysis.papers_metamorphosis import steps_to_stay, steps_to_target
from scaling.sweep import launchers
from scaling.sweep.spec import SpecError, expand, load_spec
from scaling.sweep.store import Store
from tests.sweep.tiny import BASE, OVERRIDES, ROOT

STEPS = {"train.eval_every": 2, "train.checkpoint_every": 2}


def _spec(name="meta", **variants):
    return {"name": name, "base": BASE, "overrides": {**OVERRIDES, **STEPS}, "variants": variants or {
        "transformer": {"model.pattern": "A", "train.steps": 3},
        "converted": {"model.pattern": "R", "train.init_from": "variant:transformer", "train.steps": 2},
        "scratch": {"model.pattern": "R", "train.steps": 3},
    }}


def test_variant_reference_resolves_to_the_source_run():
    plans = {p.variant: p for p in expand(_spec())}
    src, conv = plans["transformer"], plans["converted"]
    assert conv.cfg.train.init_from == f"run:{src.run_id}" and conv.depends_on == src.run_id
    assert plans["scratch"].depends_on is None and src.depends_on is None
    assert conv.summary()["depends_on"] == src.run_id


def test_bad_references_are_rejected_before_anything_runs():
    with pytest.raises(SpecError, match="no run of variant 'nope'"):
        expand(_spec(a={"model.pattern": "A"}, b={"model.pattern": "R", "train.init_from": "variant:nope"}))
    with pytest.raises(SpecError, match="chains are not supported"):
        expand(_spec(a={"model.pattern": "A"}, b={"model.pattern": "R", "train.init_from": "variant:a"},
                     c={"model.pattern": "R", "train.init_from": "variant:b"}))
    with pytest.raises(SpecError, match=r"variant 'b'.*\['mlp'\]\['down'\].*the source's is float32\[96, 32\]"):
        expand(_spec(a={"model.pattern": "A"},
                     b={"model.pattern": "R", "model.d_ff": 64, "train.init_from": "variant:a"}))


def _row(i, depends_on=None):
    return {"id": f"r{i}", "config": {}, "variant": "v", "total_steps": 1, "depends_on": depends_on}


def test_claim_waits_for_the_run_a_run_starts_from(tmp_path):
    with Store(tmp_path) as s:
        s.add_sweep("t", {})
        s.add_runs("t", [_row(0), _row(1, "r0"), _row(2)])
        assert s.claim()["id"] == "r0"
        assert s.claim()["id"] == "r2"  # r1 waits for r0
        assert s.claim() is None
        s.finish("r0", "done", summary={}, metrics=[])
        assert s.claim()["id"] == "r1"


def test_a_failed_source_fails_its_dependents(tmp_path):
    with Store(tmp_path) as s:
        s.add_sweep("t", {})
        s.add_runs("t", [_row(0), _row(1, "r0")])
        assert s.claim()["id"] == "r0"
        s.finish("r0", "failed", summary={}, metrics=[], retries=0, error="boom")
        assert s.claim() is None
        r1 = s.run("r1")
        assert r1["status"] == "failed" and "r0" in r1["error"] and "failed" in r1["error"]


@pytest.mark.slow
def test_sweep_trains_the_converted_run_after_its_source(tmp_path):
    result = launchers.run_sweep(_spec(), tmp_path, workers=2, log=lambda *_: None)
    assert result.counts["done"] == 3, result
    with Store(tmp_path) as s:
        rows = {r["variant"]: r for r in s.runs()}
        assert rows["converted"]["claimed"] >= rows["transformer"]["finished"]
    metrics = [json.loads(line) for line in
               (tmp_path / "runs" / rows["converted"]["id"] / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0] == {**metrics[0], "kind": "eval", "step": 0}
    from scaling.analysis.papers_metamorphosis import metamorphosis
    from scaling.analysis.report import load_sweep

    fig = metamorphosis(load_sweep(tmp_path), tmp_path / "fig")
    assert {p.suffix for p in fig.paths} == {".png", ".svg"}
    out = json.loads((tmp_path / "fig/metamorphosis.json").read_text())
    assert out["seeds"]["0"]["source"] == rows["transformer"]["id"]
    assert {r["role"]: r["run_id"] for r in out["runs"]} == {"converted": rows["converted"]["id"],
                                                              "scratch": rows["scratch"]["id"]}


def test_steps_to_target():
    assert steps_to_target([0, 50, 100], [3.0, 2.1, 1.9], 2.1) == 50
    assert steps_to_target([0, 50], [3.0, 2.5], 2.0) is None
    # a blended run starts under the target, climbs above it and comes back: it stays from step 150
    assert steps_to_target([0, 50, 100, 150, 200], [1.9, 2.0, 2.3, 2.05, 2.0], 2.1) == 0
    assert steps_to_stay([0, 50, 100, 150, 200], [1.9, 2.0, 2.3, 2.05, 2.0], 2.1) == 150
    assert steps_to_stay([0, 50], [1.9, 2.0], 2.1) == 0 and steps_to_stay([0, 50], [1.9, 2.2], 2.1) is None


def test_metamorphosis_spec_orders_its_runs():
    cpu = {p.variant: p for p in expand(load_spec(ROOT / "experiments/papers/metamorphosis.py", scale="cpu"))}
    assert cpu["converted"].depends_on == cpu["transformer"].run_id and cpu["scratch"].depends_on is None
    assert cpu["blended"].depends_on == cpu["transformer"].run_id and cpu["blended"].cfg.train.blend_steps == 300
    assert cpu["converted"].params == cpu["scratch"].params  # the same power-retention model
    full = {p.variant: p for p in expand(load_spec(ROOT / "experiments/papers/metamorphosis.py", scale="full"),
                                         check_data=False)}
    assert 1.2e9 < full["transformer"].params < 1.25e9 and full["converted"].steps == 3000  # 1.21B; Brumby's 3000 steps
