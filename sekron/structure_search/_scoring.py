"""Scoring of candidate structures for :func:`sekron.search`, one *family* at a time.

A family is one (structure, pattern) with a table of rank choices, each with its exact
parameter count and its relative error. How the errors are obtained:

- ``spectrum`` (S = 2 any pattern, S = 3 nested / chain / tucker): from singular
  values only, never a reconstruction. With rank caps (and no ``tol``) ``decompose``
  keeps ``min(cap, k)`` terms on every branch, and its squared error is the sum of the
  discarded squared singular values (docs/math.md §4). S = 2: the tail of the
  spectrum of ``R(W)`` as a ``(P_1, P_2)`` matrix. S = 3: the level-1 split
  ``(P_1 | P_2 P_3)`` gives ``s`` and the carried rows ``C_r = s_r v_r``; then
  nested adds each branch's tail of ``C_r`` as a ``(P_2, P_3)`` matrix, chain (TT-SVD)
  the tail of the stacked ``(R_1 P_2, P_3)`` matrix and tucker (ST-HOSVD) the tail of
  ``(P_2, R_1 P_3)``; their Gram matrices are running sums over ``r < R_1``.
- ``als`` (cp with S >= 3): a CP-ALS on T (:func:`fast_als`, at most :data:`ALS_ITERS`
  sweeps within :data:`ALS_FLOPS`, extrapolated from :data:`EXTRAPOLATE_FROM` sweeps on;
  each rank of the ladder warm-started from the one below, :func:`cp_family`); its factors
  become ``decompose``'s ``init`` with ``n_iter_max=0``, so ``decompose`` returns exactly
  them and their true error.
- ``caps`` (the axis-aligned TT / TR / Tucker baselines): rank profiles from the spectra
  of W's unfoldings (:mod:`sekron.structure_search._baselines`), scaled to the budget, then one
  ``decompose(W, st, rank=caps)`` per point; its error is again the spectrum's.

Every point carries the ``decompose`` keywords that reproduce it exactly.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import using
from ..decomposition import decompose
from ..linalg.als import MTTKRP, cp_als
from ..linalg.svd import gram_eigvalsh, gram_top, shared_result
from ..structure import Structure
from . import _baselines as bl
from ._cache import memo

#: most ALS sweeps used when scoring cp candidates. With warm starts and extrapolation, 18 sweeps (and
#: ALS_FLOPS = 1e9) reach a lower summed error over whole models than 60 plain sweeps did, in less time
#: (docs/speed.md, "Quiet machine": 36 sweeps and 1.5e9 gave errors 1 to 3% lower still, in 1.3 to 1.4x the time)
ALS_ITERS = 18
#: fits of at least this many sweeps extrapolate each sweep's step (:func:`sekron.linalg.als.cp_als`); the
#: shorter ones (large weights, see ALS_FLOPS) do not, since every extrapolation costs one more MTTKRP
EXTRAPOLATE_FROM = 8
#: flop allowance of one cp candidate's ALS (fewer sweeps on large weights)
ALS_FLOPS = 1.0e9
#: compress's cp fits within ``dense size / 2**CHAIN_ROOT`` parameters or fewer start from the SVD, larger ones
#: from the fit an octave below (:func:`octave_ranks`): at 4x (ladder octaves 4 to 1) this is the chain of a
#: ladder that starts at its smallest rank, and the fits of 8x and 2x share all but one octave with it
CHAIN_ROOT = 4
#: a CP problem whose largest mode is at least this many times the product of the others is fitted on its
#: QR-compressed tensor (:func:`_compressed`; below it the QR costs more than the sweeps it shortens)
TALL = 2
#: a cp fit whose relative error (from its last ALS sweep, exact to rounding relative to ``||T||``) is below this
#: is replayed by ``decompose`` for its error (a reconstruction): there the rounding of ``||T||^2`` would matter
REPLAY_BELOW = 1e-3
#: columns of the randomized sketch that screens large S = 2 grids
SKETCH = 32
#: TT / TR / Tucker rank profiles (the target ``t`` of :func:`sekron.structure_search._baselines.profile`):
#: besides the profile matched to one budget, the one at ``t = 0.3`` (another shape of ranks,
#: which sometimes fits the budget better); for a ladder of budgets, two profiles bracketing
#: the usual compression errors
SECOND_PROFILE_TOLS = (0.3,)
LADDER_PROFILE_TOLS = (0.1, 0.4)
#: leading level-1 branches, and flop allowance, of the exact split screen
SCREEN_BRANCHES = 4
SCREEN_FLOPS = 2e9
#: level-1 ranks at which chain / tucker Gram spectra are evaluated, at most this many
R1_GRID = 8


@dataclass
class Family:
    """One (structure, pattern) and its scored rank choices (point ``i``: ``ranks[i]``, ``params[i]``, ``err[i]``)."""

    structure: Structure
    kind: str
    params: np.ndarray
    err: np.ndarray
    ranks: np.ndarray  # (n, n_bonds), bond sizes in structure.bond_labels order
    extra: list[dict[str, Any]] | None = None  # per point decompose keywords; None: {"rank": rank(i)}
    baseline: str | None = None

    def rank(self, i: int) -> dict[str, int]:
        return {c: int(r) for c, r in zip(self.structure.bond_labels, self.ranks[i])}

    def options(self, i: int) -> dict[str, Any]:
        """The ``decompose`` keywords that reproduce point ``i``."""
        return {"rank": self.rank(i)} if self.extra is None else dict(self.extra[i])

    def best_under(self, max_params: float) -> int | None:
        """Index of the least-error point with at most ``max_params`` parameters."""
        ok = np.flatnonzero(self.params <= max_params)
        if ok.size == 0:
            return None
        order = np.lexsort((self.params[ok], self.err[ok]))
        return int(ok[order[0]])


def _family(st: Structure, kind: str, params: Any, err: Any, ranks: Any, extra: Any = None) -> Family:
    return Family(st, kind, np.asarray(params, dtype=np.int64).reshape(-1), np.asarray(err, dtype=float).reshape(-1),
                  np.asarray(ranks, dtype=np.int64).reshape(len(params), -1), extra)


@functools.lru_cache(maxsize=4096)
def with_pattern(st: Structure, pattern: str) -> Structure:
    """``st.with_pattern(pattern)``, built and validated once (Structures are immutable); ``st`` itself when it
    already has that pattern."""
    return st if st.pattern == pattern else st.with_pattern(pattern)


def _tails(s2: np.ndarray, total: np.ndarray | float) -> np.ndarray:
    """``tails[..., r] = total - sum_{i < r} s2[..., i]`` for r = 0..k (never below 0)."""
    head = np.concatenate([np.zeros((*s2.shape[:-1], 1)), np.cumsum(s2, axis=-1)], axis=-1)
    return np.clip(np.asarray(total)[..., None] - head, 0.0, None)


def _rank_points(st: Structure, ranks: np.ndarray, params: np.ndarray, err2: np.ndarray, norm2: float) -> Family:
    err = np.sqrt(np.clip(err2, 0, None) / norm2) if norm2 > 0 else np.zeros(len(err2))
    return _family(st, "spectrum", params, err, ranks)


def level1(T: np.ndarray, P1: int, r: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """First split of T as (P_1, rest): the top ``r`` squared singular values and rows ``C = s Vh``."""
    M = T.reshape(P1, -1)
    m, n = M.shape
    k = min(m, n) if r is None else max(1, min(r, m, n))
    top = gram_top(M[None], k)
    assert top is not None  # a single numpy matrix
    V, ev, tall, _ = top
    V, ev = V[0], np.clip(ev[0], 0, None)
    C = np.sqrt(ev)[:, None] * V.T if tall else V.T @ M
    return ev, C


def sq_norm(W: np.ndarray) -> float:
    """``||W||^2`` as :func:`two_factor` measures it (callers scoring many grids of one W compute it once)."""
    return float(np.sum(np.abs(W.astype(np.float64)) ** 2))


def two_factor(W: np.ndarray, st: Structure, max_params: float, pattern: str, norm2: float | None = None) -> Family:
    """All ranks of an S = 2 grid (nested = chain = cp for S = 2); errors in W's precision.

    ``norm2``: :func:`sq_norm` of W, when the caller has it."""
    P1, P2 = st.factor_sizes
    s2 = memo("svals", W, {"grid": st.factor_shapes},
              lambda: {"s2": gram_eigvalsh(st.rearrange(W).reshape(P1, P2)).astype(np.float64)})["s2"]
    norm2 = sq_norm(W) if norm2 is None else norm2
    tails = _tails(s2, norm2)
    k = s2.shape[0]
    R = np.arange(1, k + 1)
    R = R[R * (P1 + P2) <= max(max_params, P1 + P2)]
    return _rank_points(with_pattern(st, pattern), R[:, None], R * (P1 + P2), tails[R], norm2)


def screen_error(W32: np.ndarray, st: Structure, max_params: float, total: float, cached: bool = False) -> float:
    """Approximate S = 2 error at the largest rank within ``max_params``, for screening grids only.

    Exact (float32 Gram) when that is cheap; otherwise a one-pass randomized range finder
    with ``min(R, SKETCH) + 8`` columns, the spectrum beyond it extrapolated flat. With ``cached``
    the spectrum is memoised (kind ``screen``): it depends on the budget only through the sketch's
    width, which is the same for every rank from :data:`SKETCH` on.
    """
    P1, P2 = st.factor_sizes
    R = int(max_params // (P1 + P2))
    if R < 1:
        return math.inf
    if total == 0:
        return 0.0
    k = min(R, SKETCH) + 8
    exact = min(P1, P2) <= 2 * k

    def spectrum() -> dict[str, np.ndarray]:
        M = st.rearrange(W32).reshape(P1, P2)
        if exact:
            return {"s2": gram_eigvalsh(M)}
        # s^2 of Q^T M for Q = orth(M Omega): the generalized eigenvalues of (Z Z^T, Y^T Y)
        from scipy.linalg import eigh

        Omega = np.random.default_rng(0).standard_normal((P2, k)).astype(M.dtype)
        Y = M @ Omega
        Z = (Y.T @ M).astype(np.float64)
        B = (Y.T @ Y).astype(np.float64)
        B[np.diag_indices(k)] += 1e-7 * max(float(np.trace(B)), 1e-300)
        return {"s2": np.clip(eigh(Z @ Z.T, B, eigvals_only=True)[::-1], 0.0, None)}

    s2 = (memo("screen", W32, {"grid": st.factor_shapes, "k": None if exact else k}, spectrum) if cached
          else spectrum())["s2"]
    if not exact:
        s2 = s2[: min(R, SKETCH)]
        s2 = np.concatenate([s2, np.full(max(R - s2.size, 0), s2[-1])])  # extrapolate beyond the sketch
    return math.sqrt(max(total - float(np.sum(s2[:R], dtype=np.float64)), 0.0) / total)


def split_screen(C: np.ndarray, s2: np.ndarray, b: tuple[int, ...], P1: int, budget: float, norm2: float,
                  n: int) -> Any:
    """Screening key of a split of ``b``: the least nested error within ``budget``, estimated.

    Every branch ``r`` is assumed to lose the same fraction of ``s_r^2`` at rank R2 as the
    :data:`SCREEN_BRANCHES` leading branches do on average (exact Gram spectra of their
    ``(P_2, P_3)`` blocks; a sketch of the leading one when the n screens would exceed
    :data:`SCREEN_FLOPS`); the level-1 tail is exact.
    """
    m = min(SCREEN_BRANCHES, C.shape[0])
    k1 = s2.shape[0]
    tail1 = _tails(s2, norm2)[1:]  # tail1[R1 - 1]
    kept1 = np.cumsum(s2)  # kept1[R1 - 1]
    R1 = np.arange(1, k1 + 1)[:, None]
    exact = 2.0 * m * math.prod(b) ** 1.5 * n <= SCREEN_FLOPS
    lead = C[:m].reshape((m, *b)) if exact else C[0].reshape(b).astype(np.float32)

    def key(g: Structure) -> float:
        Q1, Q2 = g.factor_sizes
        if exact:
            g1, g2 = g.factor_shapes
            blocks = Structure([(m, *g1), (1, *g2)]).rearrange(lead).reshape(m, Q1, Q2)
            frac = np.mean(_tails(gram_eigvalsh(blocks), s2[:m]) / np.maximum(s2[:m, None], 1e-300), axis=0)[1:]
        else:
            frac = np.array([screen_error(lead, g, R2 * (Q1 + Q2), float(s2[0])) ** 2
                             for R2 in range(1, min(Q1, Q2) + 1)])
        R2 = np.arange(1, frac.size + 1)[None, :]
        err2 = tail1[:, None] + frac[None, :] * kept1[:, None]
        ok = R1 * P1 + R1 * R2 * (Q1 + Q2) <= budget
        return float(err2[ok].min()) if ok.any() else math.inf
    return key


def _r1_values(k1: int, limit: int) -> np.ndarray:
    top = max(1, min(k1, limit))
    grid = np.unique(np.round(np.geomspace(1, top, num=min(R1_GRID, top))).astype(int))
    return grid


def three_factor(W: np.ndarray, st: Structure, max_params: float, patterns: Sequence[str],
                 first: tuple[np.ndarray, np.ndarray] | None = None, norm2: float | None = None) -> list[Family]:
    """Nested, chain and tucker families of an S = 3 grid from one level-1 split (``norm2``: ``||W||^2``)."""
    P1, P2, P3 = st.factor_sizes
    norm2 = float(np.sum(np.abs(W) ** 2)) if norm2 is None else norm2
    r1max = max(1, int(max_params // (P1 + P2 + P3)))
    s2, C = first if first is not None else level1(st.rearrange(W), P1, r1max)
    k1 = s2.shape[0]
    tail1 = _tails(s2, norm2)
    r1max = min(k1, r1max)
    blocks = C[:r1max].reshape(r1max, P2, P3)
    out = []
    if "nested" in patterns:
        out.append(_nested3(st, blocks, s2, tail1, norm2, max_params))
    if "chain" in patterns:
        out.append(_gram3(st, blocks, tail1, norm2, max_params, "chain"))
    if "tucker" in patterns:
        out.append(_gram3(st, blocks, tail1, norm2, max_params, "tucker"))
    return out


def _grid_points(st: Structure, R1: np.ndarray, params: np.ndarray, err2: np.ndarray, norm2: float,
                 max_params: float) -> Family:
    """Keep the (R1, R2) points within ``max_params`` (and R2 = 1 always); params/err2 are (len(R1), k2)."""
    keep = params <= max_params
    keep[:, 0] = True
    i, j = np.nonzero(keep)
    ranks = np.stack([R1[i], j + 1], axis=1)
    return _rank_points(st, ranks, params[i, j], err2[i, j], norm2)


def _nested3(st: Structure, blocks: np.ndarray, s2: np.ndarray, tail1: np.ndarray, norm2: float,
             max_params: float) -> Family:
    P1, P2, P3 = st.factor_sizes
    r1max = blocks.shape[0]
    branch = _tails(gram_eigvalsh(blocks), s2[:r1max])  # (r1max, k2 + 1)
    cum = np.cumsum(branch, axis=0)  # cum[R1 - 1, R2] = sum_{r < R1} tail_r(R2)
    R1 = np.arange(1, r1max + 1)
    R2 = np.arange(1, branch.shape[1])
    params = R1[:, None] * P1 + R1[:, None] * R2[None, :] * (P2 + P3)
    err2 = tail1[R1][:, None] + cum[:, 1:]
    return _grid_points(with_pattern(st, "nested"), R1, params, err2, norm2, max_params)


def _gram3(st: Structure, blocks: np.ndarray, tail1: np.ndarray, norm2: float, max_params: float,
           pattern: str) -> Family:
    P1, P2, P3 = st.factor_sizes
    R1s = _r1_values(blocks.shape[0], blocks.shape[0])
    k2 = P3 if pattern == "chain" else P2
    params = np.full((len(R1s), k2), np.iinfo(np.int64).max, dtype=np.int64)
    err2 = np.zeros((len(R1s), k2))
    for i, R1 in enumerate(R1s):
        B = blocks[:R1]
        M = B.reshape(R1 * P2, P3) if pattern == "chain" else np.moveaxis(B, 1, 0).reshape(P2, R1 * P3)
        tail = _tails(gram_eigvalsh(M), tail1[0] - tail1[R1])
        R2 = np.arange(1, tail.shape[0])
        if pattern == "chain":
            params[i, : len(R2)] = R1 * P1 + R1 * P2 * R2 + R2 * P3
        else:
            params[i, : len(R2)] = R1 * P1 + R2 * P2 + R1 * R2 * P3
        err2[i, : len(R2)] = tail1[R1] + tail[1:]
    return _grid_points(with_pattern(st, pattern), R1s, params, err2, norm2, max_params)


def leading_vectors(M: np.ndarray, R: int) -> np.ndarray:
    """The top ``min(R, m, n)`` left singular vectors of ``M`` (m, n), from the smaller Gram matrix."""
    top = gram_top(M[None], min(R, *M.shape))
    assert top is not None  # a single numpy matrix
    V, _, tall, _ = top
    if not tall:
        return V[0]
    U = M @ V[0]
    return U / np.maximum(np.linalg.norm(U, axis=0), np.finfo(float).tiny)


def fast_als(T: np.ndarray, R: int, n_iter: int, tol: float = 1e-6,
             init: Sequence[np.ndarray] | None = None, deadline: float | None = None,
             extrapolate: bool = False, info: dict[str, float] | None = None) -> list[np.ndarray]:
    """CP-ALS on T (numpy), SVD-initialised (or from ``init``, factors (P_k, R)); returns factors (P_k, R),
    weights folded in.

    Stops after ``n_iter`` sweeps or when the relative error changes by less than ``tol``
    (:func:`sekron.linalg.als.cp_als`, with the dimension-tree MTTKRP of :func:`_tree_mttkrp`).
    With ``deadline`` (a ``time.perf_counter()`` value) it also stops after the sweep that passes it.
    With ``info`` (a dict), ``info["error"]`` receives the relative error of the returned factors, from the
    last sweep (:func:`sekron.linalg.als.cp_als`).

    A tall problem, whose largest mode ``L`` is :data:`TALL` times the product ``p`` of the others or more, runs on
    its QR-compressed tensor (:func:`_compressed`): the same ALS iterates up to rounding, on ``p`` rows
    instead of ``P_L`` per sweep.
    """
    rng = np.random.default_rng(0)
    facs = [np.array(f, dtype=float) for f in init] if init is not None else []
    for k in range(T.ndim if init is None else 0):
        U = leading_vectors(np.moveaxis(T, k, 0).reshape(T.shape[k], -1), R)
        P = U.shape[0]
        if U.shape[1] < R:
            U = np.concatenate([U, rng.standard_normal((P, R - U.shape[1])) / math.sqrt(P)], axis=1)
        facs.append(U)
    norm_sq = float(np.sum(T * T))
    small = _compressed(T)
    if small is not None:
        Q, core, L = small
        mttkrp, order = _tree_mttkrp(core)
        facs[L] = Q.T @ facs[L]  # (not used: mode L is updated first, from the other factors)
        with using("numpy"):
            out = cp_als(mttkrp, facs, norm_sq, n_iter, tol, order, deadline=deadline, extrapolate=extrapolate,
                         info=info)
        out[L] = Q @ out[L]
        return out
    mttkrp, order = _tree_mttkrp(T)
    with using("numpy"):
        return cp_als(mttkrp, facs, norm_sq, n_iter, tol, order, deadline=deadline, extrapolate=extrapolate,
                      info=info)


def _compressed(T: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``(Q, C, L)`` with ``T_(L) = Q C_(L)`` (thin QR of the mode-``L`` unfolding, ``Q`` of shape
    ``(P_L, p)``) when T's largest mode ``L`` is at least :data:`TALL` times the product ``p`` of the others;
    else None.

    CP-ALS on ``C`` is CP-ALS on ``T`` with mode ``L``'s factor ``Q U_L``: the ALS update of ``U_L``
    (``T_(L) K V^{-1}``, updated first in each sweep) lies in the range of ``Q``, and the other modes see
    mode ``L`` only through ``U_L^T T_(L) = (Q^T U_L)^T C_(L)`` and ``U_L^T U_L``.
    """
    L = int(np.argmax(T.shape))
    p = T.size // T.shape[L]
    if T.shape[L] < TALL * p:
        return None
    # one QR per content within a search (the ranks of a ladder fit the same tensor)
    Q, C = shared_result("qr", np.moveaxis(T, L, 0).reshape(T.shape[L], p), np.linalg.qr)
    core = np.ascontiguousarray(np.moveaxis(C.reshape((p, *(d for k, d in enumerate(T.shape) if k != L))), 0, L))
    if int(np.argmax(core.shape)) != L:  # another mode as long as p (the others of size 1): the plain tree
        return None
    return Q, core, L


