"""Tests for scaling.analysis.fits.

1. Epoch AI's replication of the Chinchilla approach-3 fit, on the points Epoch extracted from the paper (vendored in
   tests/data/), and a held-out check: the largest models predicted from the others.
2. Recovery of known laws from synthetic data with noise, by every fit, and the coverage of its 95% bootstrap
   intervals over many data seeds.
3. The batched L-BFGS driver against scipy's ``minimize``, gradients, JSON round trips, input validation, helpers.

Coverage (section 2): no test relies on a seed that happens to pass. For each fit the synthetic design is drawn
with seeds 0, 1, ... and the test asserts the fraction of seeds whose 95% percentile-bootstrap interval holds the
true parameter, per parameter. Measured rates per parameter (all parameters at once in brackets):

- fast settings (40 resamples, plan.FAST_*_GRID starts), 100 seeds: approach 1 a 0.98; approach 2 a 0.91;
  approach 3 alpha 0.93, beta 0.91, a = 1 - b 0.91, E 0.89 [0.80]; state law alpha 0.94, gamma 0.94 [0.88];
  with D alpha 0.98, gamma 0.93, beta 0.93 [0.86]; context law a 0.98. The fast test runs seeds 0-19 and asserts
  >= 0.7 per parameter, which a rate of 0.89 misses with probability 0.4% (binomial); seeds 0-19 gave 0.85-1.0
  (lowest: approach 3's alpha, 17/20).
- full settings (200 resamples, the default start grids), 60 seeds: approach 1 a 1.00; approach 2 a 0.98;
  approach 3 alpha 0.93, beta 0.97, a 0.95, E 0.95 [0.88]; state law alpha 0.98, gamma 0.97 [0.95]; with D
  alpha 1.00, gamma 0.93, beta 0.93 [0.88]; context law a 1.00. The slow test runs seeds 0-39 and asserts >= 0.8
  per parameter (a rate of 0.93 misses it with probability 0.15%); seeds 0-39 gave 0.925-1.0.

The percentile intervals run a little below nominal for approach 3 and the state law, most with few resamples; the
allocation-exponent intervals of approaches 1 and 2 and the context law are conservative.
"""

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from scaling.analysis import (
    ContextLawFit,
    EnvelopeFit,
    IsoflopFit,
    ParametricFit,
    StateLawFit,
    compute_optimal_state,
    fit_context_law,
    fit_envelope,
    fit_from_dict,
    fit_from_json,
    fit_isoflop,
    fit_parametric,
    fit_state_law,
    fits,
    loss_vs_state,
    optimize,
)
from scaling.analysis.plan import FAST_PARAMETRIC_GRID, FAST_STATE_GRID, FAST_STATE_GRID_WITH_D

# Epoch AI's extraction of the Chinchilla paper's Figure 4 points, vendored (provenance: tests/data/README.md).
CHINCHILLA_CSV = Path(__file__).resolve().parents[1] / "data" / "chinchilla_epoch_svg_extracted.csv"


