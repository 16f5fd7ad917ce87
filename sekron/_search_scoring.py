"""Scoring of candidate structures for :func:`sekron.search.search`, one *family* at a time.

A family is one (structure, pattern) with a table of rank choices, each with its exact
parameter count and its relative error. How the errors are obtained:

- ``spectrum`` (S = 2 any pattern, S = 3 nested / chain / tucker): from singular
  values only, never a reconstruction. With rank caps (and no ``tol``) ``decompose``
  keeps ``min(cap, k)`` terms on every branch, and its squared error is the sum of the
  discarded squared singular values (MATH.md section 4). S = 2: the tail of the
  spectrum of ``R(W)`` as a ``(P_1, P_2)`` matrix. S = 3: the level-1 split
  ``(P_1 | P_2 P_3)`` gives ``s`` and the carried rows ``C_r = s_r v_r``; then
  nested adds each branch's tail of ``C_r`` as a ``(P_2, P_3)`` matrix, chain (TT-SVD)
  the tail of the stacked ``(R_1 P_2, P_3)`` matrix and tucker (ST-HOSVD) the tail of
  ``(P_2, R_1 P_3)``; their Gram matrices are running sums over ``r < R_1``.
- ``als`` (cp with S >= 3): a CP-ALS on T (:func:`fast_als`, at most :data:`ALS_ITERS`
  sweeps within :data:`ALS_FLOPS`); its factors become ``decompose``'s ``init`` with
  ``n_iter_max=0``, so ``decompose`` returns exactly them and their true error.
- ``caps`` (any SVD pattern and S, used for the axis-aligned TT / TR / Tucker baselines):
  the ranks ``decompose(W, st, tol=t)`` picks for a few ``t``, scaled down to the budget,
  then ``decompose(W, st, rank=caps)``; its error is again the spectrum's.

Every point carries the ``decompose`` keywords that reproduce it exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .decomposition import decompose
from .structure import Structure

#: most ALS sweeps used when scoring cp candidates
ALS_ITERS = 60
#: flop allowance of one cp candidate's ALS (fewer sweeps on large weights)
ALS_FLOPS = 1.5e9
#: columns of the randomized sketch that screens large S = 2 grids
SKETCH = 32
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


def sq_svals(M: np.ndarray) -> np.ndarray:
    """Squared singular values of a batch ``(B, m, n)`` (or one matrix), decreasing, via the smaller Gram."""
    single = M.ndim == 2
    M = M[None] if single else M
    m, n = M.shape[-2:]
    G = M @ np.swapaxes(M, -1, -2).conj() if m <= n else np.swapaxes(M, -1, -2).conj() @ M
    ev = np.clip(np.linalg.eigvalsh(G)[..., ::-1].real, 0.0, None)
    return ev[0] if single else ev


def _tails(s2: np.ndarray, total: np.ndarray | float) -> np.ndarray:
    """``tails[..., r] = total - sum_{i < r} s2[..., i]`` for r = 0..k (never below 0)."""
    head = np.concatenate([np.zeros((*s2.shape[:-1], 1)), np.cumsum(s2, axis=-1)], axis=-1)
    return np.clip(np.asarray(total)[..., None] - head, 0.0, None)


def _rank_points(st: Structure, ranks: np.ndarray, params: np.ndarray, err2: np.ndarray, norm2: float) -> Family:
    err = np.sqrt(np.clip(err2, 0, None) / norm2) if norm2 > 0 else np.zeros(len(err2))
    return _family(st, "spectrum", params, err, ranks)


def level1(T: np.ndarray, P1: int, r: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """First split of T as (P_1, rest): the top ``r`` squared singular values and rows ``C = s Vh``."""
    from scipy.linalg import eigh

    M = T.reshape(P1, -1)
    m, n = M.shape
    k = min(m, n) if r is None else max(1, min(r, m, n))
    G = M @ M.T if m <= n else M.T @ M
    size = G.shape[0]
    ev, V = eigh(G, subset_by_index=[size - k, size - 1])
    ev, V = np.clip(ev[::-1], 0, None), V[:, ::-1]
    C = V.T @ M if m <= n else np.sqrt(ev)[:, None] * V.T
    return ev, C


def two_factor(W: np.ndarray, st: Structure, max_params: float, pattern: str) -> Family:
    """All ranks of an S = 2 grid (nested = chain = cp for S = 2); errors in W's precision."""
    P1, P2 = st.factor_sizes
    s2 = sq_svals(st.rearrange(W).reshape(P1, P2)).astype(np.float64)
    norm2 = float(np.sum(np.abs(W.astype(np.float64)) ** 2))
    tails = _tails(s2, norm2)
    k = s2.shape[0]
    R = np.arange(1, k + 1)
    R = R[R * (P1 + P2) <= max(max_params, P1 + P2)]
    return _rank_points(st.with_pattern(pattern), R[:, None], R * (P1 + P2), tails[R], norm2)