def _khatri_rao(facs: Sequence[np.ndarray]) -> np.ndarray:
    """Column-wise Kronecker product of factors (Q_j, R), rows in C order:
    ``K[(q_0, .., q_m), r] = prod_j f_j[q_j, r]``."""
    K = facs[0]
    R = K.shape[1]
    for f in facs[1:]:
        K = (K[:, None, :] * f[None, :, :]).reshape(-1, R)
    return K


class _TreeMTTKRP:
    """Dimension-tree MTTKRP of a real T, for :func:`sekron.linalg.als.cp_als`; ``order``: the mode order it
    wants, the largest mode L first.

    Mode L's MTTKRP is one matrix product, ``T_(L) K`` with the Khatri-Rao product ``K`` of the other
    factors. ``X = A_L^T T_(L)``, formed once after ``A_L`` is updated, serves every other mode's MTTKRP
    (a batched product with the Khatri-Rao product of the remaining factors). ``X`` is linear in ``A_L``,
    so the extrapolated factors of an ALS sweep get theirs as the same combination of the two ``X`` they
    lie between (:meth:`extrapolated`), not from another product with T.
    """

    def __init__(self, T: np.ndarray) -> None:
        self.L = L = int(np.argmax(T.shape))
        self.rest = [k for k in range(T.ndim) if k != L]
        self.shapes = tuple(T.shape[j] for j in self.rest)
        self.TL = np.ascontiguousarray(np.moveaxis(T, L, 0)).reshape(T.shape[L], -1)
        self.order = [L, *self.rest]
        self._x: list[tuple[np.ndarray, np.ndarray]] = []  # (A_L, X) of the last few A_L, by identity
        # per mode k != L: its size, the modes before and after it in X, and the product of those after
        self._plan = {k: (self.shapes[i], self.rest[:i], self.rest[i + 1:], math.prod(self.shapes[i + 1:]))
                      for i, k in enumerate(self.rest)}

    def _X(self, A: np.ndarray) -> np.ndarray:
        for a, X in self._x:
            if a is A:
                return X
        return self._keep(A, (A.T @ self.TL).reshape((A.shape[1], *self.shapes)))

    def _keep(self, A: np.ndarray, X: np.ndarray) -> np.ndarray:
        self._x = [*self._x[-2:], (A, X)]
        return X

    def extrapolated(self, start: Sequence[np.ndarray], end: Sequence[np.ndarray], moved: Sequence[np.ndarray],
                     step: float) -> None:
        """``moved[L] = start[L] + step (end[L] - start[L])``: its X from theirs, when both are at hand."""
        L = self.L
        Xa = next((X for a, X in self._x if a is start[L]), None)
        Xb = next((X for a, X in self._x if a is end[L]), None)
        if Xa is not None and Xb is not None:
            self._keep(moved[L], Xa + step * (Xb - Xa))

    def __call__(self, facs: list[np.ndarray], k: int) -> np.ndarray:
        if k == self.L:
            rest = self.rest
            return self.TL @ (facs[rest[0]] if len(rest) == 1 else _khatri_rao([facs[j] for j in rest]))
        X = self._X(facs[self.L])
        R = X.shape[0]
        if len(self.rest) == 1:
            return X.reshape(R, -1).T
        # contract the modes after k, then those before it, each as one batched product with their Khatri-Rao
        # product (no copy of X to bring mode k forward)
        Pk, lead, trail, after = self._plan[k]
        Y = X
        if trail:
            K = facs[trail[0]] if len(trail) == 1 else _khatri_rao([facs[j] for j in trail])
            Y = np.matmul(X.reshape(R, -1, after), K.T[:, :, None])
        if lead:
            K = facs[lead[0]] if len(lead) == 1 else _khatri_rao([facs[j] for j in lead])
            Y = np.matmul(K.T[:, None, :], Y.reshape(R, K.shape[0], Pk))
        return Y.reshape(R, Pk).T