def _chinchilla_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, loss) of Epoch's 245 points less the 5 with the highest loss, D = C / (6 N), as Epoch did."""
    with open(CHINCHILLA_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    N = np.array([float(r["Model Size"]) for r in rows])
    C = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    assert len(rows) == 245
    keep = np.argsort(loss)[:-5]
    return N[keep], C[keep] / (6 * N[keep]), loss[keep]


@pytest.fixture(scope="module")
def chinchilla():
    return _chinchilla_points()


# ------------------------------------------------------------------------------------------------------------
# 1. Chinchilla approach 3, as replicated by Epoch AI


def test_chinchilla_approach3_reproduces_epoch(chinchilla):
    N, D, loss = chinchilla
    fit = fit_parametric(N, D, loss)
    assert fit.info["n_starts"] == 4500  # Epoch's full grid
    # Epoch's published numbers for this file: E = 1.817, A = 477.8, B = 2143.9, alpha = 0.3473, beta = 0.3672.
    for name, want, rtol in [("E", 1.817, 0.01), ("alpha", 0.3473, 0.01), ("beta", 0.3672, 0.01),
                             ("A", 477.8, 0.05), ("B", 2143.9, 0.05)]:
        assert fit.params[name] == pytest.approx(want, rel=rtol), name
    assert fit.a == pytest.approx(fit.beta / (fit.alpha + fit.beta))
    assert fit.b == pytest.approx(1 - fit.a)
    C = np.array([1e21, 1e24])
    np.testing.assert_allclose(6 * fit.N_opt(C) * fit.D_opt(C), C, rtol=1e-10)
    # N_opt minimises the predicted loss along C = 6 N D.
    Ns = fit.N_opt(1e24) * np.geomspace(0.8, 1.25, 41)
    assert np.argmin(fit.predict(Ns, 1e24 / (6 * Ns))) == 20
    resid = fit.residuals["log_loss"]
    np.testing.assert_allclose(resid, np.log(loss) - np.log(fit.predict(N, D)), atol=1e-12)


def test_chinchilla_held_out_largest_models(chinchilla):
    """Fit approach 3 below N = 2.5e9 (203 runs), predict the 37 runs of the largest models (N = 2.64e9 - 1.62e10,
    the largest 15%) with their 90% prediction intervals.

    Measured: relative error |pred - measured| / measured median 0.0085, max 0.0365; 25/37 = 0.676 inside the 90%
    interval. The extrapolation is biased: all 6 held-out runs above 1e10 parameters have a higher loss than
    predicted, by 2.0-3.6%, and none lies inside its interval (the interval holds noise and parameter uncertainty,
    not the law bending away); below 1e10 coverage is 25/31. Start grid: plan.FAST_PARAMETRIC_GRID (243 starts),
    which reaches the same optimum as Epoch's 4500-start grid here (E = 1.777, A = 225.4, B = 3927, alpha = 0.3016,
    beta = 0.3976) in a tenth of the time.
    """
    N, D, loss = chinchilla
    train, held = N < 2.5e9, N >= 2.5e9
    assert (train.sum(), held.sum()) == (203, 37)
    fit = fit_parametric(N[train], D[train], loss[train], init_grid=FAST_PARAMETRIC_GRID)
    assert fit.alpha == pytest.approx(0.3016, abs=1e-3) and fit.beta == pytest.approx(0.3976, abs=1e-3)
    pred = fit.predict(N[held], D[held])
    lo, hi = fit.predict_interval(N[held], D[held], level=0.9)
    y = loss[held]
    rel = np.abs(pred - y) / y
    inside = (lo <= y) & (y <= hi)
    assert np.median(rel) < 0.012
    assert rel.max() < 0.05
    coverage = inside.mean()
    assert 0 <= coverage <= 1 and math.isfinite(coverage)
    assert 0.55 <= coverage < 0.8  # below the nominal 0.9: see the docstring
    # The bias at the top, as measured: the largest models are all under-predicted, outside their intervals.
    top = N[held] > 1e10
    assert top.sum() == 6
    assert np.all(pred[top] < y[top] * 0.985) and not inside[top].any()
    assert inside[~top].mean() > 0.75


def test_batched_driver_matches_scipy_minimize(chinchilla):
    """The batched L-BFGS driver against scipy's L-BFGS-B (minimize() per start) from the same starts.

    Their line searches differ, so a start may end in another local optimum; what the fits use is the best end
    point of each data set. On the unweighted data the batched one is as good (lower, or equal to 1e-8: both stop
    when a step gains less than ftol = 2.2e-9 on this ~1e-3 objective, so each may stop a few ftol short of the
    optimum; measured 2.4e-9 apart on one install), and the two land on the same optimum. On bootstrap-weighted
    data, from these few starts (1 in 113 of the grid), the batched best can end in a worse local optimum (8% above
    scipy's on one install, within 1e-8 on another), so only the share of starts that agree is held there. Most
    single starts end at the same objective.
    """
    N, D, loss = chinchilla
    logX, logy = np.log(np.vstack([N, D])), np.log(loss)
    starts = optimize._grid_starts(None, fits.PARAMETRIC_GRID, ("e", "a", "alpha", "b", "beta"))[::113]
    rng = np.random.default_rng(0)
    weights = np.stack([np.bincount(rng.integers(0, len(N), len(N)), minlength=len(N)) for _ in range(2)])
    for fg, ds in [(optimize._HuberObjective(logX, logy, 1e-3), np.zeros(len(starts), int)),
                   (optimize._HuberObjective(logX, logy, 1e-3, weights.astype(float)), np.arange(len(starts)) % 2)]:
        with optimize._single_threaded_blas():
            got = optimize._lbfgs_batched(fg, ds, starts, optimize._LBFGSB_DEFAULT)
            want = optimize._lbfgsb_loop(fg, ds, starts, optimize._LBFGSB_DEFAULT)
        f_got, f_want = fg(ds, got)[0], fg(ds, want)[0]
        assert np.isfinite(f_got).all()
        assert np.mean(np.abs(f_got - f_want) < 1e-9) >= 0.4
        for r in np.unique(ds):
            i = np.nanargmin(np.where(ds == r, f_got, np.inf))
            j = np.nanargmin(np.where(ds == r, f_want, np.inf))
            if fg.weights is None:  # the data the point fit uses: the same best optimum
                assert f_got[i] <= f_want[j] + 1e-8
                assert f_got[i] == pytest.approx(f_want[j], abs=1e-8)
                np.testing.assert_allclose(got[i], want[j], rtol=1e-3)


def test_fit_with_scipy_minimize_loop_agrees(chinchilla, monkeypatch):
    """The whole fit (grid, polish, bootstrap) with minimize() per start in place of the batched driver."""
    N, D, loss = chinchilla
    grid = {"e": [0.0, 1.0], "a": [5.0, 10.0], "alpha": [0.5], "b": [5.0, 10.0], "beta": [0.5]}
    fast = fit_parametric(N, D, loss, init_grid=grid, bootstrap=3)
    monkeypatch.setattr(optimize, "_DRIVER", optimize._lbfgsb_loop)
    slow = fit_parametric(N, D, loss, init_grid=grid, bootstrap=3)
    for k in fast.params:
        assert slow.params[k] == pytest.approx(fast.params[k], rel=1e-4), k
        np.testing.assert_allclose(slow.samples[k], fast.samples[k], rtol=1e-4)


def test_objective_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    logX = np.log(rng.uniform(1e6, 1e10, size=(3, 30)))
    logy = np.log(rng.uniform(2, 4, 30))
    weights = rng.integers(0, 3, size=(2, 30)).astype(float)
    # delta large enough that both Huber branches occur at these points.
    for w in (None, weights):
        fg = optimize._HuberObjective(logX, logy, 0.05, w)
        TH = np.array([[0.5, 6.0, 0.3, 7.0, 0.35, 5.0, 0.3], [0.8, 3.0, 0.2, 2.0, 0.25, 4.0, 0.1]])
        ds = np.array([0, 1]) if w is not None else np.zeros(2, int)
        f, g = fg(ds, TH)
        h = 1e-6
        num = np.empty_like(g)
        for j in range(TH.shape[1]):
            dp, dm = TH.copy(), TH.copy()
            dp[:, j] += h
            dm[:, j] -= h
            num[:, j] = (fg(ds, dp)[0] - fg(ds, dm)[0]) / (2 * h)
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)
        r = optimize._predict_log(TH[0], logX) - logy
        huber = np.where(np.abs(r) <= 0.05, 0.5 * r * r, 0.05 * (np.abs(r) - 0.025))
        want = huber.sum() if w is None else (w[0] * huber).sum()
        assert f[0] == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------------------------------
