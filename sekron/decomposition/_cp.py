"""The ``cp`` pattern: Kronecker-CP by ALS, the SVD for S = 2, and the exact construction."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import tensorly as tl
from tensorly.decomposition._cp import initialize_cp

from ..linalg.als import cp_als, dense_mttkrp
from ..linalg.truncation import smallest_rank
from ._svd_based import Context, nested


def max_cp_rank(sizes: tuple[int, ...]) -> int:
    """A rank at which the CP is always exact: the product of all sizes but the largest."""
    return math.prod(sizes) // max(sizes)


def exact_cp(T: Any, sizes: tuple[int, ...]) -> list[Any]:
    """Exact CP of T with rank ``max_cp_rank``: one-hot factors on all modes but the largest.

    Term ``r`` enumerates (C order) the indices of the other modes; the largest mode's
    factor holds the matching fibre of T.
    """
    m = int(np.argmax(sizes))
    others = [k for k in range(len(sizes)) if k != m]
    R = math.prod(sizes[k] for k in others)
    ctx = {k: v for k, v in tl.context(T).items() if k != "requires_grad"}
    idx = np.unravel_index(np.arange(R), [sizes[k] for k in others])
    out: list[Any] = [None] * len(sizes)
    for j, k in enumerate(others):
        onehot = np.zeros((R, sizes[k]))
        onehot[np.arange(R), idx[j]] = 1.0
        out[k] = tl.tensor(onehot.astype(np.complex128) if "complex" in str(ctx.get("dtype", "")) else onehot, **ctx)
    fibres = tl.moveaxis(T, m, -1)
    out[m] = tl.reshape(fibres, (R, sizes[m]))
    return out


#: ALS stops when the relative error changes by less than this between sweeps
ALS_TOL = 1e-10


def _als(T: Any, R: int, ctx: Context) -> list[Any]:
    """CP-ALS on T (:func:`sekron.linalg.als.cp_als`) from tensorly's ``init`` ("svd" or "random")."""
    n_iter = int(ctx.options.get("n_iter_max", 200))
    init = ctx.options.get("init", "svd")
    with warnings.catch_warnings():  # tensorly's note that an SVD init pads small modes is not the user's concern
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs", category=UserWarning)
        weights, facs = initialize_cp(T, R, init=init, random_state=ctx.random_state)
    facs = [facs[0] * tl.reshape(weights, (1, R)), *facs[1:]]
    if n_iter > 0:  # n_iter_max=0 replays a given start (the search's fits): nothing to iterate
        norm_sq = float(np.real(tl.to_numpy(tl.sum(tl.abs(T) ** 2))))
        facs = cp_als(dense_mttkrp(T), facs, norm_sq, n_iter, ALS_TOL)
    return [tl.transpose(f, (1, 0)) for f in facs]  # (R, P_k)


def _cp_error_sq(T: Any, facs: list[Any]) -> float:
    from ..linalg.contraction import LabelAllocator, contract

    modes = LabelAllocator("r").many(len(facs))
    approx = contract([("r" + m, f) for m, f in zip(modes, facs)], modes)
    if isinstance(T, np.ndarray) and isinstance(approx, np.ndarray):  # one BLAS dot, no squared temporary
        d = (T - approx).reshape(-1)
        return float(np.vdot(d, d).real)
    return float(tl.to_numpy(tl.norm(tl.reshape(T - approx, (-1,))))) ** 2


def cp(T: Any, ctx: Context) -> list[Any]:
    """CP-ALS on T; exact at ``rank=None``; with ``tol`` the rank grows until it is met."""
    st = ctx.st
    P, fs = st.factor_sizes, st.factor_shapes
    if st.n_factors == 2:
        return nested(T, ctx)  # for S = 2, cp = nested: the SVD is optimal
    R_max = max_cp_rank(P)
    cap = ctx.caps.get("a")
    if cap is not None and cap > R_max:
        ctx.budget.clipped["a"] = (cap, R_max)
        cap = R_max
    target = ctx.budget.left
    if (cap is None and ctx.tol is None) or cap == R_max:
        facs = exact_cp(T, P)
        err = 0.0
    elif ctx.tol is None and cap is not None:
        facs = _als(T, int(cap), ctx)
        err = _cp_error_sq(T, facs)
    else:
        facs, err = _search_rank(T, ctx, R_max if cap is None else int(cap), target)
    ctx.budget.spent = err
    return [tl.reshape(f, (int(f.shape[0]),) + fs[k]) for k, f in enumerate(facs)]


def _search_rank(T: Any, ctx: Context, R_top: int, target: float) -> tuple[list[Any], float]:
    """Smallest rank (doubling, then bisection) whose ALS error meets ``target``."""
    tried: dict[int, tuple[list[Any], float]] = {}

    def attempt(R: int) -> bool:
        if R == max_cp_rank(ctx.st.factor_sizes):
            tried[R] = (exact_cp(T, ctx.st.factor_sizes), 0.0)
        else:
            facs = _als(T, R, ctx)
            tried[R] = (facs, _cp_error_sq(T, facs))
        return tried[R][1] <= target

    R = smallest_rank(attempt, R_top)
    return tried[R_top if R is None else R]
