"""Tensor-train kernels used by the conversions: TT-SVD of small tensors, orthogonalisation,
the truncating left-to-right sweep (TT-rounding) and SVD-based rank choice.

TT cores follow tensorly's convention: core ``m`` has shape ``(r_{m-1}, d_m, r_m)`` with
``r_{-1} = r_{N-1} = 1``. The sweep never needs the cores to the right of the current cut
to be materialised: each is given as an *applier*, a function that multiplies a carried
matrix ``(r, r_{m-1})`` into core ``m`` and returns ``(r, d_m, r_m)``. When those cores
are right-orthogonal, the singular values met at each cut are exactly those of the
unfolding of W at that cut, so the squared error of the whole sweep is the sum of the
discarded squared singular values (the TT-SVD / TT-rounding guarantee).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorly as tl

from .svd import NOISE_MARGIN, OVERSAMPLING, _eps, randomized_pays, svd_full, svd_randomized
from .truncation import Budget

Applier = Callable[[Any], Any]


def context(x: Any) -> dict[str, Any]:
    """``tl.context(x)`` without ``requires_grad`` (for new constant arrays)."""
    return {k: v for k, v in tl.context(x).items() if k != "requires_grad"}


def constant(data: np.ndarray, like: Any) -> Any:
    """``data`` as an array of ``like``'s backend, dtype and device."""
    return tl.tensor(data, **context(like))


def exact_rtol(dtype: Any) -> float:
    """Relative size below which a singular value counts as zero in an exact conversion."""
    return NOISE_MARGIN * _eps(dtype)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _ct(M: Any) -> Any:
    return tl.conj(tl.transpose(M, (1, 0)))


def _numpy_abs(s: Any) -> np.ndarray:
    return np.abs(tl.to_numpy(s)).astype(np.float64)


def numerical_rank(s: Any, cutoff: float) -> int:
    """Number of singular values above ``cutoff`` (at least 1)."""
    return max(1, int((_numpy_abs(s) > cutoff).sum()))


def tt_svd(X: Any, dims: Sequence[int], rtol: float | None = None) -> list[Any]:
    """Exact TT of ``X`` reshaped to ``dims``, computed right to left.

    Cores ``1..`` are right-orthogonal; core 0 carries the norm. Singular values below
    ``rtol * ||X||`` are dropped (numerical rank).
    """
    dims = tuple(int(d) for d in dims)
    rtol = exact_rtol(X.dtype) if rtol is None else rtol
    norm = float(tl.to_numpy(tl.norm(tl.reshape(X, (-1,)))))
    cores: list[Any] = []
    rem = tl.reshape(X, (-1, dims[-1]))
    r_right = 1
    for m in range(len(dims) - 1, 0, -1):
        M = tl.reshape(rem, (-1, dims[m] * r_right))
        U, s, Vh = svd_full(M)
        k = numerical_rank(s, rtol * norm) if norm > 0 else 1
        cores.insert(0, tl.reshape(Vh[:k], (k, dims[m], r_right)))
        rem = U[:, :k] * tl.reshape(s[:k], (1, k))
        r_right = k
    cores.insert(0, tl.reshape(rem, (1, dims[0], r_right)))
    return cores


def right_orthogonalize(cores: Sequence[Any]) -> list[Any]:
    """Make cores ``1..N-1`` right-orthogonal by LQ factorisations, right to left."""
    cores = list(cores)
    for m in range(len(cores) - 1, 0, -1):
        r0, d, r1 = _shape(cores[m])
        Q, R = tl.qr(_ct(tl.reshape(cores[m], (r0, d * r1))))
        k = int(Q.shape[1])
        cores[m] = tl.reshape(_ct(Q), (k, d, r1))
        p0, pd, _ = _shape(cores[m - 1])
        cores[m - 1] = tl.reshape(tl.matmul(tl.reshape(cores[m - 1], (p0 * pd, r0)), _ct(R)), (p0, pd, k))
    return cores


def explicit_appliers(cores: Sequence[Any]) -> list[Applier]:
    """Appliers for materialised cores ``1..N-1``."""

    def make(core: Any) -> Applier:
        r0, d, r1 = _shape(core)
        return lambda M: tl.reshape(tl.matmul(M, tl.reshape(core, (r0, d * r1))), (int(M.shape[0]), d, r1))

    return [make(c) for c in cores[1:]]