# 2. Synthetic data from known laws: every approach recovers the exponents within its bootstrap interval

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # the Chinchilla paper's own law
TRUE_a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
TRUE_b = TRUE["alpha"] / (TRUE["alpha"] + TRUE["beta"])
TRUE_G = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (1 / (TRUE["alpha"] + TRUE["beta"]))


def chinchilla_law(N, D):
    return TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]


def _envelope_data(seed):
    # 30 sizes, each a loss curve of 60 logged points from 1e8 tokens to 400 tokens per parameter, within 1e16 to
    # 1e20 FLOPs, 0.3% multiplicative noise. Only some sizes reach each FLOP value, as in a real sweep.
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(3e6, 2e9, 30)
    N = np.repeat(sizes, 60)
    D = np.concatenate([np.geomspace(max(1e8, 1e16 / (6 * n)), min(400 * n, 1e20 / (6 * n)), 60) for n in sizes])
    C = 6 * N * D
    return N, D, C, chinchilla_law(N, D) * np.exp(rng.normal(0, 0.003, len(N)))


def test_envelope_recovers_allocation_exponents():
    N, D, C, loss = _envelope_data(0)
    fit = fit_envelope(N, D, C, loss, bootstrap=20, seed=0)
    assert isinstance(fit, EnvelopeFit)
    assert set(fit.ci) >= {"a", "b"} and fit.ci["a"][0] <= fit.a <= fit.ci["a"][1]
    assert fit.a == pytest.approx(TRUE_a, abs=0.02)
    assert fit.data["on_envelope"].sum() < len(N)  # noisy points above the running minimum are dropped
    # The frontier's sizes follow the true optimum within a factor of 2.
    ratio = fit.data["frontier_N"] / (TRUE_G * (fit.data["frontier_C"] / 6) ** TRUE_a)
    assert np.all((ratio > 0.5) & (ratio < 2))
    # Binning instead of interpolation lands close by.
    assert fit_envelope(N, D, C, loss, method="bin").a == pytest.approx(TRUE_a, abs=0.03)


def test_envelope_drops_winners_at_the_edge_of_the_sizes_present():
    N, D, C, loss = _envelope_data(0)
    short = D / N <= 20  # the runs stop near the optimal tokens per parameter: the smallest runs often win
    N, D, C, loss = N[short], D[short], C[short], loss[short]
    kept = fit_envelope(N, D, C, loss)
    everything = fit_envelope(N, D, C, loss, drop_edge_sizes=False)
    assert len(kept.data["frontier_C"]) < len(everything.data["frontier_C"])
    env = kept.data["on_envelope"]
    for c, n in zip(kept.data["frontier_C"], kept.data["frontier_N"], strict=True):
        # the sizes whose envelope spans c
        spans = [s for s in np.unique(N) if C[env & (N == s)].min() <= c <= C[env & (N == s)].max()]
        assert min(spans) < n < max(spans)


def _final_points(noise, seed):
    """One final loss per (size, budget) of a Chinchilla law at 4 budgets x 5 sizes around each optimum."""
    rng = np.random.default_rng(seed)
    N, C = [], []
    for c in [1e18, 1e19, 1e20, 1e21]:
        n_opt = TRUE_G * (c / 6) ** TRUE_a
        N.append(n_opt * 10 ** np.linspace(-0.6, 0.6, 5))
        C.append(np.full(5, c))
    N, C = np.concatenate(N), np.concatenate(C)
    D = C / (6 * N)
    return N, D, C, chinchilla_law(N, D) * np.exp(rng.normal(0, noise, len(N)))


def test_envelope_loss_noise_widens_the_interval_of_final_points():
    """With one run per (size, budget), resampling runs rarely changes a budget's winner; adding the runs' noise
    (loss_sd) lets another size win, as a rerun with other seeds could."""
    N, D, C, loss = _final_points(0.003, 0)
    kw = {"method": "bin", "n_bins": 4, "C_range": (1e18, 1e21), "bootstrap": 200, "seed": 0}
    plain = fit_envelope(N, D, C, loss, **kw)
    noisy = fit_envelope(N, D, C, loss, loss_sd=0.02, **kw)
    assert noisy.info["loss_sd"] == pytest.approx(0.02)
    width = lambda f: f.ci["a"][1] - f.ci["a"][0]  # noqa: E731
    assert width(noisy) > width(plain) and noisy.ci["a"][0] <= noisy.a <= noisy.ci["a"][1]
    with pytest.raises(ValueError, match="loss_sd"):
        fit_envelope(N, D, C, loss, loss_sd=-1.0, **kw)


