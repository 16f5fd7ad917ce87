"""CP by alternating least squares: the one ALS loop, whatever gives the products with the tensor.

A rank-R CP of W has factors ``U_n`` of shape ``(d_n, R)``. With the others fixed, the best
``U_n`` solves the normal equations ``U_n V_n = M_n``, where ``M_n = W_(n) conj(K_n)`` is the
MTTKRP (the mode-n unfolding times the conjugated Khatri-Rao product of the other factors)
and ``V_n`` is the Hadamard product of the other Grams ``U_m^T conj(U_m)``. The caller gives
the MTTKRP as a function, so W may be dense, a TT, or anything else that can compute it.
After the last update of a sweep the error needs no extra pass over W:
``||W - W_hat||^2 = ||W||^2 - 2 Re <M_n, conj(U_n)> + sum(V_n * G_n)``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorly as tl

#: Tikhonov term on the normal equations, relative to their trace: keeps them solvable
#: when a factor loses rank, far below any error that matters
RIDGE = 1e-12
#: numpy normal equations with more than this many right-hand sides per unknown are solved through the inverse
INVERSE_ROWS = 4

#: real numpy factors with at least this many rows get their Gram matrix from one buffer (BLAS syrk: half the
#: flops, exactly symmetric); below it the general product is as fast
SYRK_ROWS = 32

MTTKRP = Callable[[list[Any], int], Any]


def _gram(U: Any) -> Any:
    return tl.matmul(tl.transpose(U, (1, 0)), tl.conj(U))


def _hadamard(grams: Sequence[Any], R: int, like: Any) -> Any:
    out = tl.ones((R, R), **{k: v for k, v in tl.context(like).items() if k != "requires_grad"})
    for g in grams:
        out = out * g
    return out


def cp_als(mttkrp: MTTKRP, factors: Sequence[Any], norm_sq: float, n_iter: int, tol: float,
           order: Sequence[int] | None = None, deadline: float | None = None, extrapolate: bool = False,
           info: dict[str, float] | None = None) -> list[Any]:
    """Refine the CP ``factors`` (each ``(d_n, R)``) of a tensor of squared norm ``norm_sq``.

    ``mttkrp(factors, n)`` returns ``M_n`` for the current factors. Each sweep updates the
    modes in ``order`` (default 0..N-1); it stops after ``n_iter`` sweeps or when the relative
    error changes by less than ``tol``, or after the sweep that passes ``deadline`` (a
    ``time.perf_counter()`` value, optional). Returns the new factors (the inputs are not modified).

    With ``extrapolate``, each sweep after the first also tries the factors moved on along
    that sweep's step, ``U_old + k^(1/3) (U_new - U_old)`` at sweep k (the line search of
    Bro's thesis, 1998), and keeps them when their error (one more MTTKRP) is lower: in
    swamps, where plain ALS creeps, this reaches a given error in far fewer sweeps.

    With ``info`` (a dict), ``info["error"]`` is set to the relative error of the returned factors
    (after at least one sweep), from the last sweep's MTTKRP and the Gram matrices without the ridge:
    ``||W - W_hat||^2 = ||W||^2 - 2 Re <M_n, conj(U_n)> + sum(G_1 * .. * G_N)``, exact to rounding (relative
    to ``||W||^2``, so its relative precision drops when the error itself is tiny), without another pass over W.

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> rng = np.random.default_rng(0)
    >>> true = [rng.standard_normal((d, 2)) for d in (4, 5, 6)]
    >>> W = tl.cp_to_tensor((None, true))
    >>> dense = lambda U, n: tl.dot(tl.unfold(W, n), tl.tenalg.khatri_rao(U, skip_matrix=n))
    >>> U = cp_als(dense, [rng.standard_normal((d, 2)) for d in (4, 5, 6)], float(np.sum(W**2)), 500, 1e-14)
    >>> bool(np.linalg.norm(tl.cp_to_tensor((None, U)) - W) < 1e-6 * np.linalg.norm(W))
    True
    """
    U = list(factors)
    modes = list(range(len(U))) if order is None else list(order)
    if n_iter <= 0:
        return U
    ops = _numpy_ops(U[0]) if all(isinstance(u, np.ndarray) for u in U) else _backend_ops(U[0])
    return _cp_als_loop(ops, mttkrp, U, norm_sq, n_iter, tol, modes, deadline, extrapolate, info)


class _Ops(NamedTuple):
    """What the ALS loop needs of an array library: Gram matrices, the Hadamard product of Grams (the
    ``R x R`` ones for none), ``V + ridge * I``, ``Re <M, conj(U)>`` and the real part of a sum."""

    gram: Callable[[Any], Any]
    hadamard: Callable[[list[Any]], Any]
    add_ridge: Callable[[Any], Any]
    inner: Callable[[Any, Any], float]
    total: Callable[[Any], float]


def _backend_ops(like: Any) -> _Ops:
    """Through tensorly's backend functions (any backend, immutable arrays included)."""
    R = int(like.shape[1])
    eye = tl.eye(R, **{k: v for k, v in tl.context(like).items() if k != "requires_grad"})

    def total(x: Any) -> float:
        return float(np.real(tl.to_numpy(tl.sum(x))))

    def add_ridge(V: Any) -> Any:
        return V + RIDGE * max(float(np.real(tl.to_numpy(tl.trace(V)))), 1e-300) * eye

    return _Ops(_gram, lambda gs: _hadamard(gs, R, like), add_ridge, lambda M, u: total(M * tl.conj(u)), total)


