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
* ``merge_summands`` (used by ``round`` on ring and nested before their sweeps): ``a + b`` stacks
  the factors block-diagonally on every bond, so the tensor is a sum of direct summands, found
  from the exact zeros of the factors. Summands whose factors are scalar multiples of another's
  (to rounding) are merged into it: ``a + a`` is ``2 a`` at the ranks of ``a``, exactly.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import tensorly as tl

from ..linalg.als import MTTKRP
from ..linalg.als import cp_als as als_loop
from ..linalg.svd import svd_full
from ..linalg.truncation import Budget, smallest_rank
from ..linalg.tt import choose_rank, constant, exact_rtol
from ..sekron_tensor import SeKronTensor
from .arithmetic import _pad


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
    """The MTTKRP of the CP tensor with factors ``X`` (R, P_k), for :func:`sekron.linalg.als.cp_als`."""

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


def _summands(sk: SeKronTensor) -> list[dict[str, list[int]]]:
    """The direct summands of ``sk``: index sets per bond that no nonzero factor entry couples to the rest.

    ``a + b`` builds block-diagonal factors (every bond a direct sum), so W is the sum of the sub-tensors that
    keep one block of indices on every bond. Found from the exact zeros: index j of bond c and index l of
    bond d are joined when some factor carrying both has a nonzero entry there. A block that misses some bond
    carries no term of W (every term picks one index on every bond, all joined) and is left out.
    """
    st = sk.structure
    parent: dict[tuple[str, int], tuple[str, int]] = {(c, j): (c, j) for c in st.bond_labels
                                                      for j in range(sk.rank[c])}

    def find(x: tuple[str, int]) -> tuple[str, int]:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    live: set[tuple[str, int]] = set()
    for f, lab in zip(sk.factors, st.labels):
        if not lab:
            continue
        nz = np.abs(tl.to_numpy(f)).reshape((*tuple(sk.rank[c] for c in lab), -1)).max(axis=-1) > 0
        for i, c in enumerate(lab):
            axes = tuple(x for x in range(len(lab)) if x != i)
            live.update((c, int(j)) for j in np.flatnonzero(nz.any(axis=axes) if axes else nz))
        for i in range(1, len(lab)):
            axes = tuple(x for x in range(1, len(lab)) if x != i)
            pairs = nz.any(axis=axes) if axes else nz
            for j, m in np.argwhere(pairs):
                ra, rb = find((lab[0], int(j))), find((lab[i], int(m)))
                if ra != rb:
                    parent[ra] = rb
    groups: dict[tuple[str, int], dict[str, list[int]]] = {}
    for c in st.bond_labels:
        for j in range(sk.rank[c]):
            if (c, j) in live:
                groups.setdefault(find((c, j)), {}).setdefault(c, []).append(j)
    return [g for g in groups.values() if all(c in g for c in st.bond_labels)]


def _block(f: Any, lab: str, idx: dict[str, list[int]]) -> Any:
    for i, c in enumerate(lab):
        f = f[(slice(None),) * i + (idx[c],)]
    return f


def merge_summands(sk: SeKronTensor) -> SeKronTensor:
    """``sk`` with proportional direct summands merged (``a + a`` -> ``2 a``): exact up to rounding.

    Two summands merge when they have the same bond sizes and every factor of one is a scalar
    multiple of the other's, to within ``exact_rtol`` of its norm (the rounding noise of ``a + c a``
    built by ``+``). Summands equal only up to a change of basis on the bonds are not detected;
    the rounder then keeps their ranks (never larger than the input's).

    Parameters
    ----------
    sk : SeKronTensor
        Any pattern with a connected bond graph (``round`` calls it for ring and nested).

    Returns
    -------
    SeKronTensor
        Equal to ``sk`` up to rounding, in the same structure, with bond sizes at most ``sk``'s
        (``sk`` itself when it has a single summand).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> a = sekron.random_sekron(sekron.Structure([(2, 3), (3, 2), (2, 2)], "ring"), 2, 0)
    >>> m = merge_summands(a + a - 0.5 * a)
    >>> m.rank == a.rank
    True
    >>> bool(np.allclose(m.to_tensor(), 1.5 * a.to_tensor()))
    True
    """
    st = sk.structure
    blocks = _summands(sk)
    if len(blocks) == 1 and all(len(blocks[0][c]) == sk.rank[c] for c in st.bond_labels):
        return sk
    rtol = exact_rtol(sk.factors[0].dtype)
    parts = [[_block(f, lab, g) for f, lab in zip(sk.factors, st.labels)] for g in blocks]
    kept: list[list[Any]] = []
    weights: list[Any] = []
    for part in parts:
        for n, base in enumerate(kept):
            if any(tuple(p.shape) != tuple(q.shape) for p, q in zip(part, base)):
                continue
            coef: Any = 1.0
            for p, q in zip(part, base):
                pv, qv = tl.to_numpy(p).ravel(), tl.to_numpy(q).ravel()
                qq = float(np.vdot(qv, qv).real)
                if qq == 0:
                    coef = None
                    break
                c = np.vdot(qv, pv) / qq
                if np.linalg.norm(pv - c * qv) > rtol * np.linalg.norm(pv):
                    coef = None
                    break
                coef = coef * c
            if coef is not None:
                weights[n] += coef
                break
        else:
            kept.append(part)
            weights.append(1.0)
    if len(kept) == len(parts) and len(parts) == 1:
        return SeKronTensor(parts[0], st)  # only dead indices were dropped
    live = [(part, w) for part, w in zip(kept, weights) if abs(w) > rtol] or [(kept[0], 0.0)]
    merged = []
    for k, lab in enumerate(st.labels):
        blocks_k = []
        for part, w in live:
            f = part[k]
            if k == 0:
                w = complex(w)
                f = f * (w.real if w.imag == 0 else w)
            blocks_k.append(f)
        merged.append(_direct_sum(blocks_k, lab))
    return SeKronTensor(merged, st)


def _direct_sum(blocks: list[Any], lab: str) -> Any:
    """Block-diagonal stacking of ``blocks`` on the bond axes (the first ``len(lab)`` axes)."""
    out = blocks[0]
    for b in blocks[1:]:
        ra = tuple(int(s) for s in out.shape[:len(lab)])
        rb = tuple(int(s) for s in b.shape[:len(lab)])
        for i in range(len(lab)):
            out = _pad(out, i, 0, rb[i])
            b = _pad(b, i, ra[i], 0)
        out = out + b
    return out