def test_envelope_interval_is_nan_when_the_replicates_cannot_vary():
    """Two budgets and no noise: every replicate that loses a frontier point fails, and those that survive all
    equal the fit: no interval rather than one of width zero."""
    N, D, C, loss = _final_points(0.0, 0)
    keep = (C <= 1e19) & np.isin(np.arange(len(N)) % 5, [1, 2, 3])  # three sizes a budget: one interior winner
    fit = fit_envelope(N[keep], D[keep], C[keep], loss[keep], method="bin", n_bins=2, C_range=(1e18, 1e19),
                       bootstrap=100, seed=0)
    assert fit.info["bootstrap_failed"] > 0 and all(math.isnan(v) for v in fit.ci["a"])
    sizes = np.array([1e8, 2e8, 4e8] * 2)  # the middle size wins both budgets
    C2 = np.repeat([1e18, 1e19], 3)
    with pytest.raises(ValueError, match="same model size"):
        fit_envelope(sizes, C2 / (6 * sizes), C2, np.array([3.0, 2.9, 3.0, 2.5, 2.4, 2.5]), method="bin", n_bins=2,
                     C_range=(1e18, 1e19))


def _isoflop_data(seed):
    # 5 budgets, 9 sizes each spread +-0.8 decades around the optimum (jittered), 0.3% noise.
    rng = np.random.default_rng(seed)
    N, C = [], []
    for c in [1e17, 1e18, 1e19, 1e20, 1e21]:
        n_opt = TRUE_G * (c / 6) ** TRUE_a
        N.append(n_opt * 10 ** np.linspace(-0.8, 0.8, 9) * np.exp(rng.normal(0, 0.05, 9)))
        C.append(np.full(9, c))
    N, C = np.concatenate(N), np.concatenate(C)
    D = C / (6 * N)
    return N, D, C, chinchilla_law(N, D) * np.exp(rng.normal(0, 0.003, len(N)))


def _jitter(C, seed):
    """Each run's FLOPs within 1% of its budget (whole-step FLOP matching)."""
    return C * (1 + 0.01 * np.random.default_rng(1000 + seed).uniform(-1, 1, len(C)))


def test_isoflop_recovers_allocation_exponents():
    N, D, C, loss = _isoflop_data(0)
    C_jittered = _jitter(C, 0)
    fit = fit_isoflop(N, D, C_jittered, loss, bootstrap=20, seed=0)
    assert isinstance(fit, IsoflopFit)
    assert len(fit.data["budget_C"]) == 5
    assert fit.a == pytest.approx(TRUE_a, abs=0.015)  # sd over seeds 0.004
    np.testing.assert_allclose(fit.a + fit.b, 1, atol=1e-12)  # D_opt = C / (6 N_opt)
    assert np.all(fit.data["budget_N_opt_lo"] <= fit.data["budget_N_opt"])
    assert np.all(fit.data["budget_N_opt"] <= fit.data["budget_N_opt_hi"])
    # Given budgets group the same points; "data" reads D_opt off the runs, the same under C = 6ND.
    fit2 = fit_isoflop(N, D, C_jittered, loss, budgets=[1e17, 1e18, 1e19, 1e20, 1e21], d_opt="data")
    np.testing.assert_array_equal(fit2.data["group"], np.repeat(np.arange(5), 9))
    assert fit2.a == pytest.approx(fit.a, abs=1e-3)
    np.testing.assert_allclose(fit2.data["budget_D_opt"], fit2.data["budget_C"] / (6 * fit2.data["budget_N_opt"]),
                               rtol=1e-9)
    # The parabola residuals are the losses minus the fitted curves.
    g = fit.data["group"]
    curve = np.array([fit.loss_curve(g[i], N[i]) for i in range(len(N))])
    np.testing.assert_allclose(fit.residuals["loss"], loss - curve, atol=1e-12)


# Smaller start grids than the defaults keep these tests fast (the 4500-start default grid is exercised by the
# Chinchilla test); every start in them reaches the global optimum on these data.
SMALL_GRID = {"e": [0.0, 0.5], "a": [5.0, 10.0], "alpha": [0.3, 0.6], "b": [5.0, 10.0], "beta": [0.3, 0.6]}


def _parametric_data(seed):
    # 150 runs, sizes and token counts log-uniform over 3 decades each, 0.5% noise.
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 150))
    D = np.exp(rng.uniform(np.log(1e9), np.log(1e12), 150))
    return N, D, chinchilla_law(N, D) * np.exp(rng.normal(0, 0.005, 150))


def test_parametric_recovers_law():
    N, D, loss = _parametric_data(0)
    fit = fit_parametric(N, D, loss, init_grid=SMALL_GRID, bootstrap=20, seed=0)
    assert isinstance(fit, ParametricFit)
    assert set(fit.ci) == {"E", "A", "B", "alpha", "beta", "a", "b", "G"}
    assert fit.info["bootstrap_failed"] == 0
    assert len(fit.samples["alpha"]) == 20
    # sd over seeds 0.005
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.02) and fit.beta == pytest.approx(TRUE["beta"], abs=0.02)
    # Without noise the fit is exact.
    exact = fit_parametric(N, D, chinchilla_law(N, D), init_grid=SMALL_GRID)
    for name, value in TRUE.items():
        assert exact.params[name] == pytest.approx(value, rel=1e-4), name


STATE_TRUE = {"E": 1.5, "A": 300.0, "alpha": 0.3, "B": 60.0, "gamma": 0.4, "C": 800.0, "beta": 0.3}