def _numpy_ops(like: np.ndarray) -> _Ops:
    """numpy called directly, the same operations as :func:`_backend_ops` (so the same values, bitwise),
    without tensorly's dispatch on every one; only the Gram matrices of real factors with at least
    :data:`SYRK_ROWS` rows are formed by a symmetric product (the same values to rounding)."""
    R = int(like.shape[1])
    dtype = like.dtype
    real = not np.iscomplexobj(like)
    diagonal = slice(None, None, R + 1)

    def gram(u: np.ndarray) -> np.ndarray:
        if real and u.shape[0] >= SYRK_ROWS:  # u^T u of one buffer: numpy computes half of it (syrk), symmetric
            return np.matmul(np.transpose(u, (1, 0)), u)
        return np.matmul(np.transpose(u, (1, 0)), u.copy() if real else np.conj(u))  # conj of real: a copy

    def hadamard(gs: list[np.ndarray]) -> np.ndarray:  # ones * g_0 * g_1 ..., the product by ones left out
        if not gs:
            return np.ones((R, R), dtype=dtype)
        out = gs[0] * gs[1] if len(gs) > 1 else gs[0].copy()
        for g in gs[2:]:
            out *= g
        return out

    def add_ridge(V: np.ndarray) -> np.ndarray:  # V is the loop's own (fresh) Hadamard product: in place
        V.reshape(-1)[diagonal] += RIDGE * max(float(np.real(np.trace(V))), 1e-300)
        return V

    def inner(M: np.ndarray, u: np.ndarray) -> float:
        return float(np.sum(M * u)) if real else float(np.real(np.sum(M * np.conj(u))))  # conj of real: itself

    return _Ops(gram, hadamard, add_ridge, inner, lambda x: float(np.real(np.sum(x))))


def _relative_error(norm_sq: float, inner: float, approx_sq: float) -> float:
    """``||W - W_hat|| / ||W||`` from ``||W||^2``, ``Re <M_n, conj(U_n)>`` and ``sum(V_n * G_n)``."""
    return math.sqrt(max(norm_sq - 2 * inner + approx_sq, 0.0) / norm_sq) if norm_sq > 0 else 0.0


def _cp_als_loop(ops: _Ops, mttkrp: MTTKRP, U: list[Any], norm_sq: float, n_iter: int, tol: float,
                 modes: list[int], deadline: float | None, extrapolate: bool,
                 info: dict[str, float] | None = None) -> list[Any]:
    """The ALS sweeps of :func:`cp_als` with the array operations of ``ops``."""
    grams = [ops.gram(u) for u in U]
    last = math.inf
    inner, approx = 0.0, None  # of the current factors: Re <M_n, conj(U_n)> and ||W_hat||^2 (None: not formed)
    for it in range(n_iter):
        start = list(U)
        for n in modes:
            V = ops.hadamard([g for m, g in enumerate(grams) if m != n])
            M = mttkrp(U, n)
            V = ops.add_ridge(V)
            U[n] = _solve(V, M)
            grams[n] = ops.gram(U[n])
        inner, approx = ops.inner(M, U[n]), None
        err = _relative_error(norm_sq, inner, ops.total(V * grams[n]))
        if extrapolate and it > 0:
            step = (it + 1) ** (1.0 / 3.0)
            Ue = [a + step * (b - a) for a, b in zip(start, U)]
            hook = getattr(mttkrp, "extrapolated", None)
            if hook is not None:  # an MTTKRP that can move its partial products along with the factors
                hook(start, U, Ue, step)
            ge = [ops.gram(u) for u in Ue]
            m = modes[-1]
            Me = mttkrp(Ue, m)
            inner_e, approx_e = ops.inner(Me, Ue[m]), ops.total(ops.hadamard(ge))
            err_e = _relative_error(norm_sq, inner_e, approx_e)
            if err_e < err:
                U, grams, err = Ue, ge, err_e
                inner, approx = inner_e, approx_e
        if abs(last - err) < tol or (deadline is not None and time.perf_counter() >= deadline):
            break
        last = err
    if info is not None and n_iter > 0:
        info["error"] = _relative_error(norm_sq, inner, ops.total(ops.hadamard(grams)) if approx is None else approx)
    return U


