"""Prediction intervals of the power-sum laws (scaling.analysis.predict): coverage on synthetic laws, and shape.

Coverage is checked the way the intervals are used: fit a few runs, predict new runs at a larger budget (or state
size), draw those runs with fresh noise, count how often the interval holds them. Measured (this file's designs,
levels 0.5 / 0.9 / 0.95):

- Chinchilla law, 300 seeds x 3 predictions: 0.480 / 0.899 / 0.951 (seeds 0-39: 0.933 at 0.9);
- state-size law, larger state size held out, 300 seeds x 3 predictions: 0.499 / 0.902 / 0.946 (seeds 0-39: 0.917
  at 0.9); holding out a larger N instead (4 predictions at N = 1e9, not tested) gave 0.497 / 0.894 / 0.947.

The bands below are those a correct interval passes with probability about 1 - 1e-4 per side: quantiles of the
mean coverage over 40 (fast) or 300 (slow) seeds, resampling the seeds of the 300-seed runs (the 3 predictions of
one seed share its fit, so they are not independent: the per-seed coverage at 0.9 has sd 0.21, against 0.17 for 3
independent draws). The per-level quantiles at 40 seeds were about [0.76, 0.99] at 0.9 and [0.29, 0.69] at 0.5;
at 300 seeds [0.85, 0.944] at 0.9, [0.41, 0.57] at 0.5 and [0.904, 0.98] at 0.95.
"""

import numpy as np
import pytest

from scaling.analysis import ParametricFit, StateLawFit, fit_parametric, fit_state_law

LEVELS = (0.5, 0.9, 0.95)

# ------------------------------------------------------------------------------------------------------------
# Designs

CHIN = {"E": 1.8, "A": 400.0, "alpha": 0.34, "B": 2000.0, "beta": 0.37}
CHIN_GRID = {"e": (-1, 0, 1), "a": (0, 5, 10), "alpha": (0.2, 0.6), "b": (0, 5, 10), "beta": (0.2, 0.6)}
CHIN_NEW_N = np.array([1e8, 2e8, 4e8])  # predicted at budget 3e19, 3x the largest fitted
CHIN_NEW_D = 3e19 / (6 * CHIN_NEW_N)

STATE = {"E": 1.6, "A": 300.0, "alpha": 0.3, "B": 40.0, "gamma": 0.4}
STATE_GRID = {"e": (-1, 0, 1), "a": (0, 5, 10), "alpha": (0.2, 0.6), "b": (0, 5, 10), "gamma": (0.2, 0.6)}
STATE_SIZES = np.geomspace(3e7, 3e8, 3)
STATE_S = np.geomspace(1e3, 1e5, 4)
STATE_NEW_N = STATE_SIZES  # predicted at state size 1e6, 10x the largest fitted
STATE_NEW_S = np.full(3, 1e6)

NOISE = 0.01  # multiplicative, lognormal


def chin_law(N, D):
    return CHIN["E"] + CHIN["A"] / N ** CHIN["alpha"] + CHIN["B"] / D ** CHIN["beta"]


def state_law(N, S):
    return STATE["E"] + STATE["A"] / N ** STATE["alpha"] + STATE["B"] / S ** STATE["gamma"]


def _chin_fit(seed: int) -> tuple[ParametricFit, np.random.Generator]:
    """4 sizes geomspace(3e7, 3e8) x budgets 1e18, 3e18, 1e19, D = C / (6 N): 12 runs, 7 residual dof."""
    rng = np.random.default_rng(seed)
    N, C = (x.ravel() for x in np.meshgrid(np.geomspace(3e7, 3e8, 4), [1e18, 3e18, 1e19]))
    D = C / (6 * N)
    loss = chin_law(N, D) * np.exp(rng.normal(0, NOISE, len(N)))
    return fit_parametric(N, D, loss, init_grid=CHIN_GRID), rng


def _state_fit(seed: int) -> tuple[StateLawFit, np.random.Generator]:
    """3 sizes geomspace(3e7, 3e8) x 4 state sizes geomspace(1e3, 1e5): 12 runs, 7 residual dof."""
    rng = np.random.default_rng(seed)
    N, S = (x.ravel() for x in np.meshgrid(STATE_SIZES, STATE_S))
    loss = state_law(N, S) * np.exp(rng.normal(0, NOISE, len(N)))
    return fit_state_law(N, S, loss, init_grid=STATE_GRID), rng


def _chin_covered(seed: int) -> np.ndarray:
    """[levels, 3]: whether each level's interval holds the new runs (fresh noise)."""
    fit, rng = _chin_fit(seed)
    y = chin_law(CHIN_NEW_N, CHIN_NEW_D) * np.exp(rng.normal(0, NOISE, len(CHIN_NEW_N)))
    return np.array([(lo <= y) & (y <= hi) for lo, hi in
                     (fit.predict_interval(CHIN_NEW_N, CHIN_NEW_D, level=lv) for lv in LEVELS)])


