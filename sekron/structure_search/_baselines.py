"""Rank caps for the axis-aligned TT / TR / Tucker baselines of :func:`sekron.search`.

A baseline's rank *profile* (the shape of its rank vector) comes from the spectra of the
weight's unfoldings alone (float32 Gram matrices, computed once and shared by TT, TR and
Tucker): for a target ``t``, each bond takes the smallest rank whose unfolding tail is
within ``t^2 ||W||^2 / n_bonds``, bounded by what the sequential algorithm can reach.
The profile is then scaled down to each budget, and one ``decompose(W, st, rank=caps)``
per point gives the exact error (the discarded singular values of the real sweep), so
the recorded keywords reproduce it. Only the profile is heuristic; no error is.
For :func:`sekron.search` (one budget) the target ``t`` is bisected so that the
profile just overshoots the budget (:func:`matched_profile`); it is then scaled down and
the leftover parameters filled one bond at a time (:func:`fit_caps`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..decomposition import decompose
from ..linalg.svd import gram_eigvalsh
from ..structure import Structure, count_params


class Spectra:
    """Squared singular values of W's unfoldings, computed lazily in float32 and cached.

    ``prefix(k)``: the unfolding ``(d_1..d_k | d_{k+1}..d_N)``; ``mode(k)``: ``(d_k | rest)``.
    """

    def __init__(self, W: np.ndarray) -> None:
        self.W32 = np.ascontiguousarray(W, dtype=np.float32)
        self.norm2 = float(np.sum(W.astype(np.float64) ** 2))
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def prefix(self, k: int) -> np.ndarray:
        key = ("prefix", k)
        if key not in self._cache:
            d = self.W32.shape
            self._cache[key] = gram_eigvalsh(self.W32.reshape(math.prod(d[:k]), -1), np.float64)
        return self._cache[key]

    def mode(self, k: int) -> np.ndarray:
        if k == 0:
            return self.prefix(1)
        key = ("mode", k)
        if key not in self._cache:
            M = np.moveaxis(self.W32, k, 0).reshape(self.W32.shape[k], -1)
            self._cache[key] = gram_eigvalsh(M, np.float64)
        return self._cache[key]

    def rank_for(self, s2: np.ndarray, t: float, n_bonds: int) -> int:
        """Smallest rank whose tail of ``s2`` is within ``t^2 ||W||^2 / n_bonds`` (at least 1)."""
        tails = self.norm2 - np.concatenate([[0.0], np.cumsum(s2)])
        ok = np.flatnonzero(tails <= t * t * self.norm2 / n_bonds)
        return max(1, int(ok[0]) if ok.size else s2.size)


def _tt_profile(sp: Spectra, d: tuple[int, ...], t: float) -> list[int]:
    n = len(d) - 1
    ranks, prev = [], 1
    for k in range(1, n + 1):
        r = min(sp.rank_for(sp.prefix(k), t, n), prev * d[k - 1], math.prod(d[k:]))
        ranks.append(max(1, r))
        prev = ranks[-1]
    return ranks


def _split(R: int) -> tuple[int, int]:
    r_z = max(1, math.isqrt(R))
    return r_z, -(-R // r_z)


def _tr_profile(sp: Spectra, d: tuple[int, ...], t: float) -> list[int]:
    tt = _tt_profile(sp, d, t)
    r_z, r_a = _split(tt[0])
    ranks, prev = [r_z, r_a], r_a
    for k in range(2, len(d)):
        r = min(tt[k - 1] * r_z, prev * d[k - 1], math.prod(d[k:]) * r_z)
        ranks.append(max(1, r))
        prev = ranks[-1]
    return ranks


def _tucker_profile(sp: Spectra, d: tuple[int, ...], t: float) -> list[int]:
    n = len(d)
    ranks = [min(sp.rank_for(sp.mode(k), t, n), d[k]) for k in range(n)]
    for k in range(n):  # ST-HOSVD reaches at most the product of the other (truncated) sizes
        others = [ranks[j] if j < k else d[j] for j in range(n) if j != k]
        ranks[k] = max(1, min(ranks[k], math.prod(others)))
    return ranks


PROFILES: dict[str, Callable[[Spectra, tuple[int, ...], float], list[int]]] = {
    "chain": _tt_profile, "ring": _tr_profile, "tucker": _tucker_profile}


def _scaled(base: dict[str, int], alpha: float) -> dict[str, int]:
    return {c: max(1, math.floor(r * alpha)) for c, r in base.items()}


def fit_caps(st: Structure, base: dict[str, int], budget: float) -> dict[str, int]:
    """``base`` scaled by the largest factor in [0, 1] (bisection) that fits ``budget``, then filled.

    The fill raises the least-filled bond (relative to ``base``) by one while the budget allows.
    """
    if st.n_params(base) <= budget:  # validates base: every bond a size >= 1, so that the rest can count fast
        return dict(base)
    labels, sizes = st.labels, st.factor_sizes

    def n_params(rank: dict[str, int]) -> int:  # st.n_params for such complete ranks, without revalidating
        return count_params(labels, sizes, rank)

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if n_params(_scaled(base, mid)) <= budget else (lo, mid)
    caps = _scaled(base, lo)
    grown = True
    while grown:
        grown = False
        for c in sorted(base, key=lambda c: caps[c] / base[c]):
            trial = {**caps, c: caps[c] + 1}
            if caps[c] < base[c] and n_params(trial) <= budget:
                caps, grown = trial, True
                break
    return caps


def reproducible(W: np.ndarray, st: Structure, caps: dict[str, int]) -> tuple[dict[str, Any], Any, float]:
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


def profile(sp: Spectra, st: Structure, t: float) -> dict[str, int]:
    """The base rank profile of ``st`` (chain, ring or tucker) for the target ``t``."""
    d = tuple(int(x) for x in sp.W32.shape)
    return dict(zip(st.bond_labels, PROFILES[str(st.pattern)](sp, d, t)))


def profiles(sp: Spectra, st: Structure, tols: Sequence[float]) -> list[dict[str, int]]:
    """One base rank profile per target in ``tols`` (duplicates removed)."""
    out: list[dict[str, int]] = []
    for t in tols:
        prof = profile(sp, st, t)
        if prof not in out:
            out.append(prof)
    return out


def matched_profile(sp: Spectra, st: Structure, budget: float) -> dict[str, int]:
    """The profile whose target ``t`` (bisected, geometrically) just overshoots ``budget``.

    :func:`fit_caps` then scales it into the budget; when even the full profile fits, it is returned.
    """
    full = profile(sp, st, 0.0)
    if st.n_params(full) <= budget:
        return full
    lo, hi = 1e-6, 1.0  # want params(lo) > budget >= params(hi)
    if st.n_params(profile(sp, st, lo)) <= budget:
        return full
    if st.n_params(profile(sp, st, hi)) > budget:
        return profile(sp, st, hi)
    for _ in range(24):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if st.n_params(profile(sp, st, mid)) > budget else (lo, mid)
    return profile(sp, st, lo)
