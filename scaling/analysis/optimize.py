"""Multi-start fits of sums of power laws: log L = LSE(c_1 - p_1 log X_1, ..., c_K - p_K log X_K, e), with the Huber
loss of the log residuals as objective, L-BFGS-B from every start of a grid, the best end point polished, and
bootstrap refits (approach 3 and the state-size law use it)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize


@functools.cache
def _openblas_thread_controls() -> tuple[tuple[Callable, Callable], ...]:
    """(get, set) num-threads functions of every OpenBLAS already loaded in this process (Linux only)."""
    if not os.path.exists("/proc/self/maps") or not hasattr(os, "RTLD_NOLOAD"):
        return ()
    with open("/proc/self/maps") as f:
        paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    controls = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # only libraries already loaded
        except OSError:
            continue
        for prefix in ("openblas", "scipy_openblas"):
            for suffix in ("", "64_"):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    get.restype = ctypes.c_int
                    set_.argtypes = [ctypes.c_int]
                    controls.append((get, set_))
    return tuple(controls)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run L-BFGS-B with single-threaded BLAS.

    scipy's L-BFGS-B calls BLAS/LAPACK on its 5-7 dimensional problem every iteration; with a multithreaded
    OpenBLAS on a busy machine the thread hand-offs made each iteration ~100x slower (7 ms instead of 60 us)
    in our measurements. threadpoolctl does this when installed; otherwise the OpenBLAS symbols are called.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    controls = _openblas_thread_controls()
    saved = [get() for get, _ in controls]
    for _, set_ in controls:
        set_(1)
    try:
        yield
    finally:
        for (_, set_), n in zip(controls, saved, strict=True):
            set_(n)


class _HuberObjective:
    """Weighted Huber objective of log-loss residuals and its gradient, for a batch of parameter vectors.

    theta = [e, c_1, p_1, ..., c_K, p_K]; prediction log L = LSE(c_k - p_k logX_k, e). ``logX`` [K, n] log
    covariates, ``logy`` [n] log losses, ``weights`` [R, n] point weights of R data sets (None: one unweighted
    data set; bootstrap replicates are resampling counts, since a point drawn twice counts twice).
    Objective of data set r: sum_i weights[r, i] * huber_delta(prediction_i - logy_i).
    """

    # Rows per chunk: b * K * n <= this keeps the ~20 temporaries in cache (~1.6x faster than one big batch
    # of 4500 starts x 240 points in our measurement) and bounds memory on large tables.
    _CHUNK_ELEMENTS = 16384

    def __init__(self, logX: np.ndarray, logy: np.ndarray, delta: float, weights: np.ndarray | None = None):
        self.logX, self.logy, self.delta, self.weights = logX, logy, delta, weights

    def __call__(self, ds: np.ndarray, TH: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objectives [b] and gradients [b, 1 + 2K] at TH [b, 1 + 2K], rows of data sets ``ds`` [b]."""
        b = len(TH)
        step = max(1, self._CHUNK_ELEMENTS // self.logX.size)
        if b > step:
            parts = [self(ds[i:i + step], TH[i:i + step]) for i in range(0, b, step)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        X, delta = self.logX, self.delta
        e = TH[:, 0]
        T = TH[:, 1::2, None] - TH[:, 2::2, None] * X  # [b, K, n]
        m = np.maximum(T.max(axis=1), e[:, None])  # [b, n], for a stable log-sum-exp
        W = np.exp(T - m[:, None, :])
        we = np.exp(e[:, None] - m)
        s = W.sum(axis=1) + we
        r = m + np.log(s) - self.logy
        g = np.clip(r, -delta, delta)  # huber'(r)
        if self.weights is not None:
            g *= self.weights[ds]  # the weighted Huber derivative; the loss below needs the unweighted clip
            r -= 0.5 * np.clip(r, -delta, delta)
        else:
            r -= 0.5 * g
        # g (r - g/2) is r^2/2 inside [-delta, delta] and delta (|r| - delta/2) outside: the Huber loss.
        f = np.einsum("bn,bn->b", g, r)
        q = g / s
        Wq = W * q[:, None, :]
        grad = np.empty_like(TH)
        grad[:, 0] = np.einsum("bn,bn->b", we, q)
        grad[:, 1::2] = Wq.sum(axis=2)
        grad[:, 2::2] = -np.einsum("bkn,kn->bk", Wq, X)
        return f, grad


def _predict_log(theta: np.ndarray, logX: np.ndarray) -> np.ndarray:
    T = np.vstack([theta[1::2, None] - theta[2::2, None] * logX, np.full((1, logX.shape[1]), theta[0])])
    m = T.max(axis=0)
    return m + np.log(np.exp(T - m).sum(axis=0))


def _grid_starts(grid: Mapping[str, Sequence[float]] | None, default: Mapping[str, Sequence[float]],
                 order: Sequence[str]) -> np.ndarray:
    """Cartesian product of the init grid as starts [m, len(order)]; missing keys come from ``default``."""
    grid = dict(default) if grid is None else {**default, **grid}
    unknown = set(grid) - set(order)
    if unknown:
        raise ValueError(f"init_grid: unknown key(s) {sorted(unknown)}; accepted keys: {list(order)} "
                         "(e = log E and a, b, c = log of the coefficients)")
    axes = []
    for k in order:
        v = np.atleast_1d(np.asarray(grid[k], dtype=np.float64))
        if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
            raise ValueError(f"init_grid[{k!r}]: must be a non-empty sequence of finite numbers, got {grid[k]!r}")
        axes.append(v)
    return np.array(list(itertools.product(*axes)), dtype=np.float64)


# scipy's L-BFGS-B defaults (as Epoch's replication used them) for the multi-start, and tight ones to polish the
# winner: L-BFGS-B's ftol test is absolute when |f| < 1, and the summed Huber objective is ~1e-3 here.
_LBFGSB_DEFAULT = {"ftol": 2.220446049250313e-09, "gtol": 1e-05, "maxiter": 15000, "maxfun": 15000}
_LBFGSB_POLISH = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000, "maxfun": 20000}
_MAXCOR, _MAXLS = 10, 20  # scipy's defaults


def _lbfgsb_loop(fg: Callable, ds: np.ndarray, X0: np.ndarray, opts: Mapping[str, float]):
    """Reference path: ``scipy.optimize.minimize(method="L-BFGS-B")`` from each row of X0 [m, p] in turn."""
    X = np.empty_like(X0)
    for i, x0 in enumerate(X0):
        def f1(th, d=ds[i:i + 1]):
            f, g = fg(d, th[None, :])
            return float(f[0]), g[0]
        X[i] = minimize(f1, x0, jac=True, method="L-BFGS-B", options={**opts, "maxcor": _MAXCOR, "maxls": _MAXLS}).x
    return X


def _lbfgsb_lockstep(fg: Callable, ds: np.ndarray, X0: np.ndarray, opts: Mapping[str, float]):
    """The same scipy L-BFGS-B routine run from every row of X0 [m, p] at once.

    ``minimize`` drives scipy's ``_lbfgsb.setulb`` by reverse communication: setulb asks for f and g at x
    (task 3), starts a new iteration (task 1) or stops. Here one such loop runs per start, in lockstep, so
    that each round evaluates every pending start in one vectorised call: ~5x faster than thousands of
    separate ``minimize`` calls, whose per-call overhead dominates at 5-7 parameters (Epoch's 4500 starts on
    240 points: 2.7 s of CPU instead of 14.6 s, with bitwise identical end points). Same tolerances and
    stopping rules as ``minimize``; :func:`_lbfgsb_loop` is its twin, and the tests compare the two.
    """
    from scipy.optimize import _lbfgsb  # private but stable since scipy 1.15; checked by _lockstep_works()

    m, p = X0.shape
    X = np.array(X0, dtype=np.float64, order="C")  # setulb moves each row in place
    G = np.zeros((m, p))
    wa = np.zeros((m, 2 * _MAXCOR * p + 5 * p + 11 * _MAXCOR * _MAXCOR + 8 * _MAXCOR))
    iwa = np.zeros((m, 3 * p), np.int32)
    task = np.zeros((m, 2), np.int32)
    ln_task = np.zeros((m, 2), np.int32)
    lsave = np.zeros((m, 4), np.int32)
    isave = np.zeros((m, 44), np.int32)
    dsave = np.zeros((m, 29), np.float64)
    low, up, nbd = np.zeros(p), np.zeros(p), np.zeros(p, np.int32)  # unbounded
    factr = opts["ftol"] / np.finfo(float).eps
    gtol, maxiter, maxfun = opts["gtol"], opts["maxiter"], opts["maxfun"]
    nit = [0] * m
    nfev = [0] * m
    Fl = [0.0] * m
    # Per-row views made once: building them inside the loop cost as much as setulb itself.
    rows = [(X[i], G[i], wa[i], iwa[i], task[i], lsave[i], isave[i], dsave[i], ln_task[i]) for i in range(m)]
    setulb = _lbfgsb.setulb
    active = range(m)
    while True:
        need = []
        for i in active:
            x, g, wa_i, iwa_i, task_i, lsave_i, isave_i, dsave_i, ln_task_i = rows[i]
            while True:
                setulb(_MAXCOR, x, low, up, nbd, Fl[i], g, factr, gtol, wa_i, iwa_i, task_i, lsave_i, isave_i,
                       dsave_i, _MAXLS, ln_task_i)
                t = task_i[0]
                if t == 3:  # wants f and g at x
                    need.append(i)
                    break
                if t != 1:  # converged (4), stopped (5) or failed
                    break
                nit[i] += 1  # a new iteration: apply minimize's limits, as it does, then continue
                if nit[i] >= maxiter:
                    task_i[:] = (5, 504)
                elif nfev[i] > maxfun:
                    task_i[:] = (5, 502)
        if not need:
            break
        active = need
        idx = np.asarray(need)
        f, G[idx] = fg(ds[idx], X[idx])
        for i, fi in zip(need, f.tolist(), strict=True):
            Fl[i] = fi
            nfev[i] += 1
    return X


@functools.cache
def _lockstep_works() -> bool:
    """Whether this scipy's setulb has the interface _lbfgsb_lockstep drives (and agrees with minimize)."""
    logX = np.log(np.array([[1e6, 3e6, 1e7, 3e7, 1e8, 3e8], [2e9, 1e9, 5e9, 2e10, 1e10, 4e10]]))
    logy = np.log(1.8 + 400 / np.exp(logX[0]) ** 0.34 + 2000 / np.exp(logX[1]) ** 0.37)
    fg = _HuberObjective(logX, logy, 1e-3)
    X0 = np.array([[0.0, 5.0, 0.5, 5.0, 0.5]])
    ds = np.zeros(1, int)
    try:
        got = _lbfgsb_lockstep(fg, ds, X0, _LBFGSB_DEFAULT)
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
    return bool(np.allclose(got, _lbfgsb_loop(fg, ds, X0, _LBFGSB_DEFAULT), rtol=1e-6, atol=1e-8))


def _lbfgsb_many(fg: Callable, ds: np.ndarray, X0: np.ndarray, opts: Mapping[str, float]):
    """L-BFGS-B from every row of X0 [m, p]; returns (end points [m, p], objectives [m], inf where not finite)."""
    with warnings.catch_warnings(), _single_threaded_blas():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in exp from wild starts; those lose anyway
        X = (_lbfgsb_lockstep if _lockstep_works() else _lbfgsb_loop)(fg, ds, X0, opts)
        F, _ = fg(ds, X)  # re-evaluated: after an abnormal stop setulb's last f may belong to a trial point
    return X, np.where(np.isfinite(F) & np.isfinite(X).all(axis=1), F, np.inf)


def _distinct_optima(ends: np.ndarray, fvals: np.ndarray, best: np.ndarray, k: int) -> np.ndarray:
    """The best theta plus up to k - 1 other distinct local optima of the multi-start (lowest objective first)."""
    out = [best]
    for i in np.argsort(fvals):
        if len(out) >= k:
            break
        if np.isfinite(fvals[i]) and all(np.max(np.abs(ends[i] - o)) > 1e-3 for o in out):
            out.append(ends[i])
    return np.array(out)


def _best_per_set(X, F, ds, n_sets):
    """Index of the lowest objective among the rows of each data set."""
    order = np.lexsort((F, ds))
    first = np.searchsorted(ds[order], np.arange(n_sets))
    return order[first]


def _fit_power_sum(logX, logy, starts, delta, bootstrap, seed, bootstrap_starts):
    """Multi-start fit plus bootstrap. Returns (theta, objective, replicates [k, p] (NaN rows = failed), info)."""
    n = logy.shape[0]
    fg = _HuberObjective(logX, logy, delta)
    ends, fvals = _lbfgsb_many(fg, np.zeros(len(starts), int), starts, _LBFGSB_DEFAULT)
    best = int(np.argmin(fvals))
    if not np.isfinite(fvals[best]):
        raise ValueError("the fit diverged from every start (non-finite objective); check the inputs and init_grid")
    polished, fpol = _lbfgsb_many(fg, np.zeros(1, int), ends[best:best + 1], _LBFGSB_POLISH)
    theta, fbest = (polished[0], float(fpol[0])) if fpol[0] <= fvals[best] else (ends[best], float(fvals[best]))

    rng = np.random.default_rng(seed)
    boot_starts = _distinct_optima(ends, fvals, theta, bootstrap_starts)
    reps = np.full((bootstrap, len(theta)), np.nan)
    if bootstrap:
        # A point drawn j times counts j times: resampling with replacement as weights on the original points.
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(bootstrap)]).astype(float)
        fgb = _HuberObjective(logX, logy, delta, counts)
        ds = np.repeat(np.arange(bootstrap), len(boot_starts))
        ends_b, f_b = _lbfgsb_many(fgb, ds, np.tile(boot_starts, (bootstrap, 1)), _LBFGSB_DEFAULT)
        pick = _best_per_set(ends_b, f_b, ds, bootstrap)
        pol, f_pol = _lbfgsb_many(fgb, np.arange(bootstrap), ends_b[pick], _LBFGSB_POLISH)
        use_pol = f_pol <= f_b[pick]
        reps = np.where(use_pol[:, None], pol, ends_b[pick])
        reps[~np.isfinite(np.minimum(f_pol, f_b[pick]))] = np.nan
    info = {"objective": fbest, "n_starts": int(len(starts)), "n_bootstrap_starts": int(len(boot_starts)),
            "delta": delta, "bootstrap": bootstrap, "bootstrap_failed": int(np.isnan(reps[:, 0]).sum()),
            "seed": seed, "theta": theta.tolist()}
    return theta, fbest, reps, info


def _replicate_samples(reps: np.ndarray, to_params: Callable, names: Sequence[str]) -> dict[str, np.ndarray]:
    samples = {k: np.full(len(reps), np.nan) for k in names}
    for i, t in enumerate(reps):
        if np.isfinite(t).all():
            for k, v in to_params(t).items():
                samples[k][i] = v
    return samples