STATE_GRID = {"e": [0.0, 0.5], "a": [5.0, 10.0], "alpha": [0.3, 0.6], "b": [5.0, 10.0], "gamma": [0.3, 0.6]}
STATE_GRID_D = {"e": [0.0, 0.5], "a": [5.0], "alpha": [0.3, 0.6], "b": [5.0], "gamma": [0.3, 0.6], "c": [5.0],
                "beta": [0.3, 0.6]}


def _state_data(seed, with_D):
    # A full grid of 7 sizes x 7 state sizes (x 5 token counts with D: 5 x 5 x 5), 0.5% noise.
    rng = np.random.default_rng(seed)
    t = STATE_TRUE
    if not with_D:
        N, S = (x.ravel() for x in np.meshgrid(np.geomspace(1e6, 1e9, 7), np.geomspace(1e3, 1e7, 7)))
        loss = t["E"] + t["A"] / N ** t["alpha"] + t["B"] / S ** t["gamma"]
        return N, S, None, loss * np.exp(rng.normal(0, 0.005, len(N)))
    N, S, D = (x.ravel() for x in np.meshgrid(np.geomspace(1e6, 1e9, 5), np.geomspace(1e3, 1e7, 5),
                                              np.geomspace(1e9, 1e12, 5)))
    loss = t["E"] + t["A"] / N ** t["alpha"] + t["B"] / S ** t["gamma"] + t["C"] / D ** t["beta"]
    return N, S, D, loss * np.exp(rng.normal(0, 0.005, len(N)))


def test_state_law_recovers_exponents():
    t = STATE_TRUE
    N, S, _, loss = _state_data(0, with_D=False)
    fit = fit_state_law(N, S, loss, init_grid=STATE_GRID, bootstrap=10, seed=0)
    assert isinstance(fit, StateLawFit) and not fit.has_D
    assert set(fit.ci) >= {"alpha", "gamma"}
    assert fit.params["gamma"] == pytest.approx(t["gamma"], abs=0.02)  # sd over seeds 0.004

    N, S, D, loss = _state_data(0, with_D=True)
    fit = fit_state_law(N, S, loss, D=D, init_grid=STATE_GRID_D, bootstrap=10, seed=0)
    assert fit.has_D and set(fit.ci) >= {"alpha", "gamma", "beta"}
    assert fit.params["beta"] == pytest.approx(t["beta"], abs=0.025)  # sd over seeds 0.006
    np.testing.assert_allclose(np.exp(fit.residuals["log_loss"]), loss / fit.predict(N, S, D), rtol=1e-12)


def _context_data(seed):
    # Optimal context 2048 (C / 1e18)^0.25; an asymmetric U in log context; contexts are powers of two within a
    # decade of the optimum (not centred on it); 0.2% noise; each run's FLOPs within 1% of its budget.
    rng = np.random.default_rng(seed)
    T, C, loss = [], [], []
    for c in [1e17, 1e18, 1e19, 1e20]:
        t_opt = 2048 * (c / 1e18) ** 0.25
        ts = 2.0 ** np.arange(7, 17)
        ts = ts[(ts > t_opt / 10) & (ts < t_opt * 10)]
        u = np.log(ts / t_opt)
        loss.append((2.0 + 0.3 * (c / 1e18) ** -0.1 + 0.02 * (u**2 + 0.1 * u**3)) * np.exp(rng.normal(0, 0.002,
                                                                                                     len(ts))))
        T.append(ts)
        C.append(c * (1 + 0.01 * rng.uniform(-1, 1, len(ts))))
    return np.concatenate(T), np.concatenate(C), np.concatenate(loss)


def test_context_law_recovers_exponent():
    T, C, loss = _context_data(0)
    fit = fit_context_law(T, loss, budgets=C, bootstrap=20, seed=0)
    assert isinstance(fit, ContextLawFit)
    assert len(fit.data["budget_C"]) == 4
    assert fit.params["a"] == pytest.approx(0.25, abs=0.035)  # sd over seeds 0.008
    # The cubic part of the U pulls each parabola's vertex ~20% low, by about the same factor at every budget, so the
    # exponent is unbiased while the optima themselves are off by that factor.
    ratio = fit.data["budget_context_opt"] / (2048 * (fit.data["budget_C"] / 1e18) ** 0.25)
    assert np.all((ratio > 0.7) & (ratio < 1.05)) and np.ptp(np.log(ratio)) < 0.1
    assert fit.context_opt(1e18) == pytest.approx(2048, rel=0.3)
    # One budget: the optimum itself, with its interval.
    one = fit_context_law(T[C < 2e17], loss[C < 2e17], bootstrap=50)
    assert set(one.params) == {"context_opt"}
    lo, hi = one.ci["context_opt"]
    assert lo <= one.context_opt() <= hi
    assert one.context_opt() == pytest.approx(2048 * 0.1**0.25, rel=0.3)


# ------------------------------------------------------------------------------------------------------------
# The bootstrap intervals hold the truth at about their nominal rate, over many data seeds

# Per fit: (fit of seed s's data with fast or full settings, {parameter: true value}). Fast: 40 bootstrap
# resamples and plan.FAST_*_GRID starts; full: 200 resamples (the CLI's default) and the default start grids.
FAST_BOOTSTRAP, FULL_BOOTSTRAP = 40, 200


def _envelope_case(seed, fast):
    N, D, C, loss = _envelope_data(seed)
    fit = fit_envelope(N, D, C, loss, bootstrap=FAST_BOOTSTRAP if fast else FULL_BOOTSTRAP, seed=seed)
    return fit, {"a": TRUE_a, "b": TRUE_b}