def _cp_als_backend(mttkrp: MTTKRP, U: list[Any], norm_sq: float, n_iter: int, tol: float, modes: list[int],
                    deadline: float | None, extrapolate: bool) -> list[Any]:
    """:func:`cp_als` through tensorly's backend functions (any backend)."""
    return _cp_als_loop(_backend_ops(U[0]), mttkrp, U, norm_sq, n_iter, tol, modes, deadline, extrapolate)


def _solve(V: Any, M: Any) -> Any:
    """``M V^{-1}`` for the (regularised, Hermitian positive definite) normal equations ``V``.

    For numpy, LAPACK's solve is slow when the right-hand sides far outnumber the rank (a
    level-2 triangular solve per row of ``M``): with more than :data:`INVERSE_ROWS` times ``R``
    rows, ``M`` is multiplied by ``V``'s inverse (one matmul); otherwise a Cholesky solve, or
    LU when ``V`` is not numerically positive definite. The choice depends only on the shapes
    and on ``V``, so the result is the same on every run.
    """
    if not (isinstance(V, np.ndarray) and isinstance(M, np.ndarray)):
        return tl.transpose(tl.solve(tl.transpose(V, (1, 0)), tl.transpose(M, (1, 0))), (1, 0))
    if M.shape[0] > INVERSE_ROWS * V.shape[0]:
        return M @ np.linalg.inv(V.T)
    if V.size and M.size:  # scipy's cho_factor + cho_solve, without their checks and wrappers (same LAPACK calls)
        potrf, potrs, potri, symm = _cholesky_routines(V.dtype, M.dtype)
        c, info = potrf(V.T, lower=False, overwrite_a=False, clean=False)
        if info == 0 and M.shape[0] >= V.shape[0] and symm is not None:
            # at least R right-hand sides: the inverse from the Cholesky factor (upper triangle) times M, a BLAS
            # symm, beats potrs's two triangular solves (one core, R = 20 to 300: 1.2 to 2 times faster)
            inv, info = potri(c, lower=False, overwrite_c=True)
            if info == 0:
                return symm(1.0, inv, M, side=1, lower=0)
        elif info == 0:
            x, info = potrs(c, M.T, lower=False, overwrite_b=False)
            if info == 0:
                return x.T
        return np.linalg.solve(V.T, M.T).T
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    try:
        return cho_solve(cho_factor(V.T, check_finite=False), M.T, check_finite=False).T
    except LinAlgError:
        return np.linalg.solve(V.T, M.T).T


@functools.lru_cache(maxsize=16)
def _cholesky_routines(a: np.dtype, b: np.dtype) -> tuple[Any, Any, Any, Any]:
    """LAPACK's potrf, potrs and potri and BLAS's symm for these dtypes (scipy's choice of prefix), looked up
    once; symm is None for complex (its Hermitian counterpart is hemm)."""
    from scipy.linalg.blas import get_blas_funcs
    from scipy.linalg.lapack import get_lapack_funcs

    arrays = (np.empty(0, a), np.empty(0, b))
    potrf, potrs, potri = get_lapack_funcs(("potrf", "potrs", "potri"), arrays)
    symm = None if np.iscomplexobj(arrays[0]) or np.iscomplexobj(arrays[1]) else get_blas_funcs("symm", arrays)
    return potrf, potrs, potri, symm


def dense_mttkrp(T: Any) -> MTTKRP:
    """The MTTKRP of a dense tensor ``T``, for :func:`cp_als` (any backend)."""

    def mttkrp(U: list[Any], n: int) -> Any:
        return tl.dot(tl.unfold(T, n), tl.conj(tl.tenalg.khatri_rao(U, skip_matrix=n)))

    return mttkrp
