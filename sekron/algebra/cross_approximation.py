"""Cross approximation: a SeKron tensor from samples of a function, never from the dense tensor.

The ``chain`` pattern of a structure is a TT of the rearranged tensor T (order S, mode k
of size ``P_k``, the entries of factor k's digit block). :func:`cross` runs a one-site
TT-cross on T: every sweep visits the cores one by one; at core k it samples the fiber
``T[I_k, :, J_{k+1}]`` (left index set x mode k x right index set), keeps the numerical
column space of that fiber (an SVD truncated at a small fraction of ``tol``) and picks,
with the rectangular maxvol below, the rows that interpolate it best; those rows become
the next index set. A few rows beyond the numerical rank (``kick``) keep the ranks free
to grow. The core is the interpolation matrix ``Q Q[rows]^+``, so the TT is a cross
(skeleton) interpolant of the samples. Sweeps alternate left-to-right and right-to-left
until two consecutive interpolants differ by less than ``tol / 2`` (relative Frobenius norm,
computed exactly from the TT cores); the result is then TT-rounded to ``tol / 2``. Every
value of ``fn`` is cached, so a multi-index is evaluated once.

Other patterns are built as a chain and then converted (:func:`sekron.convert`, exact),
and rounded for ``cp`` and ``tucker`` (whose conversions multiply the ranks).

maxvol (Goreinov, Oseledets, Savostyanov, Tyrtyshnikov, Zamarashkin, "How to find a good
submatrix", 2010) and the rectangular maxvol (Mikhalev and Oseledets, 2018) are
implemented here from those papers.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg

from .._validation import check_int, check_tol
from ..structure import Structure

__all__ = ["cross", "maxvol", "rect_maxvol"]


def maxvol(A: np.ndarray, tol: float = 1.05, max_iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a tall matrix forming a dominant (quasi maximal volume) square submatrix.

    Parameters
    ----------
    A : (n, r) array, n >= r, of full column rank
    tol : float >= 1
        Stop when every entry of ``B = A A[rows]^{-1}`` has modulus at most ``tol``.
    max_iters : int
        Row swaps at most.

    Returns
    -------
    rows : (r,) int array
    B : (n, r) array, ``A @ inv(A[rows])`` (identity on ``rows``).

    Examples
    --------
    >>> import numpy as np
    >>> A = np.random.default_rng(0).standard_normal((50, 4))
    >>> rows, B = maxvol(A)
    >>> bool(np.abs(B).max() <= 1.05), bool(np.allclose(B[rows], np.eye(4)))
    (True, True)
    """
    A = np.asarray(A)
    n, r = A.shape
    if n < r:
        raise ValueError(f"maxvol needs a tall matrix (n >= r), got shape {A.shape}")
    if r == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((n, 0), dtype=A.dtype)
    _, _, piv = scipy.linalg.qr(A.T, mode="economic", pivoting=True)
    rows = np.array(piv[:r], dtype=np.int64)
    B = np.linalg.solve(A[rows].T, A.T).T
    for _ in range(max_iters):
        i, j = np.unravel_index(int(np.argmax(np.abs(B))), B.shape)
        if abs(B[i, j]) <= tol:
            break
        rows[j] = i
        bj = B[:, j].copy()
        bi = B[i, :].copy()
        bi[j] -= 1.0
        B -= np.outer(bj, bi / B[i, j])
    return rows, B


