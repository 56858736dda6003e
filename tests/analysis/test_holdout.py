"""Held-out prediction, seeds as replicates, the accounting's cost in allocations, and the next rung's spec."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from scaling import accounting, cli
from scaling import config as _config
from scaling.analysis import holdout, next_rung, report
from scaling.analysis.cost import CostModel, fit_cost
from scaling.analysis.fits import fit_parametric
from scaling.sweep import expand, load_spec
from tests.analysis import synthetic

BUDGETS = (1e15, 3e15, 1e16, 3e16)


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("sweep")
    synthetic.synthetic_sweep(sweep, variants=["attention", "mamba-d16", "mamba-d64", "mamba-d256"],
                              budgets=BUDGETS, noise=0.01)
    return sweep, report.write_report(sweep, bootstrap=10, fast=True, progress=False, holdout=True)


def test_holdout_leaves_the_largest_budget_out_of_every_fit_and_predicts_it(held):
    sweep, result = held
    pred = result.holdout
    assert len(pred) and set(pred["budget"]) == {BUDGETS[-1]}
    held_points = set(zip(pred["N"], pred["D"], strict=True))
    for r in result.records:  # no fit saw a held-out run
        if r.ok and r.kind in ("parametric", "state_law"):
            assert not held_points & set(zip(r.fit.data["N"], r.fit.data["D"], strict=True))
    assert {"approach 3: L(N, D)", "state law: L(N, S, D)"} <= set(pred["law"])
    assert (pred["lo"] < pred["predicted"]).all() and (pred["predicted"] < pred["hi"]).all()
    assert pred["rel_error"].abs().median() < 0.05  # a 1%-noise law, extrapolated 3x in compute
    assert np.allclose(pred["covered"], (pred["lo"] <= pred["measured"]) & (pred["measured"] <= pred["hi"]))
    md = result.report.read_text()
    assert "## Held-out predictions" in md and "coverage" in md
    assert (sweep / "analysis" / "holdout.csv").exists() and (sweep / "analysis" / "holdout_predictions.png").exists()
    laws = [row[1] for row in result.headline()]
    assert any(law.startswith("held out") for law in laws) and any("approach 2" in law for law in laws)


def test_holdout_errors_name_the_budgets(tmp_path, capsys):
    synthetic.synthetic_sweep(tmp_path, variants=["attention"], budgets=(1e15, 1e16))
    data = report.load_sweep(tmp_path)
    with pytest.raises(ValueError, match=r"--holdout 5e\+15: no runs at that budget; budgets: 1e\+15, 1e\+16"):
        holdout.split_holdout(data, 5e15)
    _, kept, b = holdout.split_holdout(data)
    assert b == 1e16 and set(kept["budget"]) == {1e16}
    assert cli.main(["analyze", str(tmp_path), "--holdout", "5e15", "--fast", "--no-progress"]) == 2
    assert "--holdout 5e+15: no runs at that budget" in capsys.readouterr().err
    one = tmp_path / "one"
    synthetic.synthetic_sweep(one, variants=["attention"], budgets=(1e15,))
    with pytest.raises(ValueError, match="needs runs at >= 2 FLOP budgets"):
        holdout.split_holdout(report.load_sweep(one))


def test_seed_spread_and_which_differences_are_real():
    rows = []
    for variant, mean in (("a", 2.00), ("b", 2.001), ("c", 2.10)):
        for seed, eps in enumerate((-0.01, 0.0, 0.01)):
            rows.append({"variant": variant, "family": variant, "size": "s", "budget": 1e12, "context": 128,
                         "seed": seed, "final_val_loss": mean + eps, "final_val_loss_se": 0.004})
    rows.append({"variant": "a", "family": "a", "size": "t", "budget": 1e12, "context": 128, "seed": 0,
                 "final_val_loss": 2.0, "final_val_loss_se": 0.004})  # one seed: not a replicated point
    spread = holdout.seed_spread(pd.DataFrame(rows))
    assert len(spread) == 3 and (spread["seeds"] == 3).all()
    assert np.allclose(spread["std"], 0.01) and np.allclose(spread["se"], 0.01 / np.sqrt(3))
    diffs = holdout.variant_differences(spread).set_index(["a", "b"])
    assert diffs.loc[("a", "b"), "verdict"] == "within seed spread"
    assert diffs.loc[("a", "c"), "verdict"] == "real" and diffs.loc[("b", "c"), "verdict"] == "real"
    # equal spreads of three seeds: Welch's dof is 4, the threshold t(0.975, 4) = 2.776 SE
    assert np.allclose(diffs["dof"], 4.0)
    assert np.allclose(diffs["threshold"] / diffs["se"], 2.7764, atol=1e-4)


def test_a_gap_of_three_se_from_three_seeds_is_within_the_spread():
    """Between 2 SE and the t threshold (2.78 SE at 4 dof): the old 2-SE rule called this real."""
    rows = [{"variant": v, "family": v, "size": "s", "budget": 1e12, "context": 128, "seed": seed,
             "final_val_loss": mean + eps, "final_val_loss_se": 0.004}
            for v, mean in (("a", 2.0), ("b", 2.0 + 2.5 * np.sqrt(2) * 0.01 / np.sqrt(3)))
            for seed, eps in enumerate((-0.01, 0.0, 0.01))]
    diffs = holdout.variant_differences(holdout.seed_spread(pd.DataFrame(rows)))
    assert np.isclose(diffs["diff"].iloc[0] / diffs["se"].iloc[0], 2.5)
    assert diffs["verdict"].iloc[0] == "within seed spread"


def test_allocation_under_the_accounting_cost_minimises_the_law():
    N = np.repeat(np.geomspace(1e6, 1e8, 5), 4)
    C = np.tile(np.geomspace(1e16, 1e18, 4), 5)
    cost = CostModel(9.0, 0.95)  # training FLOPs per token = 9 N^0.95 (a mixer's context term, say)
    D = C / cost(N)
    fit = fit_parametric(N, D, 1.8 + 400 / N**0.34 + 2000 / D**0.37,
                         init_grid={"e": (0.0, 0.5), "a": (5.0,), "b": (5.0, 8.0)})
    fit.info["cost"] = fit_cost(N, cost(N)).to_dict()
    assert abs(fit.cost.k - 9.0) < 1e-6 and abs(fit.cost.e - 0.95) < 1e-9
    Ns = np.geomspace(1e5, 1e10, 200001)
    for budget in (1e17, 1e19):
        brute = Ns[np.argmin(fit.predict(Ns, budget / cost(Ns)))]
        assert abs(fit.N_opt(budget) / brute - 1) < 1e-3
        assert abs(fit.D_opt(budget) * cost(fit.N_opt(budget)) / budget - 1) < 1e-9
    fit.info.pop("cost")  # without a cost model: Chinchilla's 6ND
    assert abs(fit.N_opt(1e19) - fit.G * (1e19 / 6) ** fit.a) < 1e-6 * fit.N_opt(1e19)


def test_plan_rung_and_its_spec(held, tmp_path):
    _, result = held
    rung = next_rung.plan_rung(result.records, result.data.runs, 1e17)
    assert set(rung["family"]) == {"attention", "mamba"}
    for r in rung.itertuples():
        assert r.N_lo < r.N_opt < r.N_hi and r.loss_lo < r.loss < r.loss_hi and r.extrapolation > 3
    # the spec: a real config, resized so that its non-embedding parameters are closest to N_opt
    cfg = _config.load("configs/models/transformer_tiny.py", [("model.n_layers", 2), ("train.context", 128),
                                                            ("train.batch_size", 8)])
    target = 2.0e5
    plan = pd.DataFrame([{"family": "attention", "N_opt": target, "N_lo": 1e5, "N_hi": 4e5, "loss": 2.0,
                          "loss_lo": 1.9, "loss_hi": 2.1, "from_run": "r1", "budget": 1e13}])
    path = next_rung.write_rung_spec(plan, {"r1": json.dumps({"config": _config.to_dict(cfg)})},
                                     tmp_path / "rung.py", "demo-rung")
    plans = expand(load_spec(path))
    assert len(plans) == 1 and plans[0].budget == 1e13 and abs(plans[0].flops / 1e13 - 1) < 0.05
    n = accounting.params(plans[0].cfg)["non_embedding"]
    for d in (plans[0].cfg.model.d_model - 8, plans[0].cfg.model.d_model + 8):  # no other width is closer
        other = _config.from_dict(_config.to_dict(plans[0].cfg))
        other.model.d_model = d
        assert abs(np.log(n / target)) <= abs(np.log(accounting.params(other)["non_embedding"] / target))


def test_cli_predict_prints_the_rung_and_names_what_it_cannot_write(held, capsys):
    sweep, _ = held
    # the synthetic sweep's runs carry no real model config: the predictions print, the spec cannot be written
    assert cli.main(["predict", str(sweep), "--budget", "1e17", "--fast"]) == 2
    out, err = capsys.readouterr()
    assert "attention (attention) at C = 1e+17: N_opt" in out and "predicted loss" in out
    assert err.strip().startswith("error: ") and "\n" not in err.strip()
    assert cli.main(["predict", str(sweep), "--budget", "-1"]) == 2
    assert "--budget -1.0: must be a positive number" in capsys.readouterr().err


def test_the_report_names_the_context_of_each_seed_spread_row_when_there_are_several():
    from scaling.analysis.report import _prediction_lines

    rows = [{"variant": "a", "family": "a", "size": "s", "budget": 1e12, "context": ctx, "seed": seed,
             "final_val_loss": 2.0 + 0.01 * seed + (ctx == 512), "final_val_loss_se": 0.004}
            for ctx in (128, 512) for seed in range(3)]
    spread = holdout.seed_spread(pd.DataFrame(rows))
    text = "\n".join(_prediction_lines(None, None, None, spread))
    assert "| variant | size | context | budget |" in text
    assert "| a | s | 128 |" in text and "| a | s | 512 |" in text
    one = holdout.seed_spread(pd.DataFrame([r for r in rows if r["context"] == 128]))
    assert "context" not in "\n".join(_prediction_lines(None, None, None, one)).split("## Seed-to-seed spread")[1]


def test_the_same_runs_give_the_same_fits_in_any_row_order(tmp_path):
    """A resumed sweep appends its new runs to the database; the fits' bootstrap draws must not follow that order:
    the runs shuffled give every fit's estimates and intervals again, to the bit."""
    synthetic.synthetic_sweep(tmp_path, variants=["attention", "mamba-d16", "mamba-d64"], budgets=BUDGETS)
    data = report.load_sweep(tmp_path)
    shuffled = dataclasses.replace(data, runs=data.runs.sample(frac=1.0, random_state=3).reset_index(drop=True))
    assert list(shuffled.runs["run_id"]) != list(data.runs["run_id"])
    kinds = ["isoflop", "parametric", "state_law"]
    a = {(r.kind, r.group): r for r in report.fit_sweep(data, bootstrap=40, fast=True, kinds=kinds) if r.ok}
    b = {(r.kind, r.group): r for r in report.fit_sweep(shuffled, bootstrap=40, fast=True, kinds=kinds) if r.ok}
    assert a.keys() == b.keys() and {k for k, _ in a} == set(kinds)
    for key, rec in a.items():
        assert rec.fit.params == b[key].fit.params, key
        assert rec.fit.ci == b[key].fit.ci, key


