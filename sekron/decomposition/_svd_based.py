"""Per-pattern decomposition algorithms on the rearranged tensor T (docs/math.md §4).

Each algorithm takes T of shape ``(P_1, .., P_S)`` and returns the factors in the
SeKronTensor axis convention (see :mod:`sekron.sekron_tensor`) and the achieved
squared absolute error. The SVD-based ones keep orthonormal left vectors and carry
``U^H M`` to the right, so the squared error is exactly the sum of every discarded
squared singular value (up to rounding).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorly as tl

from ..linalg.svd import (
    PARTIAL_EIGH_FRACTION,
    SVDFunction,
    _ct,
    choose_svd,
    gram_eigh,
    gram_top,
    in_shared_block,
    shared_projection,
    shares_eigh,
    svd_full,
    svd_gram,
    within_noise,
)
from ..linalg.truncation import Budget, branch_mask, choose_ranks
from ..structure import Structure


class Context:
    """What every algorithm needs besides T: caps, budget and SVD choice."""

    def __init__(self, st: Structure, caps: dict[str, int | None], budget: Budget, svd: Any,
                 tol: float | None, random_state: Any, options: dict[str, Any]) -> None:
        self.st, self.caps, self.budget, self.svd = st, caps, budget, svd
        self.tol, self.random_state, self.options = tol, random_state, options

    def svd_for(self, M: Any) -> SVDFunction:
        return choose_svd(self.svd, tuple(M.shape), M.dtype, self.tol)

    def truncated(self, M: Any, label: str) -> tuple[Any, Any, np.ndarray]:
        """SVD of the batch ``M`` (B, m, n), truncated per branch: (U, C = U^H M, ranks).

        ``U`` has orthonormal columns (zeroed beyond each branch's rank), so the squared
        error of ``U C`` is the sum of the discarded squared singular values.
        """
        cap = self.caps.get(label)
        fn = self.svd_for(M)
        if (fn is svd_full and cap is not None and self.svd == "auto" and self.tol is None and label != "\0ring"
                and isinstance(M, np.ndarray) and M.dtype.kind == "f" and in_shared_block()):
            fn = svd_gram  # the search's rank-capped truncations (see shared_eigh); a ring's first cut excepted
        if fn is svd_gram:
            out = self._gram_truncated(M, cap, label)
            if out is not None:
                return out
            fn = svd_full
        U, s, Vh = fn(M, cap, self.random_state)
        ranks = choose_ranks(s, cap, self.budget, label)
        R = int(ranks.max())
        mask = branch_mask(ranks, R, U)
        U = U[:, :, :R] * tl.reshape(mask, (int(mask.shape[0]), 1, R))
        C = (tl.reshape(s[:, :R], (int(s.shape[0]), R, 1)) * Vh[:, :R, :]) * tl.reshape(
            mask, (int(mask.shape[0]), R, 1))
        return U, C, ranks

    def _gram_truncated(self, M: Any, cap: int | None, label: str) -> tuple[Any, Any, np.ndarray] | None:
        """The fast path: ranks from the Gram eigenvalues, then only the kept rows of ``U^H M``.

        With a small rank cap and no ``tol`` only the kept eigenpairs are computed
        (:func:`gram_top`). Returns None (use the full SVD) in "auto" mode when the cut's
        error allowance is :func:`~sekron.linalg.svd.within_noise` of the Gram rounding
        noise ``min(m, n) * eps * ||M||^2``: squaring would blur the singular values that
        decide the truncation.
        """
        k = min(int(M.shape[-2]), int(M.shape[-1]))
        allowance = self.budget.allowance()
        top = None
        if cap is not None and not math.isfinite(allowance) and (
                cap < PARTIAL_EIGH_FRACTION * k or (cap <= k and shares_eigh(M))):
            top = gram_top(M, cap)
        if top is not None:
            V, lam, tall, tail = top
            ranks = np.full(1, cap, dtype=np.int64)
            self.budget.record(tail)
        else:
            V, lam, tall = gram_eigh(M)
            lam_np = np.maximum(np.real(tl.to_numpy(lam)).astype(np.float64), 0.0)
            if self.svd == "auto" and math.isfinite(allowance) and within_noise(allowance, float(lam_np.sum()),
                                                                                 M.dtype, k):
                return None
            ranks = choose_ranks(np.sqrt(lam_np), cap, self.budget, label)
        R = int(ranks.max())
        B = int(M.shape[0])
        mask = branch_mask(ranks, R, V)
        if tall:  # V holds right vectors: orthonormalise M V_R for the left ones
            # a ring's first cut keeps Householder's signs: its error depends on them (the cut is split in two bonds)
            U = _orthonormal_columns(tl.matmul(M, V[:, :, :R]), householder=label == "\0ring")
        else:
            U = V[:, :, :R]
            P = shared_projection(M, R) if top is not None else None
            if P is not None:  # the leading rows of the shared V^T M: C = U^T M without a product per cut
                return U * tl.reshape(mask, (B, 1, R)), P * tl.reshape(mask, (B, R, 1)), ranks
        U = U * tl.reshape(mask, (B, 1, R))
        return U, tl.matmul(_ct(U), M), ranks


#: Cholesky QR is used only while the column-normalised Gram matrix ``G`` is this close to the identity
#: (largest row sum of ``|G - I|``, a bound on ``||G - I||_2``): then its condition number is at most 3 and one
#: pass orthonormalises to rounding (Yamamoto et al., 2015); beyond it, Householder QR
CHOLESKY_QR_GAP = 0.5


def _orthonormal_columns(Y: Any, householder: bool = False) -> Any:
    """An orthonormal basis ``Q`` (B, m, R) of the columns of ``Y`` (B, m, R), column j along ``Y``'s column j.

    ``Y = M V_R`` has nearly orthogonal columns (``V_R`` are Gram eigenvectors), so for numpy it is one
    pass of Cholesky QR on the columns scaled to unit norm: two thin products instead of a Householder QR
    of a tall matrix, which is several times slower. When the scaled Gram matrix is not within
    :data:`CHOLESKY_QR_GAP` of the identity (a tiny, inaccurate column), for another backend, or with
    ``householder``, it is the backend's QR.
    """
    if not householder and isinstance(Y, np.ndarray) and Y.dtype.kind in "fc" and Y.ndim == 3:
        out = [_cholesky_qr(Y[b]) for b in range(Y.shape[0])]
        if all(q is not None for q in out):
            return np.stack(out)  # type: ignore[arg-type]
    U, _ = tl.qr(Y)
    return U


def _cholesky_qr(Y: np.ndarray) -> np.ndarray | None:
    """:func:`_orthonormal_columns` of one numpy matrix, or None when Cholesky QR does not apply."""
    from scipy.linalg import solve_triangular

    norms = np.linalg.norm(Y, axis=0)
    if not np.all(norms > 0):
        return None
    Q = Y / norms
    G = Q.T @ Q if Q.dtype.kind == "f" else Q.conj().T @ Q
    eye = np.eye(Y.shape[1], dtype=Y.dtype)
    if not float(np.max(np.sum(np.abs(G - eye), axis=1))) < CHOLESKY_QR_GAP:
        return None
    L = np.linalg.cholesky(G)  # G = L L^H: Q L^{-H} has orthonormal columns
    return Q @ solve_triangular(L, eye, lower=True, check_finite=False).conj().T


def _digits(x: Any, bonds: tuple[int, ...], fshape: tuple[int, ...]) -> Any:
    return tl.reshape(x, bonds + fshape)


def nested(T: Any, ctx: Context) -> list[Any]:
    """The paper's recursive SVD: level k splits every branch's remainder as (P_k, rest)."""
    st = ctx.st
    S, P, bonds = st.n_factors, st.factor_sizes, st.bond_labels
    factors: list[Any] = []
    batch: tuple[int, ...] = ()
    rem = tl.reshape(T, (1, P[0], -1))
    for k in range(S - 1):
        U, C, _ = ctx.truncated(rem, bonds[k])
        R = int(U.shape[-1])
        U = tl.reshape(U, (*batch, P[k], R))
        nb = len(batch)
        U = tl.transpose(U, (*tuple(range(nb)), nb + 1, nb))
        factors.append(_digits(U, (*batch, R), st.factor_shapes[k]))
        batch = (*batch, R)
        rem = tl.reshape(C, (math.prod(batch), P[k + 1], -1))
    factors.append(_digits(rem, batch, st.factor_shapes[-1]))
    return factors


def _tt_sweep(rem: Any, r_prev: int, first: int, ctx: Context, labels: str) -> tuple[list[Any], Any, int]:
    """TT-SVD over factors ``first..`` of T: returns cores (r_prev, P_k, r_k) and the remainder."""
    P = ctx.st.factor_sizes
    cores = []
    for j, label in enumerate(labels):
        k = first + j
        M = tl.reshape(rem, (1, r_prev * P[k], -1))
        U, C, _ = ctx.truncated(M, label)
        R = int(U.shape[-1])
        cores.append(tl.reshape(U, (r_prev, P[k], R)))
        rem, r_prev = tl.reshape(C, (R, -1)), R
    return cores, rem, r_prev


def _core_to_factor(core: Any, fshape: tuple[int, ...]) -> Any:
    """A TT core (r_left, P, r_right) to factor axes (left, right, digits)."""
    r0, _, r1 = (int(d) for d in core.shape)
    return _digits(tl.transpose(core, (0, 2, 1)), (r0, r1), fshape)


def chain(T: Any, ctx: Context) -> list[Any]:
    """TT-SVD over the factors."""
    st = ctx.st
    S, bonds, fs = st.n_factors, st.bond_labels, st.factor_shapes
    cores, rem, r = _tt_sweep(T, 1, 0, ctx, "".join(bonds))
    factors = [_digits(tl.transpose(tl.reshape(cores[0], tuple(cores[0].shape[1:])), (1, 0)),
                       (int(cores[0].shape[2]),), fs[0])]
    factors += [_core_to_factor(c, fs[k]) for k, c in enumerate(cores[1:], start=1)]
    factors.append(_digits(rem, (r,), fs[S - 1]))
    return factors


def _split(R: int, cap_z: int | None, cap_a: int | None) -> tuple[int, int]:
    """Sizes (r_z, r_a) with r_z * r_a >= R, as balanced as the caps allow."""
    r_z = max(1, math.isqrt(R))
    if cap_z is not None:
        r_z = min(r_z, cap_z)
    r_a = -(-R // r_z)
    if cap_a is not None and r_a > cap_a:
        r_a = cap_a
        r_z = -(-R // r_a)
    return r_z, r_a


def ring(T: Any, ctx: Context) -> list[Any]:
    """TR-SVD: the first unfolding's rank R_1 is split into the closing bond z and bond a."""
    st = ctx.st
    S, P, bonds, fs = st.n_factors, st.factor_sizes, st.bond_labels, st.factor_shapes
    z, a = bonds[0], bonds[1]
    cz, ca = ctx.caps.get(z), ctx.caps.get(a)
    first_cap = None if cz is None and ca is None else (cz or P[0]) * (ca or P[0])
    saved = ctx.caps
    ctx.caps = {**saved, "\0ring": first_cap}
    U, C, _ = ctx.truncated(tl.reshape(T, (1, P[0], -1)), "\0ring")
    ctx.caps = saved
    ctx.budget.clipped.pop("\0ring", None)
    R = int(U.shape[-1])
    r_z, r_a = _split(R, cz, ca)
    for label, cap, got in ((z, cz, r_z), (a, ca, r_a)):  # warn only about bonds that really shrank
        if cap is not None and got < cap and R < first_cap:  # type: ignore[operator]
            ctx.budget.clipped[label] = (cap, got)
    pad = r_z * r_a - R
    U, C = U[0], C[0]
    if pad:
        U = tl.concatenate([U, tl.zeros((P[0], pad), **tl.context(U))], axis=1)
        C = tl.concatenate([C, tl.zeros((pad, int(C.shape[1])), **tl.context(C))], axis=0)
    first = _digits(tl.transpose(tl.reshape(U, (P[0], r_z, r_a)), (1, 2, 0)), (r_z, r_a), fs[0])
    # remainder (z, a, P_2..P_S) -> (a, P_2..P_S, z), then a TT sweep closed by z
    C = tl.transpose(tl.reshape(C, (r_z, r_a, -1)), (1, 2, 0))
    cores, rem, r = _tt_sweep(C, r_a, 1, ctx, "".join(bonds[2:]))
    factors = [first] + [_core_to_factor(c, fs[k]) for k, c in enumerate(cores, start=1)]
    last = tl.reshape(rem, (r, P[S - 1], r_z))
    factors.append(_core_to_factor(last, fs[S - 1]))
    return factors


def tucker(T: Any, ctx: Context) -> list[Any]:
    """Sequentially truncated HOSVD over the first S-1 modes; the core is the last factor."""
    st = ctx.st
    S, bonds, fs = st.n_factors, st.bond_labels, st.factor_shapes
    core = T
    factors = []
    for k in range(S - 1):
        moved = tl.moveaxis(core, k, 0)
        rest = tuple(int(d) for d in moved.shape[1:])
        U, C, _ = ctx.truncated(tl.reshape(moved, (1, int(moved.shape[0]), -1)), bonds[k])
        R = int(U.shape[-1])
        factors.append(_digits(tl.transpose(U[0], (1, 0)), (R,), fs[k]))
        core = tl.moveaxis(tl.reshape(C[0], (R, *rest)), 0, k)
    factors.append(_digits(core, tuple(int(d) for d in core.shape[:-1]), fs[-1]))
    return factors