def screen_error(W32: np.ndarray, st: Structure, max_params: float) -> float:
    """Approximate S = 2 error at the largest rank within ``max_params``, for screening grids only.

    Exact (float32 Gram) when that is cheap; otherwise a one-pass randomized range finder
    with ``min(R, SKETCH) + 8`` columns, the spectrum beyond it extrapolated flat.
    """
    P1, P2 = st.factor_sizes
    R = int(max_params // (P1 + P2))
    if R < 1:
        return math.inf
    M = st.rearrange(W32).reshape(P1, P2)
    total = float(np.sum(M.astype(np.float64) ** 2))
    if total == 0:
        return 0.0
    k = min(R, SKETCH) + 8
    if min(P1, P2) <= 2 * k:
        s2 = sq_svals(M)
    else:
        rng = np.random.default_rng(0)
        Q, _ = np.linalg.qr(M @ rng.standard_normal((P2, k)).astype(np.float32))
        s2 = sq_svals(Q.T @ M)[: min(R, SKETCH)]
        s2 = np.concatenate([s2, np.full(max(R - s2.size, 0), s2[-1])])  # extrapolate beyond the sketch
    return math.sqrt(max(total - float(np.sum(s2[:R], dtype=np.float64)), 0.0) / total)


def _r1_values(k1: int, limit: int) -> np.ndarray:
    top = max(1, min(k1, limit))
    grid = np.unique(np.round(np.geomspace(1, top, num=min(R1_GRID, top))).astype(int))
    return grid


def three_factor(W: np.ndarray, st: Structure, max_params: float, patterns: Sequence[str],
                 first: tuple[np.ndarray, np.ndarray] | None = None) -> list[Family]:
    """Nested, chain and tucker families of an S = 3 grid from one level-1 split."""
    P1, P2, P3 = st.factor_sizes
    norm2 = float(np.sum(np.abs(W) ** 2))
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
    branch = _tails(sq_svals(blocks), s2[:r1max])  # (r1max, k2 + 1)
    cum = np.cumsum(branch, axis=0)  # cum[R1 - 1, R2] = sum_{r < R1} tail_r(R2)
    R1 = np.arange(1, r1max + 1)
    R2 = np.arange(1, branch.shape[1])
    params = R1[:, None] * P1 + R1[:, None] * R2[None, :] * (P2 + P3)
    err2 = tail1[R1][:, None] + cum[:, 1:]
    return _grid_points(st.with_pattern("nested"), R1, params, err2, norm2, max_params)


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
        tail = _tails(sq_svals(M), tail1[0] - tail1[R1])
        R2 = np.arange(1, tail.shape[0])
        if pattern == "chain":
            params[i, : len(R2)] = R1 * P1 + R1 * P2 * R2 + R2 * P3
        else:
            params[i, : len(R2)] = R1 * P1 + R2 * P2 + R1 * R2 * P3
        err2[i, : len(R2)] = tail1[R1] + tail[1:]
    return _grid_points(st.with_pattern(pattern), R1s, params, err2, norm2, max_params)


def _mttkrp(T: np.ndarray, facs: list[np.ndarray], k: int) -> np.ndarray:
    """``T`` contracted with every factor but ``k`` on the shared rank index: (P_k, R).

    The largest other mode goes first, as one matmul; the rest are contracted with the rank
    index kept as a batch, so no Khatri-Rao product of the other factors is ever formed.
    """
    R = facs[0].shape[1]
    others = sorted((j for j in range(T.ndim) if j != k), key=lambda j: -T.shape[j])
    first = others[0]
    X = (facs[first].T @ np.moveaxis(T, first, 0).reshape(T.shape[first], -1))
    modes = [j for j in range(T.ndim) if j != first]
    X = X.reshape((R, *(T.shape[j] for j in modes)))
    for j in others[1:]:
        axis = 1 + modes.index(j)
        X = np.moveaxis(X, axis, -1)
        X = np.einsum("r...j,jr->r...", X, facs[j])
        modes.remove(j)
    return X.reshape(R, T.shape[k]).T


def fast_als(T: np.ndarray, R: int, n_iter: int, tol: float = 1e-6) -> list[np.ndarray]:
    """CP-ALS on T (numpy), SVD-initialised; returns factors (P_k, R), weights folded in.

    Stops after ``n_iter`` sweeps or when the relative error changes by less than ``tol``.
    """
    rng = np.random.default_rng(0)
    unfold = [np.moveaxis(T, k, 0).reshape(T.shape[k], -1) for k in range(T.ndim)]
    facs = []
    for M in unfold:
        P = M.shape[0]
        U = np.linalg.svd(M @ M.T)[0][:, :R] if P <= M.shape[1] else np.linalg.svd(M, full_matrices=False)[0][:, :R]
        if U.shape[1] < R:
            U = np.concatenate([U, rng.standard_normal((P, R - U.shape[1])) / math.sqrt(P)], axis=1)
        facs.append(U)
    norm2, last = float(np.sum(T * T)), np.inf
    for _ in range(n_iter):
        for k in range(T.ndim):
            others = [f for j, f in enumerate(facs) if j != k]
            G = np.ones((R, R))
            for f in others:
                G *= f.T @ f
            M = _mttkrp(T, facs, k)
            G[np.diag_indices(R)] += 1e-12 * max(float(np.trace(G)), 1e-300)
            facs[k] = np.linalg.solve(G, M.T).T
        err2 = norm2 - 2 * float(np.sum(M * facs[-1])) + float(np.sum(G * (facs[-1].T @ facs[-1])))
        err = math.sqrt(max(err2, 0.0) / norm2) if norm2 > 0 else 0.0
        if abs(last - err) < tol:
            break
        last = err
    return facs


def _als_iters(size: int, R: int, order: int) -> int:
    """ALS sweeps within about ``ALS_FLOPS`` (at least 2, at most ``ALS_ITERS``)."""
    return int(min(ALS_ITERS, max(2, ALS_FLOPS // max(2 * size * R * order, 1))))


def cp_family(W: np.ndarray, st: Structure, ranks: Sequence[int]) -> Family:
    """CP-ALS at the given ranks; the factors go to ``decompose`` as its init, so it reproduces them."""
    from tensorly.cp_tensor import CPTensor

    st = st.with_pattern("cp") if st.pattern != "cp" else st
    T = st.rearrange(W)
    params: list[int] = []
    err: list[float] = []
    opts: list[dict[str, Any]] = []
    got: list[list[int]] = []
    for R in sorted(set(int(r) for r in ranks if r >= 1)):
        if st.n_factors == 2:
            options: dict[str, Any] = {"rank": R}
        else:
            facs = fast_als(T, R, _als_iters(T.size, R, T.ndim))
            options = {"rank": R, "init": CPTensor((np.ones(R), facs)), "n_iter_max": 0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # tensorly's SVD init clipping its n_eigenvecs
            sk, e = decompose(W, st, return_error=True, **options)
        params.append(sk.n_params)
        err.append(e)
        opts.append(options)
        got.append(list(sk.rank.values()))
    return _family(st, "als", params, err, got, opts)


def _params(st: Structure, rank: dict[str, int]) -> int:
    return sum(math.prod(rank[c] for c in lab) * P for lab, P in zip(st.labels, st.factor_sizes))


def _scaled(base: dict[str, int], alpha: float) -> dict[str, int]:
    return {c: max(1, math.floor(r * alpha)) for c, r in base.items()}


def _reproducible(W: np.ndarray, st: Structure, caps: dict[str, int]) -> tuple[dict[str, Any], Any, float]:
    """``decompose(W, st, rank=caps)`` and the keywords that reproduce it without a clipping warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        sk, e = decompose(W, st, rank=caps, return_error=True)
    if not any("clipped" in str(w.message) for w in caught):
        return {"rank": caps}, sk, e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sk2, e2 = decompose(W, st, rank=sk.rank, return_error=True)
    if sk2.n_params == sk.n_params and abs(e2 - e) <= 1e-12:
        return {"rank": sk.rank}, sk, e
    return {"rank": caps}, sk, e


def caps_family(W: np.ndarray, st: Structure, budgets: Sequence[float], tols: Sequence[float] | None = None
                ) -> Family:
    """Rank caps for any SVD pattern and S: the ranks ``decompose(tol=t)`` picks, scaled to each budget.

    For every ``t`` the ranks of ``decompose(W, st, tol=t)`` are multiplied by the largest
    factor that fits each budget; ``decompose(W, st, rank=caps)`` then gives the exact
    error from the discarded singular values.
    """
    if tols is None:  # one budget (search): one rank profile; a ladder (compress): two, for a finer frontier
        tols = (0.3,) if len(budgets) == 1 else (0.1, 0.4)
    params: list[int] = []
    err: list[float] = []
    opts: list[dict[str, Any]] = []
    ranks: list[list[int]] = []
    done: set[tuple[tuple[str, int], ...]] = set()
    for t in tols:
        base = decompose(W, st, tol=t).rank
        for budget in budgets:
            lo, hi = 0.0, 1.0
            if _params(st, base) > budget:
                for _ in range(30):
                    mid = 0.5 * (lo + hi)
                    lo, hi = (mid, hi) if _params(st, _scaled(base, mid)) <= budget else (lo, mid)
            else:
                lo = 1.0
            caps = _scaled(base, lo)
            key = tuple(sorted(caps.items()))
            if key in done:
                continue
            done.add(key)
            options, sk, e = _reproducible(W, st, caps)
            params.append(sk.n_params)
            err.append(e)
            opts.append(options)
            ranks.append(list(sk.rank.values()))
    return _family(st, "caps", params, err, ranks, opts)