def test_approach_2s_optimum_is_checked_against_the_held_out_parabola(held):
    """Each approach-2 group's N_opt = k_N C^a at the held-out budget, with its replicates' interval, against the
    vertex of the parabola through that group's held-out runs (at least three sizes there): both recomputed here
    from the fit's parameters and from the held-out runs by numpy's polyfit."""
    sweep, result = held
    opt = result.holdout_optimum
    fits = {r.keys["model"]: r.fit for r in result.records if r.kind == "isoflop" and r.ok}
    runs = report.load_sweep(sweep).runs
    assert len(opt) and set(opt["variant"]) <= set(fits) and set(opt["budget"]) == {BUDGETS[-1]}
    for r in opt.itertuples():
        fit = fits[r.variant]
        assert np.isclose(r.predicted, fit.params["k_N"] * r.budget ** fit.params["a"], rtol=1e-12)
        assert r.lo < r.predicted < r.hi
        mine = runs[(runs["variant"] == r.variant) & np.isclose(runs["budget"], r.budget)]
        cells = mine.groupby("non_embedding_params")["final_val_loss"].mean()
        c2, c1, _ = np.polyfit(np.log(cells.index.to_numpy(float)), cells.to_numpy(), 2)
        assert len(r.sizes) == len(cells) >= 3 and np.isclose(r.measured, np.exp(-c1 / (2 * c2)), rtol=1e-6)
        assert np.isclose(r.ratio, r.measured / r.predicted) and r.covered == (r.lo <= r.measured <= r.hi)
    assert "held-out vertex" in result.report.read_text()
    assert any("N_opt at" in row[1] for row in result.headline())
    assert all((sweep / "analysis" / f"holdout_optimum.{ext}").exists() for ext in ("png", "svg"))