def _isoflop_case(seed, fast):
    N, D, C, loss = _isoflop_data(seed)
    fit = fit_isoflop(N, D, _jitter(C, seed), loss, bootstrap=FAST_BOOTSTRAP if fast else FULL_BOOTSTRAP, seed=seed)
    return fit, {"a": TRUE_a, "b": TRUE_b}


def _parametric_case(seed, fast):
    N, D, loss = _parametric_data(seed)
    fit = fit_parametric(N, D, loss, init_grid=FAST_PARAMETRIC_GRID if fast else None,
                         bootstrap=FAST_BOOTSTRAP if fast else FULL_BOOTSTRAP, seed=seed)
    return fit, {"alpha": TRUE["alpha"], "beta": TRUE["beta"], "a": TRUE_a, "b": TRUE_b, "E": TRUE["E"]}


def _state_case(seed, fast):
    N, S, _, loss = _state_data(seed, with_D=False)
    fit = fit_state_law(N, S, loss, init_grid=FAST_STATE_GRID if fast else None,
                        bootstrap=FAST_BOOTSTRAP if fast else FULL_BOOTSTRAP, seed=seed)
    return fit, {k: STATE_TRUE[k] for k in ("alpha", "gamma")}


def _state_D_case(seed, fast):
    N, S, D, loss = _state_data(seed, with_D=True)
    fit = fit_state_law(N, S, loss, D=D, init_grid=FAST_STATE_GRID_WITH_D if fast else None,
                        bootstrap=FAST_BOOTSTRAP if fast else FULL_BOOTSTRAP, seed=seed)
    return fit, {k: STATE_TRUE[k] for k in ("alpha", "gamma", "beta")}


def _context_case(seed, fast):
    T, C, loss = _context_data(seed)
    return fit_context_law(T, loss, budgets=C, bootstrap=FAST_BOOTSTRAP if fast else FULL_BOOTSTRAP, seed=seed), \
        {"a": 0.25}


COVERAGE_CASES = {"envelope": _envelope_case, "isoflop": _isoflop_case, "parametric": _parametric_case,
                  "state": _state_case, "state_D": _state_D_case, "context": _context_case}


def _coverage_rates(case: str, seeds, fast: bool) -> tuple[dict[str, float], float]:
    """Per parameter, the fraction of seeds whose 95% interval holds the truth; and the fraction where all do."""
    inside = []
    for seed in seeds:
        fit, truth = COVERAGE_CASES[case](seed, fast)
        inside.append({k: fit.ci[k][0] <= v <= fit.ci[k][1] for k, v in truth.items()})
    per = {k: float(np.mean([row[k] for row in inside])) for k in inside[0]}
    return per, float(np.mean([all(row.values()) for row in inside]))


@pytest.mark.parametrize("case", list(COVERAGE_CASES))
def test_bootstrap_interval_coverage(case):
    """20 seeds, fast settings: every parameter's interval holds the truth for at least 70% of them (module
    docstring: the rates measured over 100 seeds are 0.89-0.98, where 70% of 20 fails with probability < 0.5%)."""
    per, joint = _coverage_rates(case, range(20), fast=True)
    assert all(r >= 0.7 for r in per.values()), (per, joint)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(COVERAGE_CASES))
def test_bootstrap_interval_coverage_many_seeds(case):
    """40 seeds, full settings: at least 80% per parameter (measured rates: module docstring)."""
    per, joint = _coverage_rates(case, range(40), fast=False)
    print(f"{case}: per parameter {per}, all {joint}")
    assert all(r >= 0.8 for r in per.values()), (per, joint)


# ------------------------------------------------------------------------------------------------------------
# 3. JSON, validation, helpers


def _all_fits():
    rng = np.random.default_rng(3)
    N, D, C, loss = _isoflop_data(1)
    iso = fit_isoflop(N, D, C, loss, bootstrap=10)
    env = fit_envelope(N, D, C, loss, method="bin", drop_edge_sizes=False, n_bins=6, bootstrap=5)
    Np = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 30))
    Dp = np.exp(rng.uniform(np.log(1e9), np.log(1e12), 30))
    par = fit_parametric(Np, Dp, chinchilla_law(Np, Dp), init_grid=SMALL_GRID, bootstrap=3)
    S = np.exp(rng.uniform(np.log(1e3), np.log(1e7), 30))
    st = fit_state_law(Np, S, 1.5 + 300 / Np**0.3 + 60 / S**0.4,
                       init_grid={"e": [0.0], "a": [5.0], "alpha": [0.5], "b": [5.0], "gamma": [0.5]})
    T, Cc, lc = _context_data(2)
    ctx = fit_context_law(T, lc, budgets=Cc, bootstrap=5)
    ctx1 = fit_context_law(T[:5], lc[:5])  # no budgets: NaN budget value, to be carried as null
    return [iso, env, par, st, ctx, ctx1]


