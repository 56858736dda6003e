"""Sweep specs: deterministic expansion, stable ids, FLOP matching, isoFLOP selection, validation, dry runs."""

import importlib
import json
import re

import pytest

from scaling import accounting, cli
from scaling.config import ConfigError
from scaling.rundir import run_id
from scaling.sweep import SpecError, Sweep, expand, load_spec, match_budget
from tests.sweep.tiny import ROOT, spec_dict, step_flops, write_spec

VARIANTS = {
    "attn": {"model.pattern": "A"},
    "attn-w8": {"model.pattern": "A", "model.attention.window": 8},
    "ret": {"model.pattern": "R"},
    "mamba": {"model.pattern": "M", "model.mamba.d_state": 16},
}


def test_expansion_is_deterministic_and_ids_are_config_hashes():
    spec = spec_dict(variants=VARIANTS, axes={"train.lr": [1e-3, 3e-3], "train.seed": [0, 1]})
    a, b = expand(spec), expand(spec)
    assert [p.run_id for p in a] == [p.run_id for p in b]
    assert len(a) == 4 * 2 * 2 * 2 and len({p.run_id for p in a}) == len(a)
    for p in a:
        assert p.run_id == run_id(p.cfg)
        assert p.cfg.train.tokens == 0 and p.cfg.train.steps == p.steps
    # order: variant, axis point (axes crossed in the order given), budget
    assert [p.variant for p in a[:8]] == ["attn"] * 8
    assert [(p.point["train.lr"], p.point["train.seed"]) for p in a[:8:2]] == [(1e-3, 0), (1e-3, 1), (3e-3, 0),
                                                                               (3e-3, 1)]
    assert {p.cfg.model.pattern for p in a} == {"A", "R", "M"}
    assert a[8].variant == "attn-w8" and a[8].state_size < a[0].state_size  # the window bounds the KV cache


def test_variants_are_unioned_not_crossed_and_labelled():
    plans = expand(spec_dict(variants=[{"model.pattern": "A"}, {"model.pattern": "R", "model.retention.p": 4}],
                             steps=(100,)))
    assert [p.variant for p in plans] == ["pattern=A", "pattern=R,p=4"]


def test_adding_axis_values_or_budgets_adds_runs_and_keeps_old_ids():
    old = expand(spec_dict(variants=VARIANTS, axes={"train.lr": [1e-3]}))
    new = expand(spec_dict(variants=VARIANTS, axes={"train.lr": [1e-3, 3e-3]}, steps=(10, 20, 40)))
    old_ids, new_ids = [p.run_id for p in old], {p.run_id for p in new}
    assert set(old_ids) <= new_ids
    assert len(new_ids) == len(new) == 4 * 2 * 3
    # the same config reached twice (a variant equal to the base) is one run
    dup = expand(spec_dict(variants={"a": {}, "b": {"model.pattern": "A"}}, steps=(10,)))
    assert len(dup) == 1


@pytest.mark.parametrize("context", [16, 32, 64])
def test_flop_matching_rounds_to_whole_steps_within_5_percent(context):
    base = spec_dict(variants=VARIANTS, axes={"train.context": [context]})
    base["budgets"] = [1.0e9, 3.3e9, 7.7e9]
    for p in expand(base):
        fpt = accounting.flops_per_token(p.cfg, context)
        step = 3 * fpt * p.cfg.train.batch_size * context
        assert p.flops_per_token == fpt
        assert p.steps == round(p.budget / step)  # nearest whole step
        assert p.flops == pytest.approx(p.steps * step)
        assert p.tokens == p.steps * p.cfg.train.batch_size * context
        assert abs(p.flops / p.budget - 1) <= 0.05
    # a longer context costs attention more per token, so the same budget buys fewer tokens
    short, long = (expand(spec_dict(axes={"train.context": [t]}, steps=(100,)))[0].cfg for t in (16, 64))
    assert match_budget(long, 1e10)[1] > match_budget(short, 1e10)[1]
    assert match_budget(long, 1e10)[0] * 64 < match_budget(short, 1e10)[0] * 16