def parse_tt_rank(rank: Any, n_modes: int) -> list[int | None]:
    """Caps for the ``N - 1`` inner TT ranks: None, an int, ``N - 1`` ints, or ``N + 1`` ints with 1 at both ends."""
    from .._validation import check_int

    cuts = max(n_modes - 1, 0)
    if rank is None:
        return [None] * cuts
    if isinstance(rank, (list, tuple)):
        values = list(rank)
        if len(values) == cuts + 2:
            if values[0] != 1 or values[-1] != 1:
                raise ValueError(f"a TT rank of length N + 1 = {cuts + 2} must start and end with 1, got {values}")
            values = values[1:-1]
        if len(values) != cuts:
            raise ValueError(f"rank must be an int or {cuts} inner TT ranks (or N + 1 = {cuts + 2} with 1 at both "
                             f"ends) for a tensor of order {n_modes}, got {list(rank)}")
        return [check_int(v, f"rank[{i}]") for i, v in enumerate(values)]
    return [check_int(rank, "rank")] * cuts


def _svd(M: Any, cap: int | None, exact: bool) -> tuple[Any, Any, Any]:
    m, n = _shape(M)
    if not exact and randomized_pays(cap, m, n):
        return svd_randomized(M[None], cap, 0)  # type: ignore[no-any-return]
    return svd_full(M)


def choose_rank(s: Any, total: float, cap: int | None, budget: Budget, cutoff: float) -> tuple[int, float]:
    """Smallest rank within ``cap`` whose discarded energy fits the cut's allowance.

    ``total`` is ``||Y||^2`` of the matrix that was factorised, so the discarded energy
    ``total - sum(kept s^2)`` is exact even when only the leading singular values are known.
    """
    s2 = _numpy_abs(s) ** 2
    kept = np.concatenate([[0.0], np.cumsum(s2)])
    tail = np.maximum(total - kept, 0.0)
    top = len(s2) if cap is None else min(cap, len(s2))
    top = min(top, numerical_rank(s, cutoff))
    allowance = budget.allowance()
    k = top
    if math.isfinite(allowance):
        fits = np.nonzero(tail[1: top + 1] <= allowance)[0]
        k = int(fits[0]) + 1 if len(fits) else top
    used = float(tail[k])
    budget.record(used)
    return k, used


IMPLICIT_MIN_SIZE = 1 << 18  # entries of Y above which a capped cut is factorised without forming Y
#: the implicit randomized SVD sketches wider, and iterates more, than :func:`svd_randomized`: each
#: product with Y is cheap (Y is never formed), and the subspace it finds is carried into every
#: later core of the sweep, so its accuracy is worth more there
IMPLICIT_OVERSAMPLING = 2 * OVERSAMPLING
IMPLICIT_POWER_ITERATIONS = 4


def _implicit_ok(apply: Applier, k: int, cap: int | None, budget: Budget) -> bool:
    if cap is None or math.isfinite(budget.left) or not hasattr(apply, "matvec"):
        return False
    rows, cols = k * apply.d, apply.n_cols  # type: ignore[attr-defined]
    return rows * cols > IMPLICIT_MIN_SIZE and randomized_pays(cap, rows, cols)


def implicit_svd(carry: Any, core: Any, cap: int, oversampling: int = IMPLICIT_OVERSAMPLING,
                 n_power: int = IMPLICIT_POWER_ITERATIONS) -> tuple[Any, Any, Any]:
    """Randomized SVD (Halko, Martinsson and Tropp) of ``Y = carry @ core`` from products with Y and Y^H."""
    ell = cap + oversampling
    rng = np.random.default_rng(0)
    X = constant(rng.standard_normal((core.n_cols, ell)), carry)
    Q, _ = tl.qr(core.matvec(carry, X))
    for _ in range(n_power):
        Z, _ = tl.qr(core.rmatvec(carry, Q))
        Q, _ = tl.qr(core.matvec(carry, Z))
    Ub, s, Vh = tl.svd(_ct(core.rmatvec(carry, Q)), full_matrices=False)
    return tl.matmul(Q, Ub), s, Vh