def test_json_round_trip():
    for fit in _all_fits():
        s = fit.to_json()
        json.loads(s, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
        back = fit_from_json(s)
        assert type(back) is type(fit)
        assert back.to_dict() == fit.to_dict()
        assert type(fit).from_dict(json.loads(s)).to_dict() == fit.to_dict()
        for k, v in fit.data.items():
            np.testing.assert_array_equal(back.data[k], v)
            assert back.data[k].dtype.kind == np.asarray(v).dtype.kind, k
        np.testing.assert_equal(back.ci, fit.ci)  # NaN where a fit has no interval
    iso, _, par, st, _, _ = _all_fits()
    back = fit_from_dict(par.to_dict())
    assert back.N_opt(1e22) == pytest.approx(par.N_opt(1e22))
    assert back.alpha == par.alpha and back.G == par.G
    assert fit_from_dict(iso.to_dict()).D_opt(1e20) == pytest.approx(iso.D_opt(1e20))
    assert fit_from_dict(st.to_dict()).predict(1e8, 1e5) == pytest.approx(st.predict(1e8, 1e5))
    with pytest.raises(ValueError, match="kind"):
        ParametricFit.from_dict(iso.to_dict())
    with pytest.raises(ValueError, match="kind"):
        fit_from_dict({"kind": "nope"})


def test_input_validation():
    N, D, C, loss = _isoflop_data(0)
    with pytest.raises(ValueError, match="same length"):
        fit_parametric(N, D[:-1], loss)
    with pytest.raises(ValueError, match=r"loss: must be > 0"):
        fit_parametric(N, D, np.where(np.arange(len(loss)) == 3, -1.0, loss))
    with pytest.raises(ValueError, match=r"D: must be > 0"):
        fit_isoflop(N, np.zeros_like(D), C, loss)
    with pytest.raises(ValueError, match=r"N: 1 non-finite"):
        fit_parametric(np.where(np.arange(len(N)) == 0, np.nan, N), D, loss)
    with pytest.raises(ValueError, match="at least 6 points"):
        fit_parametric(N[:5], D[:5], loss[:5])
    with pytest.raises(ValueError, match="at least 8 points"):
        fit_state_law(N[:7], N[:7], loss[:7], D=D[:7])
    with pytest.raises(ValueError, match="1-D"):
        fit_parametric(N.reshape(5, 9), D.reshape(5, 9), loss.reshape(5, 9))
    with pytest.raises(ValueError, match="must be numeric"):
        fit_parametric(["a"] * 10, D[:10], loss[:10])
    with pytest.raises(ValueError, match="bootstrap: must be an integer"):
        fit_isoflop(N, D, C, loss, bootstrap=-1)
    with pytest.raises(ValueError, match="init_grid: unknown key"):
        fit_parametric(N, D, loss, init_grid={"gamma": [1.0]})
    with pytest.raises(ValueError, match=r"init_grid\['alpha'\]"):
        fit_parametric(N, D, loss, init_grid={"alpha": []})
    with pytest.raises(ValueError, match="delta"):
        fit_parametric(N, D, loss, delta=0)
    with pytest.raises(ValueError, match="at least 2 FLOP budgets"):
        fit_isoflop(N[:9], D[:9], C[:9], loss[:9])
    with pytest.raises(ValueError, match="at least 3 distinct N"):
        fit_isoflop(N, D, C, loss, budgets=[1e17, 1e18, 1e22])  # nothing near 1e22
    with pytest.raises(ValueError, match="not convex"):
        fit_isoflop(N, D, C, np.where(C == 1e18, -(loss - 4) + 4, loss))
    with pytest.raises(ValueError, match="d_opt"):
        fit_isoflop(N, D, C, loss, d_opt="tokens")
    with pytest.raises(ValueError, match="rtol"):
        fit_isoflop(N, D, C, loss, rtol=2)
    with pytest.raises(ValueError, match="method"):
        fit_envelope(N, D, C, loss, method="spline")
    with pytest.raises(ValueError, match="C_range"):
        fit_envelope(N, D, C, loss, C_range=(1e20, 1e18))
    with pytest.raises(ValueError, match="distinct model sizes"):
        fit_envelope(np.full(10, 1e8), D[:10], C[:10], loss[:10])
    T, Cb, lc = _context_data(0)
    with pytest.raises(ValueError, match="one FLOP value per point"):
        fit_context_law(T, lc, budgets=Cb[:-1])
    with pytest.raises(ValueError, match="distinct context"):
        fit_context_law(T[:2].tolist() * 3, lc[:6])
    with pytest.raises(ValueError, match="no U shape"):
        fit_context_law(T[:5], -(lc[:5] - 4) + 4)


def test_isoflop_warns_on_extrapolated_optimum():
    N, D, C, loss = _isoflop_data(0)
    keep = np.ones(len(N), bool)
    keep[:5] = False  # budget 1e17 keeps only its 4 largest sizes: the optimum lies below them
    with pytest.warns(UserWarning, match="outside the sizes trained"):
        fit = fit_isoflop(N[keep], D[keep], C[keep], loss[keep])
    assert fit.data["budget_extrapolated"].tolist() == [True, False, False, False, False]


def _state_fit(with_D: bool) -> StateLawFit:
    params = dict(STATE_TRUE) if with_D else {k: STATE_TRUE[k] for k in ("E", "A", "alpha", "B", "gamma")}
    data = {"N": np.geomspace(1e6, 1e9, 4), "S": np.geomspace(1e3, 1e7, 4), "loss": np.full(4, 2.0)}
    return StateLawFit(params=params, ci={}, residuals={}, data=data)


def test_compute_optimal_state_and_curves():
    from scipy.optimize import minimize_scalar

    fit = _state_fit(with_D=True)
    cost = lambda N, S: 6 * N + 60 * S  # noqa: E731  training FLOPs per token, with a state-dependent term
    out = compute_optimal_state(fit, [1e18, 1e20], cost, N=1e8, S=np.geomspace(1e3, 1e8, 4001))
    p = fit.params
    for j, c in enumerate([1e18, 1e20]):
        def loss_at(logS, c=c):
            S = math.exp(logS)
            return p["B"] / S ** p["gamma"] + p["C"] / (c / cost(1e8, S)) ** p["beta"]
        best = math.exp(minimize_scalar(loss_at, bounds=(math.log(1e3), math.log(1e8)), method="bounded",
                                        options={"xatol": 1e-8}).x)
        assert out["S_opt"][j] == pytest.approx(best, rel=0.01)
        assert out["D_opt"][j] == pytest.approx(c / cost(1e8, out["S_opt"][j]))
        assert out["loss"][j] == pytest.approx(fit.predict(1e8, out["S_opt"][j], out["D_opt"][j]))
    assert out["S_opt"][1] > out["S_opt"][0]  # more compute affords a larger state
    assert not out["at_edge"].any()
    # Searching N as well (default grid over the data range).
    both = compute_optimal_state(fit, 1e19, cost)
    assert both["loss"][0] <= compute_optimal_state(fit, 1e19, cost, N=1e8)["loss"][0] + 1e-12

    no_d = _state_fit(with_D=False)
    out = compute_optimal_state(no_d, [1e17, 1e19], cost, N=1e7, tokens=1e9)
    assert np.all(cost(1e7, out["S_opt"]) * 1e9 <= out["C"])
    assert np.isnan(compute_optimal_state(no_d, 1.0, cost, tokens=1e9)["S_opt"][0])  # nothing affordable
    with pytest.raises(ValueError, match="tokens"):
        compute_optimal_state(no_d, 1e19, cost)
    with pytest.raises(ValueError, match="tokens"):
        compute_optimal_state(fit, 1e19, cost, tokens=1e9)
    with pytest.raises(ValueError, match="flops_per_token"):
        compute_optimal_state(fit, 1e19, lambda N, S: -N)

    curves = loss_vs_state(no_d, [1e7, 1e8], np.geomspace(1e3, 1e6, 5))
    assert curves.shape == (2, 5)
    assert np.all(np.diff(curves, axis=1) < 0) and np.all(curves[1] < curves[0])
    np.testing.assert_allclose(curves[1, 2], no_d.predict(1e8, np.geomspace(1e3, 1e6, 5)[2]))
    assert loss_vs_state(fit, 1e8, [1e3, 1e4], D=1e10).shape == (1, 2)
    with pytest.raises(ValueError, match="pass D"):
        loss_vs_state(fit, 1e8, [1e3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(loss_vs_state(no_d, 1e8, 1e4)).all()


def test_an_optimum_that_overflows_is_a_clear_error_and_an_overflowing_replicate_a_failed_one():
    from scaling.analysis.optimize import _optimum_params, _replicate_samples
    from scaling.analysis.state_law import _state_params

    order = ("e", "a", "alpha", "b", "gamma")
    ok, runaway = np.array([0.5, 2.0, 0.3, 1.0, 0.4]), np.array([0.5, 2.0, 0.3, 900.0, 60.0])
    assert _optimum_params(_state_params, ok, order)["B"] == pytest.approx(math.e)
    with pytest.raises(ValueError, match=r"runs off to infinity \(e = 0.5, a = 2, alpha = 0.3, b = 900, gamma = 60"):
        _optimum_params(_state_params, runaway, order)
    info = {"bootstrap_failed": 1}  # one replicate the optimizer lost (a NaN row)
    reps = np.stack([ok, runaway, ok * 1.1, np.full(5, np.nan)])
    samples = _replicate_samples(reps, _state_params, _state_params(ok), info)
    assert np.isnan(samples["B"][[1, 3]]).all() and np.isfinite(samples["B"][[0, 2]]).all()
    assert info["bootstrap_failed"] == 2
    assert samples["gamma"][2] == pytest.approx(0.44)


def test_a_context_law_whose_coefficient_overflows_is_a_clear_error_and_such_replicates_fail(monkeypatch):
    """Optima 2,000 -> 90 tokens between budgets 10% apart: slope -32.6, so k = exp(758) is beyond float64. The point
    estimate is a one-line ValueError (it was an OverflowError that plan.py caught and retried without bootstrap);
    a bootstrap replicate that overflows counts as a failed one."""
    import scaling.analysis.context_law as context_law
    from scaling.analysis.fit_base import _fit_line

    logT = np.log([256.0, 1024, 4096])
    T, C, loss = [], [], []
    for c, t_opt in ((1e10, 2000.0), (1.1e10, 90.0)):
        T += list(np.exp(logT))
        C += [c] * 3
        loss += list(3.0 + 0.1 * (logT - math.log(t_opt)) ** 2)
    with warnings.catch_warnings(), pytest.raises(ValueError, match=r"fit_context_law: the power law through the "
                                                                  "optima runs off to infinity"):
        warnings.simplefilter("ignore", UserWarning)  # 90 tokens lies below the contexts trained: an extrapolation
        fit_context_law(T, loss, budgets=C)

    T2, C2, loss2 = _context_data(0)
    calls = []

    def steep_after_the_first(x, y):  # the point estimate's line as fitted; every replicate's runs off
        slope, intercept, res = _fit_line(x, y)
        calls.append(1)
        return slope, (intercept if len(calls) == 1 else 800.0), res

    monkeypatch.setattr(context_law, "_fit_line", steep_after_the_first)
    fit = fit_context_law(T2, loss2, budgets=C2, bootstrap=6, seed=0)
    assert fit.params["a"] == pytest.approx(0.25, abs=0.035)
    assert fit.info["bootstrap_failed"] == 6 and np.isnan(fit.samples["k"]).all()
