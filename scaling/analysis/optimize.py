"""Multi-start fits of sums of power laws: log L = LSE(c_1 - p_1 log X_1, ..., c_K - p_K log X_K, e), with the Huber
loss of the log residuals as objective, L-BFGS from every start of a grid at once (a batched NumPy driver; scipy's
L-BFGS-B per start is its reference twin), the best end point polished, and bootstrap refits (approach 3 and the
state-size law use it)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits


def _single_threaded_blas():
    """Single-threaded BLAS while the optimisers run (a context manager).

    scipy's L-BFGS-B calls BLAS/LAPACK on its 5-7 dimensional problem every iteration; with a multithreaded
    OpenBLAS on a busy machine the thread hand-offs made each iteration ~100x slower (7 ms instead of 60 us)
    in our measurements. The batched driver's small products gain nothing from threads either.
    """
    return threadpool_limits(limits=1, user_api="blas")


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


_C1, _C2 = 1e-3, 0.9  # sufficient decrease and curvature constants of the line search (those of L-BFGS-B's dcsrch)


def _two_loop(G: np.ndarray, S: np.ndarray, Y: np.ndarray, RHO: np.ndarray, K: np.ndarray) -> np.ndarray:
    """L-BFGS directions -H g for the rows of G [b, p], from memories S, Y [b, M, p] and RHO = 1 / s.y [b, M]
    (newest last; the last K [b] entries of each row are in use), with H0 = (s.y / y.y) I from the newest pair."""
    b, M, _ = S.shape
    rho = np.where(np.arange(M)[None, :] >= (M - K)[:, None], RHO, 0.0)
    q = G.copy()
    alpha = np.empty((b, M))
    for i in range(M - 1, -1, -1):
        alpha[:, i] = rho[:, i] * np.einsum("bp,bp->b", S[:, i], q)
        q -= alpha[:, i, None] * Y[:, i]
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = np.where(K > 0, 1.0 / (RHO[:, -1] * np.einsum("bp,bp->b", Y[:, -1], Y[:, -1])), 1.0)
    r = gamma[:, None] * q
    for i in range(M):
        beta = rho[:, i] * np.einsum("bp,bp->b", Y[:, i], r)
        r += (alpha[:, i] - beta)[:, None] * S[:, i]
    return -r


def _lbfgs_batched(fg: Callable, ds: np.ndarray, X0: np.ndarray, opts: Mapping[str, float]) -> np.ndarray:
    """L-BFGS from every row of X0 [m, p] at once, in NumPy: each round evaluates every start still running in one
    vectorised ``fg`` call, so the cost is that of the evaluations (no per-start Python overhead).

    The algorithm of scipy's L-BFGS-B without bounds, with its settings: memory 10, first step 1 / |g| along -g,
    then step 1 along the L-BFGS direction; a line search for the weak Wolfe conditions (c1 = 1e-3, c2 = 0.9:
    quadratic interpolation when a step is too long, x4 extrapolation or bisection when too short; at most 20
    evaluations, then the memory is dropped and the search retried along -g once); pairs with s.y <= eps y.y are
    not stored. Stops like ``minimize``: max |g| <= gtol, a relative decrease (f_old - f) / max(|f_old|, |f|, 1)
    <= ftol, maxiter iterations or maxfun evaluations. Its line search differs from dcsrch (More-Thuente), so a
    start may end in another local optimum than :func:`_lbfgsb_loop` from the same point; on Epoch's 4500 starts
    the best end points agree (the tests compare the two).
    """
    m, p = X0.shape
    ftol, gtol, maxiter, maxfun = opts["ftol"], opts["gtol"], opts["maxiter"], opts["maxfun"]
    M = _MAXCOR
    X = np.array(X0, dtype=np.float64)
    F, G = fg(ds, X)
    nfev = np.ones(m, int)
    nit = np.zeros(m, int)
    nls = np.zeros(m, int)  # evaluations in the current line search
    S, Y = np.zeros((m, M, p)), np.zeros((m, M, p))
    RHO = np.zeros((m, M))
    K = np.zeros(m, int)
    D = -G
    GTD = np.einsum("bp,bp->b", G, D)
    with np.errstate(divide="ignore", invalid="ignore"):
        T = 1.0 / np.sqrt(-GTD)
    LO, HI = np.zeros(m), np.full(m, np.inf)  # the line search's bracket
    FLO, GLO = np.full(m, np.inf), np.zeros((m, p))  # f and g at LO > 0, a step with sufficient decrease
    done = ~(np.isfinite(F) & np.isfinite(G).all(axis=1)) | (np.abs(G).max(axis=1) <= gtol)
    eps = np.finfo(np.float64).eps

    def restart(r):  # forget the memory and search along -g
        K[r], nls[r], LO[r], HI[r], FLO[r] = 0, 0, 0.0, np.inf, np.inf
        D[r] = -G[r]
        GTD[r] = np.einsum("bp,bp->b", G[r], D[r])
        T[r] = 1.0 / np.sqrt(-GTD[r])

    active = np.flatnonzero(~done)
    while active.size:
        a = active
        Xt = X[a] + T[a, None] * D[a]
        Ft, Gt = fg(ds[a], Xt)
        nfev[a] += 1
        nls[a] += 1
        with np.errstate(invalid="ignore"):
            armijo = np.isfinite(Ft) & np.isfinite(Gt).all(axis=1) & (Ft <= F[a] + _C1 * T[a] * GTD[a])
            short = armijo & (np.einsum("bp,bp->b", Gt, D[a]) < _C2 * GTD[a])
        ok = armijo & ~short
        spent = ~ok & ((nls[a] >= _MAXLS) | (nfev[a] > maxfun))
        use_lo = spent & ~short & (LO[a] > 0)  # out of steps: the best step seen with sufficient decrease
        take = ok | (spent & short) | use_lo

        acc = a[take]
        if acc.size:  # a new iterate: update the memory, test convergence, next direction
            lo = use_lo[take]
            xn = np.where(lo[:, None], X[acc] + LO[acc, None] * D[acc], Xt[take])
            fn = np.where(lo, FLO[acc], Ft[take])
            gn = np.where(lo[:, None], GLO[acc], Gt[take])
            s, y = xn - X[acc], gn - G[acc]
            sy = np.einsum("bp,bp->b", s, y)
            keep = sy > eps * np.einsum("bp,bp->b", y, y)
            u = acc[keep]
            if u.size:
                for buf, new in ((S, s[keep]), (Y, y[keep]), (RHO, 1.0 / sy[keep])):
                    buf[u] = np.roll(buf[u], -1, axis=1)
                    buf[u, -1] = new
                K[u] = np.minimum(K[u] + 1, M)
            f_old = F[acc]
            X[acc], F[acc], G[acc] = xn, fn, gn
            nit[acc] += 1
            nls[acc], LO[acc], HI[acc], FLO[acc] = 0, 0.0, np.inf, np.inf
            stop = ((np.abs(gn).max(axis=1) <= gtol)
                    | (f_old - fn <= ftol * np.maximum(np.maximum(np.abs(f_old), np.abs(fn)), 1.0))
                    | (nit[acc] >= maxiter) | (nfev[acc] > maxfun))
            done[acc[stop]] = True
            c = acc[~stop]
            if c.size:
                D[c] = _two_loop(G[c], S[c], Y[c], RHO[c], K[c])
                GTD[c] = np.einsum("bp,bp->b", G[c], D[c])
                restart(c[~(GTD[c] < 0)])  # not a descent direction
                T[c] = np.where(K[c] > 0, 1.0, T[c])

        go = ~take & ~spent
        sh = a[go & short]
        if sh.size:  # sufficient decrease but still descending steeply: raise LO, extrapolate or bisect
            LO[sh], FLO[sh], GLO[sh] = T[sh], Ft[go & short], Gt[go & short]
            T[sh] = np.where(np.isinf(HI[sh]), 4.0 * T[sh], 0.5 * (LO[sh] + HI[sh]))
        lg = a[go & ~short]
        if lg.size:  # too long (or not finite): lower HI; the quadratic's minimiser on the first cut, then bisect
            t, lo = T[lg], LO[lg]
            HI[lg] = t
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                tq = -GTD[lg] * t * t / (2 * (Ft[go & ~short] - F[lg] - GTD[lg] * t))
            tq = np.where(np.isfinite(tq), tq, 0.1 * t)
            T[lg] = np.where(lo == 0, np.clip(tq, 0.1 * t, 0.5 * t), 0.5 * (lo + t))
        failed = a[spent & ~take]
        if failed.size:  # no acceptable step: retry along -g once (as L-BFGS-B), else stop where it is
            again = failed[(K[failed] > 0) & (nfev[failed] <= maxfun)]
            restart(again)
            done[np.setdiff1d(failed, again)] = True
        active = np.flatnonzero(~done)
    return X


# The multi-start driver: _lbfgsb_loop (scipy's minimize per start) is its reference twin.
_DRIVER = _lbfgs_batched


def _lbfgsb_many(fg: Callable, ds: np.ndarray, X0: np.ndarray, opts: Mapping[str, float]):
    """L-BFGS (``_DRIVER``) from every row of X0 [m, p]; returns (end points [m, p], objectives [m], inf where not
    finite)."""
    with warnings.catch_warnings(), _single_threaded_blas():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in exp from wild starts; those lose anyway
        X = _DRIVER(fg, ds, X0, opts)
        F, _ = fg(ds, X)
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


def _optimum_params(to_params: Callable, theta: np.ndarray, order: Sequence[str]) -> dict[str, float]:
    """The law's parameters at the fit's optimum ``theta`` (log-space, keys ``order``); a ValueError that names the
    optimum when a coefficient ran off to infinity (exp overflows), which means the data do not pin that term down."""
    try:
        return to_params(theta)
    except OverflowError:
        at = ", ".join(f"{k} = {v:.4g}" for k, v in zip(order, theta, strict=True))
        raise ValueError(f"the best fit runs off to infinity ({at}, in log space): the losses do not pin down every "
                         "term of the law; runs at more distinct values of its covariates may") from None


def _replicate_samples(reps: np.ndarray, to_params: Callable, names: Sequence[str],
                       info: dict) -> dict[str, np.ndarray]:
    """Each finite replicate's parameters. A replicate whose coefficients overflow stays NaN, a failed replicate:
    ``info["bootstrap_failed"]`` counts those beside the ones the optimizer lost."""
    samples = {k: np.full(len(reps), np.nan) for k in names}
    for i, t in enumerate(reps):
        if np.isfinite(t).all():
            try:
                values = to_params(t)
            except OverflowError:
                info["bootstrap_failed"] += 1
                continue
            for k, v in values.items():
                samples[k][i] = v
    return samples