def sweep(Y0: Any, appliers: Sequence[Applier], caps: Sequence[int | None], budget: Budget,
          cutoff: float, exact: bool) -> list[Any]:
    """Left-to-right truncating sweep. ``Y0`` is core 0 as ``(1, d_0, r_0)``; the rest are appliers.

    Each cut is factorised by an SVD, the left vectors become the core and ``s Vh`` is
    carried into the next core. The cores behind the appliers must be right-orthogonal:
    then ``||Y|| = ||carry||``, which is how the discarded energy is measured. A capped
    cut (no ``tol``) behind an implicit applier of more than ``IMPLICIT_MIN_SIZE``
    entries is factorised by :func:`implicit_svd`, without forming Y.
    """
    cores: list[Any] = []
    Y: Any = Y0
    total = float(tl.to_numpy(tl.norm(tl.reshape(Y0, (-1,))))) ** 2
    for m, apply in enumerate(appliers):
        if isinstance(Y, tuple):
            carry, implicit = Y
            r0, d = int(carry.shape[0]), int(implicit.d)
            U, s, Vh = implicit_svd(carry, implicit, int(caps[m] or 1))
        else:
            r0, d, r1 = _shape(Y)
            U, s, Vh = _svd(tl.reshape(Y, (r0 * d, r1)), caps[m], exact)
            if len(_shape(U)) == 3:
                U, s, Vh = U[0], s[0], Vh[0]
        del Y
        k, used = choose_rank(s, total, caps[m], budget, cutoff)
        total = max(total - used, 0.0)
        cores.append(tl.reshape(U[:, :k], (r0, d, k)))
        carry = tl.reshape(s[:k], (k, 1)) * Vh[:k]
        del U, s, Vh
        nxt_cap = caps[m + 1] if m + 1 < len(caps) else None
        Y = (carry, apply) if m + 1 < len(appliers) and _implicit_ok(apply, k, nxt_cap, budget) else apply(carry)
    cores.append(Y)
    return cores


def tt_round(cores: Sequence[Any], caps: Sequence[int | None], tol: float | None) -> tuple[list[Any], float]:
    """TT-rounding of materialised cores: ``||W - W_hat|| <= tol ||W||`` and each rank within its cap.

    Returns the cores and the achieved absolute error.
    """
    cores = right_orthogonalize(cores)
    norm = float(tl.to_numpy(tl.norm(tl.reshape(cores[0], (-1,)))))
    budget = Budget.make(tol, norm, len(cores) - 1)
    cutoff = exact_rtol(cores[0].dtype) * norm
    exact = tol is None and all(c is None for c in caps)
    out = sweep(cores[0], explicit_appliers(cores), caps, budget, cutoff, exact)
    return out, math.sqrt(budget.spent)


def tt_to_dense_small(cores: Sequence[Any]) -> Any:
    """Contract TT cores to the full tensor (used for small cores only)."""
    out = cores[0]
    for c in cores[1:]:
        shape = _shape(out)
        r0, d, r1 = _shape(c)
        out = tl.reshape(tl.matmul(tl.reshape(out, (-1, r0)), tl.reshape(c, (r0, d * r1))), (*shape[:-1], d, r1))
    return tl.reshape(out, _shape(out)[1:-1])


def tt_hosvd(cores: list[Any], caps: list[int | None], tol: float | None) -> tuple[Any, list[Any]]:
    """HOSVD of the tensor whose TT is ``cores``: (core, factors), with the HOSVD bound for ``tol``."""
    work = right_orthogonalize(cores)
    norm = float(tl.to_numpy(tl.norm(tl.reshape(work[0], (-1,)))))
    budget = Budget.make(tol, norm, len(cores))
    cutoff = exact_rtol(work[0].dtype) * norm
    factors = []
    for n, core in enumerate(work):
        r0, d, r1 = (int(s) for s in core.shape)
        M = tl.reshape(tl.transpose(core, (1, 0, 2)), (d, r0 * r1))
        U, s, _ = svd_full(M)
        k, _ = choose_rank(s, float(tl.to_numpy(tl.sum(tl.abs(M) ** 2))), caps[n], budget, cutoff)
        factors.append(U[:, :k])
        if n + 1 < len(work):
            Q, R = tl.qr(tl.reshape(core, (r0 * d, r1)))
            nxt = work[n + 1]
            rest = tuple(int(x) for x in nxt.shape[1:])
            work[n + 1] = tl.reshape(tl.matmul(R, tl.reshape(nxt, (r1, -1))), (int(R.shape[0]), *rest))
            work[n] = tl.reshape(Q, (r0, d, int(Q.shape[1])))
    projected = [tl.einsum("aib,ik->akb", c, tl.conj(U)) for c, U in zip(cores, factors)]
    return tt_to_dense_small(projected), factors


def tt_norm_sq(cores: Sequence[Any]) -> float:
    """``||W||^2`` of the TT ``cores``, from the cores alone (a chain of core Gram products)."""
    acc: Any = None
    for c in cores:
        step = tl.einsum("aib,cid->acbd", c, tl.conj(c))
        r0, r1 = int(c.shape[0]), int(c.shape[2])
        step = tl.reshape(step, (r0 * r0, r1 * r1))
        acc = step if acc is None else tl.matmul(acc, step)
    return float(np.real(tl.to_numpy(tl.sum(acc))))