def test_exact_budget_multiple_is_exact():
    plans = expand(spec_dict(steps=(7, 40)))
    assert [p.steps for p in plans] == [7, 40] and all(p.flops == pytest.approx(p.budget) for p in plans)


def _error(spec) -> str:
    with pytest.raises(ConfigError) as e:
        expand(spec)
    return str(e.value)


def test_bad_specs_are_rejected_naming_the_problem():
    assert "model.retention.q" in _error(spec_dict(variants=[{"model.retention.q": 2}]))
    assert "unknown field" in _error(spec_dict(overrides={"train.learning_rate": 1.0}))
    msg = _error(spec_dict(axes={"train.lr": []}))
    assert "train.lr" in msg and "empty" in msg
    msg = _error(spec_dict(axes={"model.nonsense": [1]}))
    assert "model.nonsense" in msg and "unknown field" in msg
    # budget too small for one step: names the point, the budget and the minimum
    f = step_flops()
    msg = _error(spec_dict(variants={"attn": {}}, axes={"train.context": [32]}, budgets=[0.3 * f]))
    assert "too small" in msg and "'attn'" in msg and "train.context=32" in msg and f"{0.3 * f:.3e}" in msg
    assert f"minimum budget is {f:.3e}" in msg
    # a budget of 1.3 steps cannot be matched within 5%
    assert "off" in _error(spec_dict(budgets=[1.3 * f]))
    # bad values: scaling.config.validate on every expanded config, with the point named
    msg = _error(spec_dict(variants={"r3": {"model.pattern": "R", "model.retention.p": 3}}))
    assert "'r3'" in msg and "model.retention.normalize" in msg
    msg = _error(spec_dict(axes={"model.attention.n_heads": [2, 3]}))
    assert "model.attention.n_heads=3" in msg and "must divide" in msg
    assert "train.steps" in _error(spec_dict(axes={"train.steps": [10]}))
    assert "sweep.budgets" in _error(spec_dict(budgets=[-1.0]))
    assert "sweep.base" in _error(spec_dict(base="configs/models/nope.py"))
    with pytest.raises(SpecError, match="unknown field"):
        expand({**spec_dict(), "axis": {}})


def test_isoflop_mode_picks_sizes_within_the_ratio_range():
    sizes = {f"d{d}": {"model.d_model": d, "model.attention.n_heads": 2, "model.attention.n_kv_heads": 2}
             for d in (16, 32, 64, 128)}
    budgets = [1e10, 1e11]
    spec = spec_dict(sizes=sizes, ratio_range=(2.0, 40.0), budgets=budgets)
    plans = expand(spec)
    assert plans
    for p in plans:
        ratio = p.tokens / p.non_embedding_params
        assert 2.0 <= ratio <= 40.0
        assert abs(p.flops / p.budget - 1) <= 0.05
    by_budget = {b: [p.size for p in plans if p.budget == b] for b in budgets}
    # a bigger budget shifts the chosen sizes up (Chinchilla approach 2: D/N spans the range at each budget)
    assert max(by_budget[1e11], key=lambda s: int(s[1:])) >= max(by_budget[1e10], key=lambda s: int(s[1:]))
    every = expand(spec_dict(sizes=sizes, budgets=budgets))  # no range: every size at every budget
    assert len(every) == len(sizes) * len(budgets)
    msg = _error(spec_dict(sizes=sizes, ratio_range=(1e6, 1e7), budgets=budgets))
    assert "no size" in msg and "1.000e+10" in msg


def test_spec_files_and_dry_run(tmp_path, capsys):
    path = write_spec(tmp_path / "s.py", variants=VARIANTS)
    assert isinstance(load_spec(path), Sweep)
    assert cli.main(["sweep", str(path), "--dry-run", "--sweep-dir", str(tmp_path / "sw")]) == 0
    out = capsys.readouterr().out
    for p in expand(load_spec(path)):
        assert p.run_id in out
    assert not (tmp_path / "sw").exists()  # nothing ran, nothing was written
    bad = write_spec(tmp_path / "bad.py", axes={"train.lr": []})
    assert cli.main(["sweep", str(bad), "--sweep-dir", str(tmp_path / "sw")]) == 2
    assert "train.lr" in capsys.readouterr().err and not (tmp_path / "sw").exists()