def _state_covered(seed: int) -> np.ndarray:
    fit, rng = _state_fit(seed)
    y = state_law(STATE_NEW_N, STATE_NEW_S) * np.exp(rng.normal(0, NOISE, len(STATE_NEW_N)))
    return np.array([(lo <= y) & (y <= hi) for lo, hi in
                     (fit.predict_interval(STATE_NEW_N, STATE_NEW_S, level=lv) for lv in LEVELS)])


COVERED = {"chinchilla": _chin_covered, "state": _state_covered}


def _coverage(law: str, seeds: range) -> dict[float, float]:
    hits = np.stack([COVERED[law](s) for s in seeds])  # [seeds, levels, m]
    return dict(zip(LEVELS, hits.mean(axis=(0, 2)).tolist(), strict=True))


# ------------------------------------------------------------------------------------------------------------
# Coverage


@pytest.mark.parametrize("law", sorted(COVERED))
def test_prediction_interval_coverage(law):
    """40 seeds x 3 predictions: 0.9 within [0.75, 0.99], 0.5 within [0.28, 0.72] and clearly below the 0.9 one."""
    cov = _coverage(law, range(40))
    assert 0.75 <= cov[0.9] <= 0.99, cov
    assert 0.28 <= cov[0.5] <= 0.72, cov
    assert cov[0.9] - cov[0.5] >= 0.15, cov
    assert cov[0.5] <= cov[0.9] <= cov[0.95], cov


@pytest.mark.slow
@pytest.mark.parametrize("law", sorted(COVERED))
def test_prediction_interval_coverage_many_seeds(law):
    """300 seeds x 3 predictions (measured: module docstring)."""
    cov = _coverage(law, range(300))
    print(f"{law}: coverage by level {cov}")
    assert 0.845 <= cov[0.9] <= 0.95, cov
    assert 0.40 <= cov[0.5] <= 0.60, cov
    assert 0.90 <= cov[0.95] <= 0.985, cov


# ------------------------------------------------------------------------------------------------------------
# Shape of the intervals


def _log_width(lo, hi):
    return np.log(np.asarray(hi)) - np.log(np.asarray(lo))


@pytest.mark.parametrize("seed", range(5))
def test_interval_brackets_prediction_and_widens_with_extrapolation(seed):
    fit, _ = _chin_fit(seed)
    # Along tokens per parameter 20 (inside the data near C = 1e18 .. 1e19), then ever larger budgets.
    C = np.array([3e18, 1e20, 1e22, 1e24])
    N = np.sqrt(C / (6 * 20))
    D = 20 * N
    lo, hi = fit.predict_interval(N, D)
    pred = fit.predict(N, D)
    assert np.all((lo < pred) & (pred < hi))
    assert np.all(np.diff(_log_width(lo, hi)) > 0)
    # Smaller models than fitted, at a fixed budget.
    N = np.array([1e8, 1e7, 1e6, 1e5])
    w = _log_width(*fit.predict_interval(N, 1e19 / (6 * N)))
    assert np.all(np.diff(w) > 0)
    # Every interval is wider than the scatter alone would make it, and a higher level is wider.
    t_only = 2 * 1.894579 * fit.scatter  # t_{7, 0.95}: the 90% interval with no parameter uncertainty
    assert np.all(w > t_only)
    assert np.all(_log_width(*fit.predict_interval(N, 1e19 / (6 * N), level=0.95)) > w)

    st, _ = _state_fit(seed)
    S = np.array([3e4, 1e6, 1e8, 1e10])  # from inside the fitted state sizes outwards
    lo, hi = st.predict_interval(1e8, S)
    pred = st.predict(1e8, S)
    assert np.all((lo < pred) & (pred < hi))
    assert np.all(np.diff(_log_width(lo, hi)) > 0)
    w = _log_width(*st.predict_interval(np.array([1e8, 1e9, 1e10, 1e11]), 1e4))
    assert np.all(np.diff(w) > 0)


def test_interval_arguments():
    fit, _ = _chin_fit(0)
    st, _ = _state_fit(0)
    for level in (0, 1, 1.5, -0.1, float("nan"), "0.9", None):
        with pytest.raises(ValueError, match="level"):
            fit.predict_interval(1e8, 1e10, level=level)
        with pytest.raises(ValueError, match="level"):
            st.predict_interval(1e8, 1e4, level=level)
    # Scalars in, floats out; arrays broadcast.
    for lo, hi in (fit.predict_interval(1e8, 1e10), st.predict_interval(1e8, 1e4)):
        assert type(lo) is float and type(hi) is float and lo < hi
    lo, hi = fit.predict_interval(np.array([1e8, 2e8]), 1e10)
    assert lo.shape == hi.shape == (2,)
    assert lo[0] == fit.predict_interval(1e8, 1e10)[0]
    lo, hi = st.predict_interval(1e8, np.array([1e3, 1e4, 1e5]))
    assert lo.shape == (3,) and np.all(lo < hi)
    with pytest.raises(ValueError, match="positive"):
        fit.predict_interval(-1e8, 1e10)
    with pytest.raises(ValueError, match="D: this state law has no data term"):
        st.predict_interval(1e8, 1e4, D=1e10)
