"""``round`` for the ``tucker`` and ``cp`` patterns (chain, ring and nested live in ``sekron.conversions._patterns``).

* ``tucker`` (factors 0..S-2 carry one bond each, the core carries them all): the
  factors are orthogonalised (QR) into the core, then the core is truncated by HOSVD over
  its bond modes. The discarded squared singular values over the S - 1 modes sum to at
  most ``(tol ||W||)^2`` (HOSVD bound), so ``||W - W_hat|| <= tol ||W||``.
* ``cp``: CP ranks have no SVD. First, terms that are parallel in every factor but at most
  one are merged exactly (``a + a`` or ``2 a - a`` return to rank R). Then, with ``tol``,
  the smallest rank r (doubling, then bisection) whose CP-ALS fit (started from the r largest terms, run on the
  factors only: Gram matrices and MTTKRPs come from the factors) has a measured error
  ``||W - W_hat|| <= tol ||W||`` is kept; the error is computed exactly from inner
  products, so the guarantee holds whenever a rank is accepted. Without a fitting rank
  the merged (exact) tensor is returned. With ``rank`` alone the ALS fit at that rank is
  returned (quasi-optimal, no guarantee).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import tensorly as tl

from ..linalg.cp_als import MTTKRP
from ..linalg.cp_als import cp_als as als_loop
from ..linalg.svd import svd_full
from ..linalg.truncation import Budget, smallest_rank
from ..linalg.tt import choose_rank, constant, exact_rtol
from ..sekron_tensor import SeKronTensor


def round_tucker(sk: SeKronTensor, caps: dict[str, int], tol: float | None) -> list[Any]:
    st = sk.structure
    S, P = st.n_factors, st.factor_sizes
    bonds = st.labels[-1]
    core = sk.factors[-1]
    Qs = []
    for k in range(S - 1):
        F = tl.reshape(sk.factors[k], (int(sk.factors[k].shape[0]), P[k]))
        Q, R = tl.qr(tl.conj(tl.transpose(F, (1, 0))))  # F^H = Q R, so F = R^H Q^H
        Qs.append(Q)
        core = _mode_product(core, k, tl.conj(tl.transpose(R, (1, 0))))  # contract r_k with R^H[r_k, q_k]
    norm = float(tl.to_numpy(tl.norm(tl.reshape(core, (-1,)))))
    budget = Budget.make(tol, norm, S - 1)
    cutoff = exact_rtol(core.dtype) * norm
    Us = []
    for k, c in enumerate(bonds):
        q = int(core.shape[k])
        M = tl.reshape(tl.transpose(core, (k, *[i for i in range(len(core.shape)) if i != k])), (q, -1))
        U, s, _ = svd_full(M)
        r, _ = choose_rank(s, float(tl.to_numpy(tl.sum(tl.abs(M) ** 2))), caps[c], budget, cutoff)
        Us.append(U[:, :r])
    for k, U in enumerate(Us):
        core = _mode_product(core, k, tl.conj(U))
    factors = []
    for k, (Q, U) in enumerate(zip(Qs, Us)):
        F = tl.matmul(tl.transpose(U, (1, 0)), tl.conj(tl.transpose(Q, (1, 0))))  # (r, P): U^T Q^H
        factors.append(tl.reshape(F, (int(F.shape[0]), *st.factor_shapes[k])))
    factors.append(core)
    return factors


def _mode_product(core: Any, axis: int, M: Any) -> Any:
    """Contract ``core``'s axis ``axis`` with M's rows: out[.., j, ..] = sum_i core[.., i, ..] M[i, j]."""
    n = len(core.shape)
    perm = (*[i for i in range(n) if i != axis], axis)
    moved = tl.transpose(core, perm)
    shape = tuple(int(s) for s in moved.shape)
    out = tl.reshape(tl.matmul(tl.reshape(moved, (-1, shape[-1])), M), (*shape[:-1], int(M.shape[1])))
    inv = tuple(perm.index(i) for i in range(n))
    return tl.transpose(out, inv)


# --- cp ---------------------------------------------------------------------------------
def _terms(sk: SeKronTensor) -> list[Any]:
    st = sk.structure
    R = sk.rank[st.bond_labels[0]]
    return [tl.reshape(f, (R, P)) for f, P in zip(sk.factors, st.factor_sizes)]


def _merge(F: list[Any]) -> list[Any]:
    """Merge terms parallel in all factors but at most one (exact up to rounding)."""
    mats = [tl.to_numpy(f) for f in F]
    eps = np.finfo(mats[0].dtype).eps
    thresh = 1e3 * eps
    R = mats[0].shape[0]
    norms = [np.linalg.norm(m, axis=1) for m in mats]
    units = [m / np.where(n > 0, n, 1)[:, None] for m, n in zip(mats, norms)]
    alive = [r for r in range(R) if all(n[r] > 0 for n in norms)]
    groups: list[tuple[int, int, list[tuple[int, np.ndarray]]]] = []  # (representative, free factor, members)
    S = len(mats)
    for r in alive:
        placed = False
        for gi, (rep, free, members) in enumerate(groups):
            phases = []
            differ = []
            for k in range(S):
                c = np.vdot(units[k][rep], units[k][r])
                if abs(1 - abs(c)) > thresh:
                    differ.append(k)
                phases.append(c)
            if len(differ) > 1 or (len(differ) == 1 and free not in (-1, differ[0])):
                continue
            new_free = differ[0] if differ else free
            # coefficient: term r = (prod_k norm * phase) over the representative's units
            members.append((r, np.array(phases)))
            groups[gi] = (rep, new_free, members)
            placed = True
            break
        if not placed:
            groups.append((r, -1, [(r, np.ones(S, dtype=np.result_type(mats[0], np.float64)))]))
    if len(groups) == len(alive) and len(alive) == R:
        return F
    rows_out: list[list[Any]] = [[] for _ in range(S)]
    for rep, free, members in groups:
        j = 0 if free == -1 else free
        vec: Any = 0
        for r, phase in members:
            coef: Any = 1.0
            for k in range(S):
                if k != j:
                    coef = coef * norms[k][r] * phase[k]
            vec = vec + coef * mats[j][r]
        for k in range(S):
            rows_out[k].append(vec if k == j else units[k][rep])
    if not groups:  # the zero tensor
        return [f[:1] * 0 for f in F]
    return [constant(np.stack(rows), F[0]) for rows in rows_out]


def _grams(X: list[Any], Y: list[Any]) -> list[Any]:
    return [tl.matmul(tl.conj(y), tl.transpose(x, (1, 0))) for x, y in zip(X, Y)]  # (Ry, Rx): <y_s, x_r>


def _prod_except(G: list[Any], k: int) -> Any:
    out = None
    for j, g in enumerate(G):
        if j != k:
            out = g if out is None else out * g
    return out


def _cp_sq(X: list[Any], Y: list[Any]) -> complex:
    out = _prod_except(_grams(X, Y), -1)
    return complex(tl.to_numpy(tl.sum(out)))


def _cp_mttkrp(X: list[Any]) -> MTTKRP:
    """The MTTKRP of the CP tensor with factors ``X`` (R, P_k), for :func:`sekron.linalg.cp_als.cp_als`."""

    def mttkrp(U: list[Any], k: int) -> Any:
        H = _prod_except([tl.matmul(x, tl.conj(u)) for x, u in zip(X, U)], k)  # (R, r): prod_j <x_j, conj u_j>
        return tl.matmul(tl.transpose(X[k], (1, 0)), H)

    return mttkrp


def cp_als(X: list[Any], r: int, n_iter: int = 100, rtol: float = 1e-10) -> tuple[list[Any], float]:
    """Rank-r CP fit of the CP ``X`` (factors (R, P_k)), from its r largest terms; returns (factors, error^2)."""
    R = int(X[0].shape[0])
    if r > R:
        raise ValueError("internal: cp_als rank above the current rank")
    sizes = np.prod([np.linalg.norm(tl.to_numpy(x), axis=1) for x in X], axis=0)
    top = np.argsort(-sizes, kind="stable")[:r]
    U = [tl.transpose(constant(tl.to_numpy(x)[top], x), (1, 0)) for x in X]
    xx = _cp_sq(X, X).real
    U = als_loop(_cp_mttkrp(X), U, xx, n_iter, rtol)
    Y = [tl.transpose(u, (1, 0)) for u in U]
    err2 = max(xx - 2 * _cp_sq(X, Y).real + _cp_sq(Y, Y).real, 0.0)
    return Y, err2


def round_cp(sk: SeKronTensor, caps: dict[str, int], tol: float | None) -> list[Any]:
    st = sk.structure
    c = st.bond_labels[0]
    X = _merge(_terms(sk))
    R = int(X[0].shape[0])
    cap = min(caps[c], R)
    out = X
    if tol is not None:
        xx = max(_cp_sq(X, X).real, 0.0)
        goal = (tol * math.sqrt(xx)) ** 2
        fits: dict[int, list[Any]] = {}

        def fit(r: int) -> bool:
            if r >= R:
                fits[r] = X
                return True
            Y, err2 = cp_als(X, r)
            if err2 <= goal:
                fits[r] = Y
                return True
            return False

        hi = smallest_rank(fit, cap)
        if hi is None:
            out = cp_als(X, cap)[0] if cap < R else X
            warnings.warn(f"round: no cp rank up to the cap {cap} met tol={tol}; returned rank {cap}", UserWarning,
                          stacklevel=4)
        else:
            out = fits[hi]
    elif cap < R:  # only a rank cap below the merged rank asks for a fit
        out = cp_als(X, cap)[0]
    Rn = int(out[0].shape[0])
    return [tl.reshape(f, (Rn, *fs)) for f, fs in zip(out, st.factor_shapes)]