def _tree_mttkrp(T: np.ndarray) -> tuple[MTTKRP, list[int]]:
    """The :class:`_TreeMTTKRP` of T and the mode order it wants."""
    m = _TreeMTTKRP(T)
    return m, m.order


_ALS_BUDGET: contextvars.ContextVar[tuple[int, float] | None] = contextvars.ContextVar("sekron_als_budget",
                                                                                     default=None)


@contextlib.contextmanager
def als_budget(iters: int, flops: float) -> Iterator[None]:
    """Score cp candidates with at most ``iters`` ALS sweeps within ``flops`` while the block runs
    (instead of :data:`ALS_ITERS` and :data:`ALS_FLOPS`); the cache keys hold the sweeps used."""
    token = _ALS_BUDGET.set((int(iters), float(flops)))
    try:
        yield
    finally:
        _ALS_BUDGET.reset(token)


def _als_iters(size: int, R: int, order: int) -> int:
    """ALS sweeps within about ``ALS_FLOPS`` (at least 2, at most ``ALS_ITERS``), or the active :func:`als_budget`."""
    iters, flops = _ALS_BUDGET.get() or (ALS_ITERS, ALS_FLOPS)
    return int(min(iters, max(2, flops // max(2 * size * R * order, 1))))


def warm_start(T: np.ndarray, prev: Sequence[np.ndarray], R: int) -> list[np.ndarray]:
    """A rank-``R`` CP start from the rank-``R'`` factors ``prev`` (``R' < R``): each factor keeps its
    ``R'`` columns and gets the next leading singular vectors of its unfolding as new columns (random
    ones, seeded, beyond the unfolding's rank), which is what the SVD start would give them."""
    rng = np.random.default_rng(0)
    out = []
    for k, f in enumerate(prev):
        have = int(f.shape[1])
        U = leading_vectors(np.moveaxis(T, k, 0).reshape(T.shape[k], -1), R)[:, have:R]
        P = U.shape[0]
        if U.shape[1] < R - have:
            U = np.concatenate([U, rng.standard_normal((P, R - have - U.shape[1])) / math.sqrt(P)], axis=1)
        out.append(np.concatenate([np.asarray(f, dtype=float), U], axis=1))
    return out


def octave_ranks(size: int, st: Structure, ranks: Sequence[int]) -> tuple[list[int], int]:
    """The ranks :func:`cp_family` fits with ``octaves=True``: ``ranks`` and the octave ranks that lead to
    them, ascending; and the root rank, at and below which every fit starts from the SVD.

    The octave rank of octave ``m`` is the cp rank of ``st`` within ``size / 2**m`` parameters (the budgets
    of compress's ladder, :func:`sekron.structure_search._layer.ladder`). The root is octave
    :data:`CHAIN_ROOT`; a rank above it is warm-started from the octave rank below it, down to the root,
    so its fit depends on the rank only, never on which others were asked for.

    Examples
    --------
    >>> st = Structure([(4, 1, 1), (1, 4, 1), (1, 1, 8)], "cp")
    >>> octave_ranks(128, st, [2, 4])
    ([1, 2, 4], 0)
    """
    s = sum(st.factor_sizes)
    root = int(size * 2.0 ** -CHAIN_ROOT // s)
    want = sorted({int(r) for r in ranks if r >= 1})
    warm = [r for r in want if r > root]
    lead = set()
    for m in range(CHAIN_ROOT, -1, -1):
        r = int(size * 2.0 ** -m // s)
        if warm and 1 <= r < warm[-1]:
            lead.add(r)
    return sorted(set(want) | lead), root


def cp_family(W: np.ndarray, st: Structure, ranks: Sequence[int], octaves: bool = False) -> Family:
    """CP-ALS at the given ranks; the factors go to ``decompose`` as its init, so it reproduces them.

    The smallest rank starts from the SVD; each larger one from the fit of the rank before it
    (:func:`warm_start`), in as many sweeps: on real kernels that mostly ends well below a cold
    start's error (docs/speed.md). A fit's cache key holds the chain of ranks it was started from.

    With ``octaves`` (compress's ladder, whose budgets are the dense size over powers of two) the chain
    is the one of :func:`octave_ranks` instead: the fits at and below the root rank start from the SVD,
    and a larger rank from the octave rank below it (fitted when it was not asked for, and not returned).
    A fit then depends only on its rank, so compressing again at a ratio an octave away finds the
    ranks that the two ladders share in the cache.
    """
    from tensorly.cp_tensor import CPTensor

    st = st.with_pattern("cp") if st.pattern != "cp" else st
    T = st.rearrange(W)
    # the fit runs on T with its modes by decreasing size: two grids whose factors are the same modes in
    # another order (an S = 3 grid and a whole-mode one, often) are one CP problem, fitted once (cached)
    perm = sorted(range(T.ndim), key=lambda k: -T.shape[k])
    Tc = np.ascontiguousarray(np.transpose(T, perm))
    params: list[int] = []
    err: list[float] = []
    opts: list[dict[str, Any]] = []
    got: list[list[int]] = []
    chain: list[list[int]] = []  # (rank, sweeps) of the fits this one is warm-started from
    prev: list[np.ndarray] | None = None  # factors of the previous rank, in Tc's mode order

    def in_st_order(canon: Sequence[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.empty(0)] * T.ndim
        for i, k in enumerate(perm):
            out[k] = np.array(canon[i])
        return out

    def svd_start(R: int) -> list[np.ndarray]:
        """:func:`fast_als`'s SVD start at a rank ``R <= root``: the leading vectors of each unfolding at the
        root rank (memoised, kind ``cpstart``), their first ``R``. A fit below the root then needs no
        eigen-decomposition of the unfoldings, which a second compress would otherwise redo for it."""
        top = memo("cpstart", Tc, {"R": root}, lambda: {
            f"u{k}": leading_vectors(np.moveaxis(Tc, k, 0).reshape(Tc.shape[k], -1), root) for k in range(Tc.ndim)})
        rng = np.random.default_rng(0)  # the padding of fast_als's own start
        out = []
        for k in range(Tc.ndim):
            U = top[f"u{k}"][:, :R]
            if U.shape[1] < R:
                P = U.shape[0]
                U = np.concatenate([U, rng.standard_normal((P, R - U.shape[1])) / math.sqrt(P)], axis=1)
            out.append(U)
        return out

    wanted = {int(r) for r in ranks if r >= 1}
    order, root = octave_ranks(W.size, st, ranks) if octaves and st.n_factors > 2 else (sorted(wanted), 0)
    for R in order:
        if R <= root:  # octave chains restart at the root
            prev, chain = None, []
        n_iter = 0 if st.n_factors == 2 else _als_iters(T.size, R, T.ndim)

        def fit(R: int = R, n_iter: int = n_iter, prev: list[np.ndarray] | None = prev) -> dict[str, Any]:
            if st.n_factors == 2:
                options: dict[str, Any] = {"rank": R}
            else:
                start = (warm_start(Tc, prev, R) if prev is not None else svd_start(R) if R <= root else None)
                info: dict[str, float] = {}
                canon = fast_als(Tc, R, n_iter, init=start, extrapolate=n_iter >= EXTRAPOLATE_FROM, info=info)
                if info.get("error", 0.0) >= REPLAY_BELOW:  # the fit's own error: no reconstruction needed
                    return {"params": st.n_params({"a": R}), "err": info["error"], "rank": [R]} | {
                        f"f{k}": f for k, f in enumerate(canon)}
                options = {"rank": R, "init": CPTensor((np.ones(R), in_st_order(canon))), "n_iter_max": 0}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # tensorly's SVD init clipping its n_eigenvecs
                sk, e = decompose(W, st, return_error=True, **options)
            out = {"params": sk.n_params, "err": e, "rank": list(sk.rank.values())}
            return out | ({} if st.n_factors == 2 else {f"f{k}": f for k, f in enumerate(canon)})

        if st.n_factors == 2:
            got_R = memo("cp", W, {"grid": st.factor_shapes, "R": R, "n_iter": n_iter}, fit)
            options = {"rank": R}
        else:
            key: dict[str, Any] = {"R": R, "n_iter": n_iter, "warm": list(chain),
                                   "extrapolate": n_iter >= EXTRAPOLATE_FROM}
            got_R = memo("cp", Tc, key | ({"start": root} if R < root else {}), fit)
            prev = [np.array(got_R[f"f{k}"]) for k in range(T.ndim)]
            options = {"rank": R, "init": CPTensor((np.ones(R), in_st_order(prev))), "n_iter_max": 0}
            chain.append([R, n_iter])
        if R not in wanted:  # a lead fit of the octave chain
            continue
        params.append(int(got_R["params"]))
        err.append(float(got_R["err"]))
        opts.append(options)
        got.append([int(r) for r in got_R["rank"]])
    return _family(st, "als", params, err, got, opts)


def caps_family(W: np.ndarray, st: Structure, budgets: Sequence[float], tols: Sequence[float] | None = None,
                spectra: bl.Spectra | None = None) -> Family:
    """Rank caps for the TT / TR / Tucker patterns: a spectral rank profile per ``t``, scaled to each budget.

    The profiles come from the unfolding spectra (:mod:`sekron.structure_search._baselines`, no
    decomposition); each scaled profile is then decomposed once, ``decompose(W, st,
    rank=caps)``, which gives the exact error from the discarded singular values.
    """
    sp = spectra if spectra is not None else bl.Spectra(W)
    ladder = not (tols is None and len(budgets) == 1)
    if not ladder:  # one budget (search): the profile matched to it, and a second one
        bases = [bl.matched_profile(sp, st, budgets[0])]
        bases += [p for p in bl.profiles(sp, st, SECOND_PROFILE_TOLS) if p not in bases]
    else:  # a ladder (compress): two profiles, for a finer frontier (memoised: the spectra are not needed again)
        ts = list(LADDER_PROFILE_TOLS if tols is None else tols)
        got = memo("profiles", W, {"structure": st.to_dict(), "tols": ts},
                   lambda: {"p": np.array([[p[c] for c in st.bond_labels] for p in bl.profiles(sp, st, ts)],
                                          dtype=np.int64)})
        bases = [{c: int(r) for c, r in zip(st.bond_labels, row)} for row in got["p"]]
    params: list[int] = []
    err: list[float] = []
    opts: list[dict[str, Any]] = []
    ranks: list[list[int]] = []
    done: set[tuple[tuple[str, int], ...]] = set()
    for base in bases:
        for budget in budgets:
            if ladder:  # memoised: a pure function of (st, base, budget), but a bisection in Python
                def fitted(base: dict[str, int] = base, budget: float = budget) -> dict[str, np.ndarray]:
                    caps = bl.fit_caps(st, base, budget)
                    return {"caps": np.array([caps[c] for c in st.bond_labels], dtype=np.int64)}

                row = memo("capsfit", W, {"structure": st.to_dict(), "base": base, "budget": budget}, fitted)
                caps = {c: int(r) for c, r in zip(st.bond_labels, row["caps"])}
            else:
                caps = bl.fit_caps(st, base, budget)
            key = tuple(sorted(caps.items()))
            if key in done:
                continue
            done.add(key)

            def fit(caps: dict[str, int] = caps) -> dict[str, Any]:
                options, sk, e = bl.reproducible(W, st, caps)
                return {"options_rank": [options["rank"][c] for c in st.bond_labels], "params": sk.n_params,
                        "err": e, "rank": list(sk.rank.values())}

            got = memo("caps", W, {"structure": st.to_dict(), "caps": caps}, fit)
            opts.append({"rank": {c: int(r) for c, r in zip(st.bond_labels, got["options_rank"])}})
            params.append(int(got["params"]))
            err.append(float(got["err"]))
            ranks.append([int(r) for r in got["rank"]])
    return _family(st, "caps", params, err, ranks, opts)
