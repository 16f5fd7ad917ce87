"""Shared machinery of the real-weights benchmarks: budgets, baselines, the SeKron choice.

For one conv kernel W and a parameter budget B (= W.size / ratio):

- ``sekron_baseline(W, method, B)``: TT, TR, CP or Tucker through sekron's axis-aligned
  structures (``Structure.tt/tr/cp/tucker``) with the largest ranks whose parameter count
  fits B (rank rules below);
- ``tensorly_baseline(W, method, rank)``: the same format computed directly by
  ``tensorly.decomposition`` with the bond sizes that sekron ended up with, so both have
  the same parameter count;
- ``sekron_best(W, B)``: SeKron with a searched structure. ``sekron.search`` is
  used when it exists (non-axis-aligned candidates only, so that SeKron is not credited
  with the classical formats it contains); otherwise a fallback search (below).

Rank rules, one per format (largest that fits the budget):

- tt: one cap r on every bond (tensorly's int-rank convention, clipped by the unfoldings);
- tr: one cap r on every bond, with r*r <= d_1 so that tensorly's first unfolding is valid;
- cp: R = floor(B / sum(d));
- tucker: for each spatial rank s in {1, 2, 3} (and 1..d for other kernels), channel ranks
  proportional to the channel sizes, the largest that fit; the candidate with the least
  error wins.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorly as tl

import sekron
from sekron import Structure

METHODS = ("tt", "tr", "cp", "tucker")
RATIOS = (4, 8, 16)
#: CP-ALS settings shared by sekron and tensorly (tensorly's defaults: SVD init, 100 sweeps)
ALS = {"n_iter_max": 100, "init": "svd"}


@dataclass
class Fit:
    """One approximation: relative error, parameter count, a description, seconds taken."""

    error: float
    params: int
    info: str
    seconds: float = 0.0
    approx: np.ndarray | None = field(default=None, repr=False)  # the reconstruction W_hat


def rel_error(W: np.ndarray, approx: np.ndarray) -> float:
    return float(np.linalg.norm(W - approx) / np.linalg.norm(W))


def _decompose(W: np.ndarray, st: Structure, rank: Any) -> tuple[Any, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rank caps above the reachable size are clipped
        sk = sekron.decompose(W, st, rank=rank, random_state=0, **(ALS if st.pattern == "cp" else {}))
    return sk, rel_error(W, np.asarray(sk.to_tensor()))


# --- parameter counts of the classical formats, from the bond caps -------------------
def tt_params(shape: tuple[int, ...], r: int) -> int:
    ranks = [1]
    for k in range(len(shape) - 1):
        ranks.append(min(r, ranks[-1] * shape[k], math.prod(shape[k + 1:])))
    ranks.append(1)
    return sum(ranks[k] * shape[k] * ranks[k + 1] for k in range(len(shape)))


def tr_params(shape: tuple[int, ...], r: int) -> int:
    return r * r * sum(shape)  # an upper bound; exact when no unfolding clips r


def tucker_params(shape: tuple[int, ...], ranks: tuple[int, ...]) -> int:
    return sum(d * r for d, r in zip(shape, ranks)) + math.prod(ranks)


def _largest(fits: Callable[[int], bool], hi: int) -> int:
    """Largest r in [1, hi] with fits(r) (fits is monotone), 0 if none."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def tucker_candidates(shape: tuple[int, ...], budget: int) -> Iterator[tuple[int, ...]]:
    """Tucker ranks that fit the budget: every small spatial rank, channels scaled to fit."""
    chan, spatial = shape[:2], shape[2:]
    for s in range(1, max(spatial, default=1) + 1):
        sr = tuple(min(s, d) for d in spatial)

        def ranks(t: int, sr: tuple[int, ...] = sr) -> tuple[int, ...]:
            return tuple(max(1, min(d, round(t * d / max(chan)))) for d in chan) + sr

        t = _largest(lambda t, ranks=ranks: tucker_params(shape, ranks(t)) <= budget, max(chan))
        if t:
            yield ranks(t)