def test_quickstart_spec_is_a_ladder_with_state_sizes_seeds_and_a_holdout(capsys):
    qs = importlib.import_module("experiments.quickstart")
    plans = expand(load_spec(ROOT / "experiments/quickstart.py"))
    assert {p.cfg.model.pattern for p in plans} == {"A", "R", "M"}
    for p in plans:
        assert abs(p.flops / p.budget - 1) < 0.05
    ladder = [p for p in plans if p.variant in ("attention", "retention-h2", "mamba-d16")]
    for variant in ("attention", "retention-h2", "mamba-d16"):
        mine = [p for p in ladder if p.variant == variant]
        budgets = {p.budget for p in mine} - {qs.HOLDOUT_BUDGET}
        assert len(budgets) >= 3
        for budget in budgets:  # isoFLOP: >= 3 sizes at every ladder budget
            assert len({p.size for p in mine if p.budget == budget}) >= 3, (variant, budget)
        assert len({p.size for p in mine if p.budget == qs.HOLDOUT_BUDGET}) == 3  # three held-out runs a family
        for budget in qs.SEED_BUDGETS:  # seeds at two points: the pooled spread has 4 degrees of freedom
            assert {p.cfg.train.seed for p in mine if p.size == "d16" and p.budget == budget} == {0, 1, 2}
    for pattern in "RM":  # state size varies apart from the parameters: >= 3 state sizes at one model size
        at = [p for p in plans
              if p.cfg.model.pattern == pattern and p.size == "d16" and p.budget == qs.STATE_BUDGETS[-1]]
        assert len({p.state_size for p in at}) >= 3
    assert len({p.run_id for p in plans}) == len(plans)
    assert cli.main(["sweep", str(ROOT / "experiments/quickstart.py"), "--dry-run"]) == 0
    assert f"{len(plans)} runs" in capsys.readouterr().out


def test_parts_and_seeds(tmp_path):
    base = spec_dict("p", budgets=[])
    one = expand({**base, "variants": [{}], "seeds": 3})
    assert [p.cfg.train.seed for p in one] == [0, 1, 2] and len({p.run_id for p in one}) == 3
    assert [p.point for p in one] == [{"train.seed": s} for s in (0, 1, 2)]
    # parts pool their runs; a run two parts share is one run (seed 0 of the seeded part is the plain run)
    both = expand({**base, "parts": [{"variants": [{}]}, {"variants": [{}], "seeds": 2},
                                     {"variants": [{}], "overrides": {"train.lr": 1e-3}}]})
    assert len(both) == 3
    with pytest.raises(SpecError, match=r"sweep.parts\[0\]: unknown field\(s\) name"):
        expand({**base, "parts": [{"name": "x"}]})
    with pytest.raises(SpecError, match="sweep.seeds = 0"):
        expand({**base, "seeds": 0})
    with pytest.raises(SpecError, match="train.seed is also an axis"):
        expand({**base, "seeds": 2, "axes": {"train.seed": [0, 1]}})


def test_state_size_spec_dry_run(capsys):
    plans = expand(load_spec(ROOT / "experiments/state_size.py"))
    patterns = {p.cfg.model.pattern for p in plans}
    assert patterns == {"A", "R", "M"}
    assert {p.cfg.model.retention.p for p in plans if p.cfg.model.pattern == "R"} == {1, 2, 4}
    assert all(p.cfg.model.retention.normalize == "rmsnorm" for p in plans
               if p.cfg.model.pattern == "R" and p.cfg.model.retention.p % 2)
    assert len({p.cfg.train.context for p in plans}) > 1
    for p in plans:
        assert abs(p.flops / p.budget - 1) <= 0.05
    assert cli.main(["sweep", str(ROOT / "experiments/state_size.py"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{len(plans)} runs", out)
    json.dumps([p.summary() for p in plans])  # the store's columns serialise