def rect_maxvol(A: np.ndarray, tol: float = 1.1, min_add: int = 0, max_add: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """maxvol plus greedily added rows: a dominant rectangular submatrix.

    Rows are added while the largest row norm of ``B = A A[rows]^+`` exceeds ``tol`` (at
    least ``min_add``, at most ``max_add`` of them).

    Returns
    -------
    rows : (k,) int array, r <= k <= n
    B : (n, k) array, ``A @ pinv(A[rows])``

    Examples
    --------
    >>> import numpy as np
    >>> A = np.random.default_rng(0).standard_normal((50, 3))
    >>> rows, B = rect_maxvol(A, min_add=2, max_add=2)
    >>> len(rows), bool(np.allclose(B @ A[rows], A))
    (5, True)
    """
    A = np.asarray(A)
    n, r = A.shape
    rows_sq, B = maxvol(A)
    rows = list(rows_sq.tolist())
    limit = n - r if max_add is None else min(max_add, n - r)
    norms = np.sum(np.abs(B) ** 2, axis=1)
    norms[rows] = -1.0
    for t in range(limit):
        i = int(np.argmax(norms))
        if t >= min_add and norms[i] <= tol * tol:
            break
        b = B[i].copy()
        Bb = B @ np.conj(b)
        denom = 1.0 + float(np.real(np.vdot(b, b)))
        B = np.hstack([B - np.outer(Bb, b) / denom, (Bb / denom)[:, None]])
        rows.append(i)
        norms = norms - np.abs(Bb) ** 2 / denom
        norms[rows] = -1.0
    return np.array(rows, dtype=np.int64), B


# --- TT helpers (numpy, cores (r0, n, r1)) ----------------------------------------------
def _tt_inner(X: list[np.ndarray], Y: list[np.ndarray]) -> complex:
    v = np.ones((1, 1))
    for x, y in zip(X, Y):
        v = np.einsum("ab,anc,bnd->cd", v, np.conj(x), y, optimize=True)
    return complex(v[0, 0])


def _tt_rel_change(X: list[np.ndarray], Y: list[np.ndarray]) -> float:
    xx, yy, xy = _tt_inner(X, X).real, _tt_inner(Y, Y).real, _tt_inner(X, Y).real
    return math.sqrt(max(xx + yy - 2 * xy, 0.0)) / max(math.sqrt(max(yy, 0.0)), 1e-300)


def _tt_at(cores: list[np.ndarray], idx: np.ndarray) -> np.ndarray:
    G = cores[0][0, idx[:, 0], :]
    for k in range(1, len(cores)):
        C = np.transpose(cores[k][:, idx[:, k], :], (1, 0, 2))
        G = np.einsum("nr,nrs->ns", G, C)
    return G[:, 0]


class _Sampler:
    """fn on multi-indices of T (the rearranged tensor), with a cache and a counter."""

    def __init__(self, fn: Callable[[np.ndarray], Any], st: Structure, max_evals: int | None) -> None:
        self.fn, self.st, self.max_evals = fn, st, max_evals
        self.P = np.array(st.factor_sizes, dtype=np.int64)
        A = np.array(st.factor_shapes, dtype=np.int64)
        rev = np.cumprod(A[::-1], axis=0)[::-1]
        self.strides = np.vstack([rev[1:], np.ones((1, A.shape[1]), dtype=np.int64)])  # (S, N)
        self.fshapes = A
        self.cache: dict[int, Any] = {}
        self.evals = 0
        self.dtype: Any = None
        self.backend = "numpy"
        self.like: Any = None

    def to_w(self, T: np.ndarray) -> np.ndarray:
        """(n, S) multi-indices of T to (n, N) multi-indices of W."""
        S, N = self.fshapes.shape
        out = np.zeros((T.shape[0], N), dtype=np.int64)
        for k in range(S):
            d = np.stack(np.unravel_index(T[:, k], tuple(int(a) for a in self.fshapes[k])), axis=1)
            out += d * self.strides[k][None]
        return out

    def call(self, W_idx: np.ndarray) -> np.ndarray:
        from .._backend import infer_backend, using

        vals = self.fn(W_idx)
        backend = infer_backend(vals)
        if backend != "numpy":
            import tensorly as tl

            with using(backend):
                self.backend, self.like = backend, vals
                vals = tl.to_numpy(vals)
        vals = np.asarray(vals)
        if vals.shape != (W_idx.shape[0],):
            vals = vals.reshape(-1)
            if vals.shape != (W_idx.shape[0],):
                raise ValueError(f"fn must return one value per multi-index: {W_idx.shape[0]} values, got an array "
                                 f"of {vals.size}")
        if self.dtype is None:
            self.dtype = vals.dtype
        if not np.all(np.isfinite(vals)):
            raise ValueError("fn returned NaN or Inf; cross needs finite values at every multi-index")
        return vals

    def new_count(self, flats: np.ndarray) -> int:
        cache = self.cache
        return len({f for f in flats.tolist() if f not in cache})

    def __call__(self, T: np.ndarray) -> np.ndarray:
        flats = np.ravel_multi_index(tuple(T.T), tuple(int(p) for p in self.P)).tolist()
        cache = self.cache
        new = list(dict.fromkeys(f for f in flats if f not in cache))
        if new:
            new_arr = np.array(new, dtype=np.int64)
            Tn = np.stack(np.unravel_index(new_arr, tuple(int(p) for p in self.P)), axis=1)
            vals = self.call(self.to_w(Tn))
            cache.update(zip(new, vals.tolist()))
            self.evals += len(new)
        return np.array([cache[f] for f in flats])


def _fiber_idx(left: np.ndarray, n: int, right: np.ndarray) -> np.ndarray:
    a, b = left.shape[0], right.shape[0]
    L = np.repeat(left, n * b, axis=0)
    I = np.tile(np.repeat(np.arange(n, dtype=np.int64), b), a)[:, None]
    R = np.tile(right, (a * n, 1))
    return np.hstack([L, I, R])


def _basis(M: np.ndarray, rtol: float, cap: int | None) -> np.ndarray:
    U, s, _ = np.linalg.svd(M, full_matrices=False)
    total = math.sqrt(float(np.sum(s ** 2)))
    rho = max(1, int(np.sum(s > rtol * total))) if total > 0 else 1
    if cap is not None:
        rho = min(rho, cap)
    return U[:, :rho]


def _pick(M: np.ndarray, rtol: float, kick: int, cap: int | None) -> tuple[np.ndarray, np.ndarray]:
    Q = _basis(M, rtol, cap)
    room = None if cap is None else max(cap - Q.shape[1], 0)
    add = kick if room is None else min(kick, room)
    rows, B = rect_maxvol(Q, tol=1.0, min_add=add, max_add=add)
    return rows, B


def _tt_cross(sample: _Sampler, P: list[int], tol: float, cap: int | None, kick: int, rng: np.random.Generator,
              budget: int | None) -> tuple[list[np.ndarray], dict[str, Any]]:
    d = len(P)
    r0 = 1 + kick
    Ir: list[Any] = [np.zeros((1, 0), dtype=np.int64)] + [np.zeros((0, 0), dtype=np.int64)] * d
    Ic: list[Any] = [np.zeros((0, 0), dtype=np.int64)] * d + [np.zeros((1, 0), dtype=np.int64)]
    for k in range(d - 1, 0, -1):
        draws = [rng.integers(0, P[j], size=r0) for j in range(k, d)]
        Ic[k] = np.unique(np.stack(draws, axis=1), axis=0)
    rtol = 0.05 * tol / math.sqrt(max(d - 1, 1))
    prev: list[np.ndarray] | None = None
    info: dict[str, Any] = {"sweeps": 0, "stop": "max_sweeps"}
    cores: list[np.ndarray] = []
    for half in range(200):
        ltr = half % 2 == 0
        cost = sum(Ir[k].shape[0] * P[k] * Ic[k + 1].shape[0] for k in range(d))  # an upper bound
        if budget is not None and half > 0 and sample.evals + cost > budget:
            info["stop"] = "max_evals"
            break
        cores = [np.zeros(0)] * d
        order = range(d) if ltr else range(d - 1, -1, -1)
        for k in order:
            Z = sample(_fiber_idx(Ir[k], P[k], Ic[k + 1])).reshape(Ir[k].shape[0], P[k], Ic[k + 1].shape[0])
            a, n, b = Z.shape
            if ltr and k < d - 1:
                rows, B = _pick(Z.reshape(a * n, b), rtol, kick, cap)
                combos = np.hstack([np.repeat(Ir[k], n, axis=0), np.tile(np.arange(n), a)[:, None]])
                Ir[k + 1] = combos[rows]
                cores[k] = B.reshape(a, n, len(rows))
            elif not ltr and k > 0:
                rows, B = _pick(Z.reshape(a, n * b).T, rtol, kick, cap)
                combos = np.hstack([np.repeat(np.arange(n), b)[:, None], np.tile(Ic[k + 1], (n, 1))])
                Ic[k] = combos[rows]
                cores[k] = B.T.reshape(len(rows), n, b)
            else:
                cores[k] = Z
        info["sweeps"] = half + 1
        if prev is not None and _tt_rel_change(prev, cores) < 0.5 * tol:
            info["stop"] = "converged"
            break
        prev = cores
    return cores, info


def _to_chain(cores: list[np.ndarray], st: Structure, like: Any, dtype: Any) -> Any:
    from .._backend import using
    from ..sekron_tensor import SeKronTensor

    S = len(cores)
    factors = []
    for k, c in enumerate(cores):
        f = np.transpose(c, (0, 2, 1))
        f = f[0] if k == 0 else f
        f = f[:, 0] if k == S - 1 else f
        nb = 0 if S == 1 else (1 if k in (0, S - 1) else 2)
        factors.append(np.reshape(f, f.shape[:nb] + st.factor_shapes[k]).astype(dtype))
    if like is not None:
        import tensorly as tl

        from .._backend import infer_backend
        from ._common import backend_dtype

        with using(infer_backend(like)):
            ctx = {key: v for key, v in tl.context(like).items() if key != "requires_grad"}
            ctx["dtype"] = backend_dtype(str(np.dtype(dtype)))
            factors = [tl.tensor(f, **ctx) for f in factors]
        with using(infer_backend(like)):
            return SeKronTensor(factors, st)
    return SeKronTensor(factors, st)


def cross(fn: Callable[[np.ndarray], Any], structure: Structure, *, tol: float = 1e-6, rank: int | None = None,
          max_evals: int | None = None, random_state: Any = None, return_info: bool = False,
          kick: int = 3, n_test: int = 1000) -> Any:
    """A SeKronTensor of ``structure`` from samples of ``fn`` by TT-cross with maxvol (W is never formed).

    Parameters
    ----------
    fn : callable
        ``fn(idx)`` takes an (n, N) int64 array of multi-indices into ``structure.shape`` and
        returns n values (numpy, torch or jax; the result has that framework, device and
        dtype, float64 for integer values).
    structure : Structure
        Any pattern: a chain is built (a TT of the rearranged tensor), then converted.
        ``cp`` and ``tucker`` are rounded to ``tol`` after the conversion, which multiplies
        the ranks; conversions above ``10**7`` parameters are refused.
    tol : float in (0, 1)
        Stop when two consecutive sweeps differ by less than ``tol / 2`` (relative), then
        TT-round to ``tol / 2``. The achieved error is estimated on held-out samples.
    rank : int, optional
        Cap on every TT rank.
    max_evals : int, optional
        Cap on the evaluations of ``fn`` (the held-out samples included); sweeps stop
        before exceeding it (a warning says so).
    random_state : None, int or numpy Generator
        Seeds the initial index sets and the held-out samples.
    return_info : bool
        Also return a dict: ``evals`` (distinct multi-indices evaluated, held-out
        included), ``evals_fit``, ``error`` (relative error on ``n_test`` held-out random
        entries), ``sweeps`` (half sweeps), ``ranks``, ``stop`` and ``seconds``.
    kick : int
        Rows added beyond the numerical rank at every core (lets the ranks grow).
    n_test : int
        Held-out samples for the error estimate (0 to skip).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> st = sekron.Structure([(4, 4)] * 4, "chain")           # a 256 x 256 grid
    >>> f = lambda idx: 1.0 / (1.0 + idx[:, 0] / 255 + idx[:, 1] / 255)
    >>> sk, info = cross(f, st, tol=1e-8, random_state=0, return_info=True)
    >>> bool(info["error"] < 1e-7), info["evals"] < 256 * 256
    (True, True)
    >>> i, j = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    >>> bool(np.allclose(sk.to_tensor(), 1.0 / (1.0 + i / 255 + j / 255)))
    True
    """
    start = time.perf_counter()
    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a sekron.Structure, got {type(structure).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(idx) on an (n, N) int64 array, got {type(fn).__name__}")
    tol_ = check_tol(tol)
    if tol_ is None:
        raise ValueError("cross needs a tol in (0, 1)")
    cap = None if rank is None else check_int(rank, "rank")
    budget = None if max_evals is None else check_int(max_evals, "max_evals")
    n_test = check_int(n_test, "n_test", minimum=0)
    kick = check_int(kick, "kick", minimum=0)
    rng = np.random.default_rng(random_state)
    st = structure
    chain = Structure(st.factor_shapes, "chain")
    sample = _Sampler(fn, chain, budget)
    P = [int(p) for p in chain.factor_sizes]
    total = math.prod(P)
    test_budget = min(n_test, total)
    fit_budget = None if budget is None else budget - test_budget
    if fit_budget is not None and fit_budget <= 0:
        raise ValueError(f"max_evals={budget} leaves nothing for the fit after {test_budget} held-out samples; "
                         "raise max_evals or lower n_test")
    if len(P) == 1:
        if total > (1 << 24) or (fit_budget is not None and total > fit_budget):
            raise ValueError(f"a one-factor structure is the dense tensor ({total} entries); cross cannot "
                             "compress it (limit 2**24 entries and max_evals); use more factors")
        vals = sample(np.arange(total, dtype=np.int64)[:, None])
        cores = [vals.reshape(1, total, 1)]
        info: dict[str, Any] = {"sweeps": 0, "stop": "dense"}
    else:
        cores, info = _tt_cross(sample, P, tol_, cap, kick, rng, fit_budget)
    evals_fit = sample.evals
    dtype = np.result_type(sample.dtype if sample.dtype is not None else np.float64, np.float32)
    work = np.result_type(dtype, np.float64)
    cores = [c.astype(work) for c in cores]
    if len(P) > 1:
        from .._backend import using
        from ..linalg.tt import tt_round

        with using("numpy"):
            cores, _ = tt_round(cores, [cap] * (len(P) - 1), 0.5 * tol_)
    if info["stop"] == "max_evals":
        warnings.warn(f"cross stopped at max_evals={budget} before converging to tol={tol}", UserWarning,
                      stacklevel=2)
    err = float("nan")
    if test_budget:
        T = np.stack([rng.integers(0, p, size=test_budget) for p in P], axis=1)
        y = sample.call(sample.to_w(T))
        sample.evals += test_budget
        err = float(np.linalg.norm(y - _tt_at(cores, T))) / max(float(np.linalg.norm(y)), 1e-300)
    out = _to_chain(cores, chain, sample.like, dtype)
    if st.labels != chain.labels:
        out = _convert(out, st, tol_, cap)
    if not return_info:
        return out
    info.update({"evals": sample.evals, "evals_fit": evals_fit, "error": err, "n_test": test_budget,
                 "ranks": [int(c.shape[2]) for c in cores[:-1]], "seconds": time.perf_counter() - start})
    return out, info


_CONVERT_MAX = 10 ** 7


def _convert(sk: Any, st: Structure, tol: float, cap: int | None) -> Any:
    from ..conversions._patterns import _route, _users, convert, round_

    p_users, q_users = _users(sk.structure.labels), _users(st.labels)
    q_order = list(st.bond_labels)
    size = dict.fromkeys(q_order, 1)
    for c in sk.structure.bond_labels:
        for b in _route(p_users[c], q_users, q_order, f"bond {c!r}"):
            size[b] *= sk.rank[c]
    params = sum(math.prod(size[c] for c in lab) * p for lab, p in zip(st.labels, st.factor_sizes))
    if params > _CONVERT_MAX:
        raise ValueError(f"cross builds a chain (ranks {sk.rank}); converting it to {st.pattern or st.labels!r} "
                         f"needs {params} parameters (limit {_CONVERT_MAX}). Use the chain or nested pattern, "
                         "or a looser tol / a rank cap")
    out = convert(sk, st)
    if st.pattern in ("cp", "tucker"):
        out = round_(out, rank=cap, tol=tol)
    return out