def sekron_baseline(W: np.ndarray, method: str, budget: int) -> tuple[Fit, dict[str, int]]:
    """A classical format through sekron's axis-aligned structure, best ranks within ``budget``."""
    shape = tuple(W.shape)
    t0 = time.perf_counter()
    st = getattr(Structure, method)(shape)
    if method == "tucker":
        best: tuple[Fit, dict[str, int]] | None = None
        for ranks in tucker_candidates(shape, budget):
            sk, err = _decompose(W, st, list(ranks))
            if best is None or err < best[0].error:
                best = (Fit(err, sk.n_params, f"ranks {list(ranks)}", approx=np.asarray(sk.to_tensor())), sk.rank)
        if best is None:
            raise ValueError(f"no Tucker ranks fit {budget} parameters for shape {shape}")
        best[0].seconds = time.perf_counter() - t0
        return best
    if method == "tt":
        r = _largest(lambda r: tt_params(shape, r) <= budget, max(shape) ** 2)
        rank: Any = r
    elif method == "tr":
        r = _largest(lambda r: tr_params(shape, r) <= budget and r * r <= shape[0], shape[0])
        rank = r
    else:
        rank = budget // sum(shape)
    if not rank:
        raise ValueError(f"no {method} rank fits {budget} parameters for shape {shape}")
    sk, err = _decompose(W, st, rank)
    return Fit(err, sk.n_params, f"rank {rank}", time.perf_counter() - t0, np.asarray(sk.to_tensor())), sk.rank


# --- the same formats straight from tensorly.decomposition ---------------------------
def _tl_tt(W: np.ndarray, r: dict[str, int]) -> tuple[np.ndarray, int]:
    from tensorly.decomposition import tensor_train

    tt = tensor_train(W, [1, *r.values(), 1])
    return np.asarray(tl.tt_to_tensor(tt)), sum(f.size for f in tt.factors)


def _tl_tr(W: np.ndarray, r: dict[str, int]) -> tuple[np.ndarray, int]:
    from tensorly.decomposition import tensor_ring

    ranks = [*r.values()]  # bond order z, a, b, .. : tensorly wants [z, a, b, .., z]
    tr = tensor_ring(W, ranks + ranks[:1])
    return np.asarray(tl.tr_to_tensor(tr)), sum(f.size for f in tr.factors)


def _tl_cp(W: np.ndarray, r: dict[str, int]) -> tuple[np.ndarray, int]:
    from tensorly.decomposition import parafac

    cp = parafac(W, r["a"], random_state=0, **ALS)
    return np.asarray(tl.cp_to_tensor(cp)), sum(f.size for f in cp.factors)  # weights are all 1


def _tl_tucker(W: np.ndarray, r: dict[str, int]) -> tuple[np.ndarray, int]:
    from tensorly.decomposition import tucker

    core, factors = tucker(W, list(r.values()), init="svd", random_state=0)
    return np.asarray(tl.tucker_to_tensor((core, factors))), core.size + sum(f.size for f in factors)


TENSORLY: dict[str, Callable[[np.ndarray, dict[str, int]], tuple[np.ndarray, int]]] = {
    "tt": _tl_tt, "tr": _tl_tr, "cp": _tl_cp, "tucker": _tl_tucker}


