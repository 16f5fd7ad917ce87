"""Structure search: the SeKron structures and ranks that best meet a budget.

Search space (for a weight of shape ``(d_1, .., d_N)``, e.g. a conv kernel ``(F, C, K_1..K_D)``):

1. **S = 2 grids** (:func:`sekron.structures` with ``exclude_trivial``), every rank. For
   S = 2 the nested, chain and cp patterns coincide (GKPD); the error at rank R is the
   tail of the spectrum of ``R(W)``. All grids are scored when their total Gram cost is
   below :data:`EXHAUSTIVE_FLOPS`; otherwise a coordinate descent over the per-mode
   splits (from the balanced split, :data:`CD_SWEEPS` sweeps) screens the grids it
   visits with a randomized sketch, and the :data:`CD_KEEP` best are scored exactly.
2. **S = 3 grids**: refinements of the :data:`TOP_GRIDS` best S = 2 grids, splitting their
   second factor in two (both parts non-trivial). They share the S = 2 level-1 split
   ``(P_1 | P_2 P_3)``, which nested, chain and tucker all start from, so one spectrum
   serves every refinement. When a second factor has more than :data:`TOP_SPLITS` splits,
   they are screened by an estimated nested error (see :func:`sekron.structure_search._scoring.split_screen`) and the
   :data:`TOP_SPLITS` best are scored as nested; chain and tucker on the :data:`TOP_REFINE`
   best of those; cp (ALS) on the :data:`TOP_CP` best S = 3 grids.
3. **Merged spatial modes** (conv kernels with D >= 2): grids whose factors own whole modes
   with all spatial modes in one factor, i.e. the classical formats of the kernel seen as
   ``(F, C, kh*kw)``: CP (ALS) and Tucker of ``(F)(C)(kh kw)``; and every S = 2 split of
   the modes into two groups (``(F | C kh kw)``, ``(F kh | C kw)``, ...) from spectra. On real
   conv kernels CP of ``(F)(C)(kh kw)`` is often the best Kronecker structure (docs/results.md). On
   real conv kernels these are often the best Kronecker structures (docs/results.md).
4. **Baselines, always present**: the axis-aligned TT (chain), TR (ring), CP and Tucker
   structures (:meth:`sekron.Structure.tt` and friends), scored by their own algorithms:
   TT / TR / Tucker ranks from the unfolding spectra matched to the budget, then one exact
   ``decompose`` (:mod:`sekron.structure_search._baselines`); CP by ALS.

All scoring runs with BLAS limited to one thread (:func:`sekron._backend.single_blas_thread`):
its many small ``eigh`` calls are far slower threaded on a busy machine.

Pruning: a structure whose smallest rank exceeds the parameter budget is dropped, and
each (structure, pattern) contributes its least-error rank choice within the budget
(and within ``max_macs``, from :func:`sekron.conv_cost`). Errors are exact
(``decompose`` with the candidate's ``options`` reproduces them); only cp relies on ALS.
The ALS of the best cp candidates and of the cp baseline is then run on towards
convergence (:func:`_polish`, within :data:`POLISH_FLOPS` each), so that the cp candidates
are not left behind tensorly's ``parafac`` at the same rank by an early stop.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import tensorly as tl
from tensorly.cp_tensor import CPTensor

from .._backend import infer_backend, single_blas_thread, using
from .._validation import check_array, check_choice
from ..decomposition import decompose
from ..decomposition._decompose import _power_of_two_scale
from ..linalg.svd import shared_eigh
from ..sekron_tensor import SeKronTensor
from ..structure import Structure, _divisors, structures
from . import _baselines as bl
from . import _scoring as sc
from ._cache import memo
from ._candidates import Candidates
from ._grouped import cp_ranks
from ._grouped import whole_mode_families as _grouped

#: total Gram flops below which every S = 2 grid is scored
EXHAUSTIVE_FLOPS = 4e9
#: coordinate-descent sweeps (from the balanced split), and visited S = 2 grids kept (rescored in float64)
CD_SWEEPS = 2
CD_KEEP = 3
#: S = 2 grids refined into S = 3 grids
TOP_GRIDS = 2
#: splits of an S = 2 grid's second factor scored as nested S = 3 grids (screened by the leading branch)
TOP_SPLITS = 6
#: S = 3 refinements (best by nested error) also scored as chain and tucker
TOP_REFINE = 4
#: S = 3 grids (best by error) also scored as cp by ALS
TOP_CP = 1
#: candidates (best first) whose ALS is run on to convergence, sweeps at most, and the flop allowance of each
#: (counted as ``2 * T.size * rank * T.ndim`` per sweep, as the scoring's ALS_FLOPS; see _polish). A count, not
#: a clock, so that the search returns the same candidates on a busy machine as on a quiet one; 1e10 is what a
#: 96x96x3x3 kernel's rank-52 cp needs for 300 sweeps, about half a second on one core of the reference machine
POLISH_TOP = 3
POLISH_ITERS = 300
POLISH_FLOPS = 1.0e10
#: under ``max_macs``, at most this many least-error points of a family get their MACs computed
#: (one conv_cost each); a family whose best points all exceed ``max_macs`` is dropped
MACS_CHECKS = 40
OBJECTIVES = ("error", "macs", "params")
BASELINES = ("tt", "tr", "cp", "tucker")


@dataclass(frozen=True)
class Candidate:
    """One scored choice: a structure, its ranks, and what they cost and achieve.

    Attributes
    ----------
    structure : Structure
    rank : dict of {bond label: size}
    params : int
        Parameters of the SeKron factors.
    error : float
        Relative Frobenius error ``||W - W_hat|| / ||W||`` that :meth:`decompose` achieves.
    macs : int or None
        MACs of the best convolution plan (when the search had an ``input_shape``).
    dense_params : int
        Entries of the dense weight.
    baseline : {"tt", "tr", "cp", "tucker"} or None
        Set for the axis-aligned classical formats.
    options : dict
        The ``sekron.decompose`` keywords that reproduce this candidate.
    """

    structure: Structure
    rank: dict[str, int]
    params: int
    error: float
    macs: int | None
    dense_params: int
    baseline: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def pattern(self) -> str | None:
        """The structure's bond pattern."""
        return self.structure.pattern

    @property
    def compression(self) -> float:
        """Dense entries over SeKron parameters."""
        return self.dense_params / max(self.params, 1)

    def decompose(self, weight: Any) -> SeKronTensor:
        """Decompose ``weight`` with this candidate's structure and ranks (its error is :attr:`error`).

        ``weight`` may come from any framework (the search itself runs in numpy): a cp
        candidate's factors are converted to the weight's framework, dtype and device. They
        were fitted to the searched weight: another weight raises a ValueError.
        """
        options = dict(self.options)
        init = options.get("init")
        if init is not None and not isinstance(init, str):
            check_array(weight, "weight")
            with using(infer_backend(weight)):
                context = {k: v for k, v in tl.context(weight).items() if k != "requires_grad"}
                weights, factors = init
                options["init"] = CPTensor((tl.tensor(np.asarray(weights), **context),
                                            [tl.tensor(np.asarray(f), **context) for f in factors]))
            sk, err = decompose(weight, self.structure, return_error=True, **options)
            if not math.isclose(err, self.error, rel_tol=1e-3, abs_tol=1e-6):
                raise ValueError(
                    f"this cp candidate's factors were fitted to the weight that was searched (relative error "
                    f"{self.error:.4g}), but here they give {err:.4g}: pass that same weight, or decompose another "
                    "one with sekron.decompose(weight, candidate.structure, rank=candidate.rank)")
            return sk
        return decompose(weight, self.structure, **options)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready)."""
        return {"structure": self.structure.to_dict(), "pattern": self.pattern, "rank": dict(self.rank),
                "params": self.params, "macs": self.macs, "error": self.error, "baseline": self.baseline,
                "compression": self.compression}


def _as_numpy(weight: Any) -> np.ndarray:
    check_array(weight, "weight")
    if hasattr(weight, "detach"):
        weight = weight.detach()
    with using(infer_backend(weight)):
        W = np.asarray(tl.to_numpy(weight))
    if not np.issubdtype(W.dtype, np.floating):
        raise TypeError(f"weight must have a floating dtype, got {W.dtype}")
    if not np.all(np.isfinite(W)):
        raise ValueError("weight contains NaN or Inf values; clean it first")
    return W.astype(np.float64)


def param_budget(dense: int, ratio: float | None, max_params: float | None, max_macs: float | None) -> float:
    """The parameter cap implied by ``ratio`` and ``max_params`` (``dense`` when only MACs are capped)."""
    if ratio is None and max_params is None and max_macs is None:
        raise ValueError("give a budget: ratio=, max_params= or max_macs= (with input_shape=)")
    cap = float(dense)
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 1:
            raise ValueError(f"ratio must be a number > 1 (dense parameters / compressed parameters), got {ratio!r}")
        cap = min(cap, dense / float(ratio))
    if max_params is not None:
        if isinstance(max_params, bool) or not isinstance(max_params, (int, float)) or max_params < 1:
            raise ValueError(f"max_params must be a number >= 1, got {max_params!r}")
        cap = min(cap, float(max_params))
    return cap


# --- families -------------------------------------------------------------------------
def _grid_cost(st: Structure) -> float:
    P1, P2 = st.factor_sizes
    return 2.0 * min(P1, P2) ** 2 * max(P1, P2)


@functools.lru_cache(maxsize=512)
def _grids(shape: tuple[int, ...]) -> tuple[Structure, ...]:
    """The non-trivial S = 2 grids of ``shape`` (Structures are immutable: built and validated once per shape)."""
    return tuple(structures(shape, 2, exclude_trivial=True))


def _two_factor_grids(W: np.ndarray, budget: float, top: float, pattern: str) -> list[sc.Family]:
    """Score S = 2 grids (ranks up to ``top`` parameters): all of them, or those a coordinate descent visits."""
    grids = [g for g in _grids(tuple(W.shape)) if sum(g.factor_sizes) <= budget]
    if sum(_grid_cost(g) for g in grids) <= EXHAUSTIVE_FLOPS:
        norm2 = sc.sq_norm(W)
        return [sc.two_factor(W, g, top, pattern, norm2) for g in grids]
    return _coordinate_descent(W, budget, top, pattern)


def _middle_divisor(d: int) -> int:
    return min(_divisors(d), key=lambda a: abs(math.log(a) - 0.5 * math.log(d)))


def _coordinate_descent(W: np.ndarray, budget: float, top: float, pattern: str) -> list[sc.Family]:
    """Coordinate descent over the per-mode splits, screened cheaply; the best visited grids rescored exactly."""
    shape = W.shape
    W32 = W.astype(np.float32)
    total = float(np.sum(W * W))
    seen: dict[tuple[int, ...], float] = {}

    def score(first: tuple[int, ...]) -> float:
        if first not in seen:
            grid = (first, tuple(d // a for d, a in zip(shape, first)))
            st = Structure(grid, pattern)
            seen[first] = math.inf
            if all(math.prod(s) > 1 for s in grid) and sum(st.factor_sizes) <= budget:
                seen[first] = sc.screen_error(W32, st, budget, total, cached=True)
        return seen[first]

    cur = tuple(_middle_divisor(d) for d in shape)  # from the balanced split
    cur_err = score(cur)
    for _ in range(CD_SWEEPS):
        moved = False
        for n, d in enumerate(shape):
            for a in _divisors(d):
                trial = (*cur[:n], a, *cur[n + 1:])
                e = score(trial)
                if e < cur_err:
                    cur, cur_err, moved = trial, e, True
        if not moved:
            break
    best = sorted((e, first) for first, e in seen.items() if math.isfinite(e))[:CD_KEEP]
    norm2 = sc.sq_norm(W)
    return [sc.two_factor(W, Structure((first, tuple(d // a for d, a in zip(shape, first))), pattern), top, pattern,
                          norm2) for _, first in best]


def _refine(W: np.ndarray, fam: sc.Family, budget: float, top: float, patterns: Sequence[str]) -> list[sc.Family]:
    """S = 3 refinements of an S = 2 grid's second factor, sharing its level-1 split."""
    a, b = fam.structure.factor_shapes
    P1 = math.prod(a)
    r = max(1, int(top // (P1 + 2)))
    got = memo("level1", W, {"grid": fam.structure.factor_shapes, "r": r},
               lambda: dict(zip(("s2", "C"), sc.level1(fam.structure.rearrange(W), P1, r))))
    s2, C = got["s2"], got["C"]
    k1 = s2.shape[0]
    splits = [g for g in _grids(tuple(b)) if P1 + sum(g.factor_sizes) <= budget]
    norm2 = float(np.sum(W * W))
    if len(splits) > TOP_SPLITS:
        splits = sorted(splits, key=sc.split_screen(C, s2, b, P1, budget, norm2, len(splits)))[:TOP_SPLITS]
    nested_fams = []

    def three(st3: Structure, pats: list[str]) -> list[sc.Family]:
        """``three_factor`` of ``st3`` from the level-1 split (memoised: a function of the split, ``top`` and
        ``pats``, not of the budget, so ratios an octave apart share it)."""
        def compute() -> dict[str, np.ndarray]:
            b1, b2 = st3.factor_shapes[1:]
            batched = Structure([(k1, *b1), (1, *b2)]).rearrange(C.reshape((k1, *b)))
            rows = batched.reshape(k1, math.prod(b1), math.prod(b2)).reshape(k1, -1)
            out: dict[str, np.ndarray] = {}
            for i, f in enumerate(sc.three_factor(W, st3, top, pats, (s2, rows), norm2)):
                out |= {f"params{i}": f.params, f"err{i}": f.err, f"ranks{i}": f.ranks}
            return out
        got = memo("three", W, {"grid": fam.structure.factor_shapes, "r": r, "split": st3.factor_shapes,
                                "top": float(top), "patterns": pats}, compute)
        order = [p for p in ("nested", "chain", "tucker") if p in pats]
        return [sc._family(sc.with_pattern(st3, p), "spectrum", got[f"params{i}"], got[f"err{i}"], got[f"ranks{i}"])
                for i, p in enumerate(order)]

    for g in splits:
        b1, b2 = g.factor_shapes
        st3 = Structure([a, b1, b2], "nested")
        nested_fams.append((st3, three(st3, ["nested"])[0]))
    if not nested_fams:
        return []
    ranked = sorted(nested_fams, key=lambda sf: _best_err(sf[1], budget))
    out = [f for _, f in nested_fams] if "nested" in patterns else []
    others = [p for p in ("chain", "tucker") if p in patterns]
    for st3, _ in ranked[:TOP_REFINE] if others else []:
        out += three(st3, others)
    return out


def _best_err(fam: sc.Family, budget: float) -> float:
    idx = fam.best_under(budget)
    return math.inf if idx is None else float(fam.err[idx])


def _baselines(W: np.ndarray, budget: float, budgets: Sequence[float], which: Sequence[str],
               octaves: bool = False) -> list[sc.Family]:
    """The axis-aligned formats; cp (ALS) only up to ``CP_BUDGET_FACTOR * budget`` unless it is the only one
    asked for."""
    out = []
    spectra = bl.Spectra(W)
    for name in which:
        st = getattr(Structure, name)(W.shape)
        if name == "cp":
            ranks = cp_ranks(st, budgets, math.inf if len(which) == 1 else budget, W.size if octaves else None)
            fam = sc.cp_family(W, st, ranks, octaves) if ranks else None
        else:
            fam = sc.caps_family(W, st, budgets, spectra=spectra)
        if fam is not None:
            fam.baseline = name
            out.append(fam)
    return out


def families(W: np.ndarray, budget: float, n_factors: Sequence[int], patterns: Sequence[str],
             baselines: Sequence[str] = BASELINES, ladder: Sequence[float] = (),
             spectrum_top: float | None = None, octaves: bool = False,
             select: float | None = None) -> list[sc.Family]:
    """Every scored family for ``W`` (float64 numpy) under a parameter budget.

    ``budget`` decides the pruning; the spectrum families keep every rank up to
    ``max(budget, *ladder, spectrum_top)`` parameters, and the ALS and rank-cap families are also
    evaluated at each budget of ``ladder`` (used by :func:`sekron.torch.compress`). ``octaves``: the
    ladder's budgets are the dense size over powers of two, and the cp fits follow octave chains
    (:func:`sekron.structure_search._scoring.octave_ranks`), so that ladders an octave apart share them.
    ``select`` (default ``budget``): the budget at which the structures are selected (which grids are
    admitted, refined and fitted by ALS); ``budget`` still sets the cp ranks.
    """
    # numpy throughout, whatever tensorly's global backend; each full-size unfolding's Gram matrix is
    # solved once and shared by every truncation of it (rank caps, SVD starts of the ALS, level-1 splits); the
    # search never writes to W, so its views are matched by where they lie (shared_eigh's ``frozen``)
    with single_blas_thread(), using("numpy"), shared_eigh(W.size, frozen=W):
        return _families(W, budget, n_factors, patterns, baselines, ladder, spectrum_top, octaves,
                         budget if select is None else float(select))


def _families(W: np.ndarray, budget: float, n_factors: Sequence[int], patterns: Sequence[str],
              baselines: Sequence[str], ladder: Sequence[float], spectrum_top: float | None,
              octaves: bool = False, select: float | None = None) -> list[sc.Family]:
    select = budget if select is None else select
    budgets = sorted({float(budget), *(float(b) for b in ladder)})
    top_budget = max(budgets[-1], spectrum_top or 0.0)
    fams: list[sc.Family] = []
    s2_pattern = next((p for p in ("nested", "cp", "chain") if p in patterns), None)
    if 2 in n_factors or 3 in n_factors:
        two = _two_factor_grids(W, select, top_budget, s2_pattern or "nested")
        if 2 in n_factors and s2_pattern is not None:
            fams += two
        if 3 in n_factors:
            top = sorted(two, key=lambda f: _best_err(f, select))[:TOP_GRIDS]
            three: list[sc.Family] = []
            for fam in top:
                three += _refine(W, fam, select, top_budget, patterns)
            fams += three
            if "cp" in patterns:
                best3 = sorted({f.structure.factor_shapes: f for f in three}.values(),
                               key=lambda f: _best_err(f, select))[:TOP_CP]
                for f in best3:
                    st = Structure(f.structure.factor_shapes, "cp")
                    ranks = cp_ranks(st, budgets, budget, W.size if octaves else None)
                    if ranks:
                        fams.append(sc.cp_family(W, st, ranks, octaves))
    fams += _grouped(W, budget, budgets, top_budget, n_factors, patterns, s2_pattern, octaves, select)
    fams += _baselines(W, budget, budgets, baselines, octaves)
    return fams


# --- MACs ---------------------------------------------------------------------------------
def candidate_macs(st: Structure, rank: dict[str, int], input_shape: Sequence[int], stride: Any = 1,
                   padding: Any = 0, dilation: Any = 1) -> int:
    """MACs of the best plan (factorized or dense, as ``implementation="auto"`` picks) for this kernel."""
    from ..convolution import conv_cost

    factors = [np.zeros(tuple(rank[c] for c in lab) + fs, dtype=np.float32)
               for lab, fs in zip(st.labels, st.factor_shapes)]
    cost = conv_cost(SeKronTensor(factors, st), tuple(input_shape), stride, padding, dilation)
    return int(cost.best.macs if cost.auto == "factorized" else cost.dense.macs)


def _pick(fam: sc.Family, budget: float, max_macs: float | None, macs_of: Any) -> tuple[int, int | None] | None:
    """Least-error point of ``fam`` within the budgets: (index, macs)."""
    ok = np.flatnonzero(fam.params <= budget)
    if ok.size == 0:
        return None
    ordered = ok[np.lexsort((fam.params[ok], fam.err[ok]))]
    if macs_of is None:
        return int(ordered[0]), None
    for idx in ordered[:MACS_CHECKS]:
        macs = macs_of(fam, int(idx))
        if max_macs is None or macs <= max_macs:
            return int(idx), macs
    return None


#: ALS budget of :func:`search`'s cp candidates: one weight at a time, interactively, so it affords
#: twice the sweeps that :func:`sekron.torch.compress` uses per layer (``_scoring.ALS_ITERS``), which are
#: sized for whole models (docs/speed.md)
SEARCH_ALS_ITERS = 36
SEARCH_ALS_FLOPS = 1.5e9
_SORT_KEYS = {
    "error": lambda c: (c.error, c.macs or 0, c.params),
    "macs": lambda c: (c.macs or 0, c.error, c.params),
    "params": lambda c: (c.params, c.error),
}


def search(weight: Any, *, ratio: float | None = None, max_params: float | None = None,
           max_macs: float | None = None, input_shape: Sequence[int] | None = None,
           n_factors: int | Sequence[int] = (2, 3), patterns: Sequence[str] = ("nested", "chain", "cp", "tucker"),
           objective: str = "error", stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           baselines: Sequence[str] = BASELINES) -> list[Candidate]:
    """SeKron structures and ranks for ``weight`` within a budget, best first.

    See the module docstring for the search space and its pruning. Every candidate's
    ``error`` is exactly what ``candidate.decompose(weight)`` achieves.

    Parameters
    ----------
    weight : array
        Any tensor (a conv kernel ``(F, C, K_1..K_D)``, a linear weight ``(F, C)``, ...).
    ratio : float > 1, optional
        Keep at most ``weight.size / ratio`` parameters.
    max_params : int, optional
        Parameter cap (the smaller of the two caps applies).
    max_macs : int, optional
        MAC cap of the convolution (needs ``input_shape``).
    input_shape : sequence of int, optional
        ``(B, C, *spatial)`` of the convolution's input; gives every candidate its MACs
        (:func:`sekron.conv_cost`, with ``stride``, ``padding``, ``dilation``).
    n_factors : 2, 3 or a sequence of them
        Numbers of factors S searched (besides the baselines).
    patterns : sequence of {"nested", "chain", "cp", "tucker"}
        Bond patterns searched.
    objective : {"error", "macs", "params"}
        Sort key (ties broken by the others).
    baselines : sequence of {"tt", "tr", "cp", "tucker"}
        Axis-aligned classical formats scored alongside (all by default).

    Returns
    -------
    list of Candidate
        Sorted by ``objective``; one entry per (structure, pattern), all within budget. A
        ``list`` subclass that prints as a table and has ``to_pandas()``.

    Raises
    ------
    ValueError
        No budget, a bad budget, or a budget that no candidate meets.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron import search
    >>> W = np.random.default_rng(0).standard_normal((16, 8, 3, 3))
    >>> best = search(W, ratio=4)[0]
    >>> best.params <= W.size / 4
    True
    >>> sk = best.decompose(W)
    >>> bool(np.isclose(np.linalg.norm(W - sk.to_tensor()) / np.linalg.norm(W), best.error))
    True
    """
    W = _as_numpy(weight)
    if W.ndim < 2:
        raise ValueError(f"search needs a weight with at least 2 axes (a matrix or a conv kernel), got shape "
                         f"{W.shape}; reshape a vector first, e.g. weight.reshape(a, b)")
    if isinstance(n_factors, numbers.Integral):
        n_factors = (int(n_factors),)
    if isinstance(n_factors, (str, bytes)) or not isinstance(n_factors, Sequence):
        raise TypeError(f"n_factors must be 2, 3 or a sequence of them, got {n_factors!r}")
    # the scores are relative errors: score W / 2^e (the power of two decompose would use), whose squares
    # neither under- nor overflow, and hand cp starts back at W's own scale
    scale = _power_of_two_scale(float(np.max(np.abs(W))) if W.size else 0.0, "float64")
    if scale != 1.0 and np.any(W):
        W = W / scale
    dense = W.size
    budget = param_budget(dense, ratio, max_params, max_macs)
    check_choice(objective, "objective", OBJECTIVES)
    for p in patterns:
        check_choice(p, "patterns[...]", ["nested", "chain", "cp", "tucker"])
    for b in baselines:
        check_choice(b, "baselines[...]", list(BASELINES))
    bad = [s for s in n_factors if s not in (2, 3)]
    if bad:
        raise ValueError(f"n_factors must hold only 2 and 3 (deeper structures are reached through the baselines), "
                         f"got {list(n_factors)}")
    if input_shape is not None and W.ndim < 3:
        raise ValueError(f"input_shape (for MACs) needs a conv kernel (F, C, K_1..K_D), got a weight of shape "
                         f"{W.shape}; drop input_shape for a linear weight")
    if (max_macs is not None or objective == "macs") and input_shape is None:
        raise ValueError("max_macs= and objective='macs' need input_shape=(B, C, *spatial) of the convolution")
    macs_of = None
    if input_shape is not None:
        def macs_of(fam: sc.Family, idx: int) -> int:
            return candidate_macs(fam.structure, fam.rank(idx), input_shape, stride, padding, dilation)

    out: list[Candidate] = []
    seen: set[tuple[Any, ...]] = set()
    with sc.als_budget(SEARCH_ALS_ITERS, SEARCH_ALS_FLOPS):
        scored = families(W, budget, n_factors, patterns, baselines)
    for fam in scored:
        picked = _pick(fam, budget, max_macs, macs_of)
        if picked is None:
            continue
        idx, macs = picked
        key = (fam.structure, tuple(fam.ranks[idx]), fam.baseline)
        if key in seen:
            continue
        seen.add(key)
        out.append(Candidate(fam.structure, fam.rank(idx), int(fam.params[idx]), float(fam.err[idx]), macs,
                             dense, fam.baseline, fam.options(idx)))
    if not out:
        raise ValueError(f"no structure of a weight of shape {W.shape} meets the budget (at most {budget:.0f} "
                         f"parameters{'' if max_macs is None else f' and {max_macs} MACs'}); the smallest "
                         f"rank-1 structure needs more; relax ratio/max_params/max_macs")
    out = _polish(W, sorted(out, key=_SORT_KEYS[objective]))
    if scale != 1.0:  # cp starts were fitted to W / scale: hand them back at the weight's own scale
        out = [_rescaled_init(c, scale) for c in out]
    return Candidates(sorted(out, key=_SORT_KEYS[objective]))


def _rescaled_init(cand: Candidate, scale: float) -> Candidate:
    init = cand.options.get("init")
    if init is None or isinstance(init, str):
        return cand
    weights, factors = init
    with using("numpy"):  # CPTensor validates with tensorly's current backend
        rescaled = CPTensor((np.asarray(weights) * scale, list(factors)))
    return replace(cand, options={**cand.options, "init": rescaled})


def _polish(W: np.ndarray, ranked: list[Candidate]) -> list[Candidate]:
    """Run the ALS of the top cp candidates (and of the cp baseline) on to convergence, within a flop allowance.

    The scoring stops ALS after a few sweeps (:data:`sekron.structure_search._scoring.ALS_FLOPS`), which
    left cp candidates 0.5-1.3 % above tensorly's ``parafac`` at the same rank on real conv
    kernels. For each of the :data:`POLISH_TOP` best candidates that came from ALS, and for the
    axis-aligned cp baseline, ALS resumes from the candidate's factors for at most
    :data:`POLISH_ITERS` sweeps and at most :data:`POLISH_FLOPS` (until the relative error changes
    by less than 1e-9); the result replaces the candidate when it lowers the error. The
    allowance is counted, not timed, so the result does not depend on the machine's load.
    """
    picks = [i for i, c in enumerate(ranked) if "init" in c.options and (i < POLISH_TOP or c.baseline == "cp")]
    out = list(ranked)
    for i in picks:
        cand = out[i]
        T = cand.structure.rearrange(W)
        R = int(cand.options["rank"])
        sweeps = int(min(POLISH_ITERS, POLISH_FLOPS // max(2 * T.size * R * T.ndim, 1)))
        if sweeps < 1:
            continue
        weights, factors = cand.options["init"]
        start = [np.asarray(f, dtype=float) for f in factors]
        start[0] = start[0] * np.asarray(weights, dtype=float)[None, :]
        try:
            facs = sc.fast_als(T, R, sweeps, tol=1e-9, init=start)
            with using("numpy"):  # CPTensor validates with tensorly's current backend
                options = {"rank": R, "init": CPTensor((np.ones(R), facs)), "n_iter_max": 0}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                _, err = decompose(W, cand.structure, return_error=True, **options)
        except (np.linalg.LinAlgError, ValueError):
            continue  # a singular ALS step: keep what the candidate had
        if err < cand.error:
            out[i] = replace(cand, error=float(err), options=options)
    return out