def tensorly_baseline(W: np.ndarray, method: str, rank: dict[str, int]) -> Fit:
    """``method`` computed by tensorly.decomposition with sekron's bond sizes ``rank``."""
    t0 = time.perf_counter()
    with tl.backend_context("numpy"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tensorly clips n_eigenvecs to the unfolding's size
        approx, params = TENSORLY[method](W, rank)
    return Fit(rel_error(W, approx), params, f"ranks {list(rank.values())}", time.perf_counter() - t0)


# --- SeKron with a searched structure ------------------------------------------------
def grids(shape: tuple[int, ...], S: int) -> list[tuple[tuple[int, ...], ...]]:
    """Every factor-shape grid with S factors, none of them trivial (all sizes 1)."""
    return [st.factor_shapes for st in sekron.structures(shape, S, exclude_trivial=True)]


def _fallback_search(W: np.ndarray, budget: int, n3: int = 24) -> Fit:
    """Every 2-factor grid (nested = GKPD, scored from its spectrum), sampled 3-factor nested grids, and
    two Kronecker-CP grids: (F)(C)(kh kw) and (F kh)(C kw)."""
    shape = tuple(W.shape)
    norm2 = float(np.sum(W.astype(np.float64) ** 2))
    best = Fit(math.inf, 0, "")
    spec: tuple[Structure, Any] = (Structure([shape]), None)
    for grid in grids(shape, 2):
        if all(sum(a > 1 for a in s) <= 1 for s in grid):
            continue  # axis-aligned: a classical format, compared separately
        st = Structure(grid)
        P1, P2 = st.factor_sizes
        R = min(budget // (P1 + P2), P1, P2)
        if R < 1:
            continue
        s = np.linalg.svd(st.rearrange(W), compute_uv=False)
        err = math.sqrt(max(norm2 - float(np.sum(s[:R] ** 2)), 0.0) / norm2)
        if err < best.error:
            best = Fit(err, R * (P1 + P2), f"S=2 nested {list(grid)} rank {R}")
            spec = (st, R)
    rng = np.random.default_rng(0)
    g3 = [g for g in grids(shape, 3) if not all(sum(a > 1 for a in s) <= 1 for s in g)]
    for i in rng.permutation(len(g3))[:n3]:
        st = Structure(g3[i])
        P1, P2, P3 = st.factor_sizes
        for R1 in {max(1, min(P1, budget // (2 * P1)) // f) for f in (1, 2, 4)}:
            R2 = (budget - R1 * P1) // (R1 * (P2 + P3))
            if R2 < 1:
                continue
            sk, err = _decompose(W, st, [R1, R2])
            if err < best.error and sk.n_params <= budget:
                best = Fit(err, sk.n_params, f"S=3 nested {list(g3[i])} ranks {list(sk.rank.values())}")
                spec = (st, [R1, R2])
    if math.isfinite(best.error):
        best.approx = np.asarray(_decompose(W, *spec)[0].to_tensor())
    return min([best, *_cp_fits(W, budget)], key=lambda f: f.error)


def _cp_fits(W: np.ndarray, budget: int) -> list[Fit]:
    """Kronecker-CP (ALS) on the grids of :func:`_cp_grids`, largest rank within ``budget``."""
    fits = []
    for grid in _cp_grids(tuple(W.shape)):
        st = Structure(grid, "cp")
        R = budget // sum(st.factor_sizes)
        if R >= 1:
            sk, err = _decompose(W, st, R)
            fits.append(Fit(err, sk.n_params, f"S={len(grid)} cp {[list(s) for s in grid]} rank {R} (extra grid)",
                            approx=np.asarray(sk.to_tensor())))
    return fits


def _cp_grids(shape: tuple[int, ...]) -> list[tuple[tuple[int, ...], ...]]:
    """Kronecker-CP grids of a conv kernel (F, C, kh, kw) that are not axis-aligned."""
    if len(shape) != 4:
        return []
    F, C, kh, kw = shape
    return [((F, 1, 1, 1), (1, C, 1, 1), (1, 1, kh, kw)), ((F, 1, kh, 1), (1, C, 1, kw))]


def _search_module() -> Any:
    import importlib

    try:
        module = importlib.import_module("sekron.structure_search")
    except ImportError:
        return None
    return module if hasattr(module, "search") else None


def search_available() -> bool:
    return _search_module() is not None


def sekron_best(W: np.ndarray, budget: int) -> Fit:
    """SeKron with a searched structure (not axis-aligned) within ``budget`` parameters.

    ``sekron.search`` when it exists, plus the Kronecker-CP grids of :func:`_cp_grids`
    (which it may not visit); otherwise :func:`_fallback_search`.
    """
    t0 = time.perf_counter()
    module = _search_module()
    if module is None:
        fit = _fallback_search(W, budget)
    else:
        fit = min([_from_search(module, W, budget), *_cp_fits(W, budget)], key=lambda f: f.error)
    fit.seconds = time.perf_counter() - t0
    return fit


def _from_search(module: Any, W: np.ndarray, budget: int) -> Fit:
    candidates = module.search(W, max_params=budget)
    for c in candidates:
        st = c.structure
        if c.baseline is not None or st.is_axis_aligned:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sk = c.decompose(W)
        err = rel_error(W, np.asarray(sk.to_tensor()))
        return Fit(err, sk.n_params, f"S={st.n_factors} {st.pattern} {[list(s) for s in st.factor_shapes]} "
                                     f"ranks {list(sk.rank.values())}", approx=np.asarray(sk.to_tensor()))
    raise ValueError(f"sekron.search found no non-axis-aligned structure within {budget} parameters")
