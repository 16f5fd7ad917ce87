"""One layer's share of :func:`sekron.torch.compress`: every scored family of its weight, as plain data.

This is the unit of work that :func:`sekron.torch.compress` runs in parallel (in worker
processes or on a dask cluster). It imports numpy and the search only, never torch, so a
worker process starts quickly; its input is a numpy weight and plain options, its output
plain dicts of numpy arrays (:func:`family_to_plain`), and the cache entries it computed.

Budgets. Each layer is scored at a ladder of parameter budgets around its share of the
model budget. The search and its ladder are anchored on the layer's dense size (powers
of two times ``W.size``, see :func:`anchor`) rather than on the share itself, so that
compressing the same model at another ratio asks for the same spectra, ALS fits and
rank caps (same octave) or mostly the same (next octave), which
:mod:`sekron.structure_search._cache` then serves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..structure import Structure
from . import _scoring as sc
from ._cache import Entry, Memo
from ._search import BASELINES, families

#: method -> (n_factors, patterns, baselines) of the search machinery
METHODS: dict[str, tuple[tuple[int, ...], tuple[str, ...], tuple[str, ...]]] = {
    "sekron": ((2, 3), ("nested", "chain", "cp", "tucker"), BASELINES),
    "tt": ((), (), ("tt",)),
    "tr": ((), (), ("tr",)),
    "cp": ((), (), ("cp",)),
    "tucker": ((), (), ("tucker",)),
}
#: budgets (times the anchor, see :func:`ladder`) at which each layer is scored
LADDER = (0.25, 0.5, 1.0, 2.0, 4.0)
#: budgets on the same span for the single-format methods (tt, tr, cp, tucker)
FINE_LADDER = 25
#: the structures are selected at the centre of bands of SELECT_BAND octaves, the band of ratio 4 centred on 4
#: (:func:`select_budget`): ratios 2 to 8 select the same structures, so compressing again at 2x or 8x after
#: 4x finds every spectrum, split and fit of those structures in the cache
SELECT_BAND = 3
#: method "sekron" scores its classical baselines (tt, tr, cp, tucker) on the same fine ladder as the
#: single-format methods, so its candidates include every point those methods have (its SeKron structures keep
#: :data:`LADDER`); the calibrated allocation then sees each baseline's own frontier (sekron.torch._sensitivity).
#: Off by default: with it (and the per-pattern sensitivity) Fashion-MNIST ResNet-8 calibrated to 84.94 / 70.40 /
#: 87.58 at 10x / 20x / 5x, against 84.36 / 72.24 / 87.74 without (docs/results.md)
FINE_BASELINES = False
SELECT_CENTRE = 2


def anchor(size: int, budget: float) -> float:
    """``budget`` rounded, in log scale, to ``size`` times a power of two (at most ``size``).

    Examples
    --------
    >>> anchor(1024, 300.0), anchor(1024, 380.0)
    (256.0, 512.0)
    """
    return min(float(size), size * 2.0 ** round(math.log2(budget / size)))


def select_budget(size: int, budget: float) -> float:
    """The budget at which compress selects a layer's structures: the :func:`anchor` of ``budget`` moved
    to the centre of its band of :data:`SELECT_BAND` octaves (at most ``size``), at most one octave away.

    Examples
    --------
    >>> [select_budget(1024, 1024 / r) for r in (2, 4, 8, 16, 32)]
    [256.0, 256.0, 256.0, 32.0, 32.0]
    """
    octave = round(math.log2(size / anchor(size, budget)))
    centre = SELECT_CENTRE + SELECT_BAND * round((octave - SELECT_CENTRE) / SELECT_BAND)
    return min(float(size), size * 2.0 ** -max(centre, 0))


def ladder(size: int, budget: float, fine: bool = False) -> list[float]:
    """The budgets at which a layer of ``size`` entries with a share of ``budget`` parameters is scored.

    They are :data:`LADDER` times the :func:`anchor` of ``budget``, so the ladder of a layer
    only moves in whole octaves when the ratio changes.

    Examples
    --------
    >>> ladder(1024, 300.0)
    [64.0, 128.0, 256.0, 512.0, 1024.0]
    """
    base = anchor(size, budget)
    steps = np.geomspace(LADDER[0], LADDER[-1], FINE_LADDER) if fine else LADDER
    return [min(base * float(f), float(size)) for f in steps]


def layer_families(W: np.ndarray, budget: float, method: str) -> list[sc.Family]:
    """Every family of ``W`` (float64) that compress scores for a share of ``budget`` parameters.

    The search runs at the :func:`anchor` of ``budget`` (within half an octave of it), so
    its whole state depends on the ratio only through that octave: compressing again at
    a ratio in the same octave reuses everything cached, in the next one most of it.
    """
    n_factors, patterns, baselines = METHODS[method]
    base = anchor(W.size, budget)
    fine = not n_factors
    steps = ladder(W.size, budget, fine=fine)
    split = FINE_BASELINES and not fine and bool(baselines)
    fams = families(W, base, n_factors, patterns, () if split else baselines, ladder=steps,
                    spectrum_top=min(W.size, 8 * base), octaves=not fine,
                    select=None if fine else select_budget(W.size, budget))
    if split:  # the baselines exactly as the single-format methods score them
        for b in baselines:
            fams += families(W, base, (), (), (b,), ladder=ladder(W.size, budget, fine=True),
                             spectrum_top=min(W.size, 8 * base), octaves=True, select=None)
    return fams


def aligned(a: Any) -> np.ndarray:
    """``a`` as an aligned, C-contiguous numpy array (a copy only when it is not one already)."""
    return np.require(a, requirements=["C", "A"])


# --- plain data --------------------------------------------------------------------------------
def family_to_plain(fam: sc.Family) -> dict[str, Any]:
    """A family as JSON-ready values and numpy arrays (the CP init factors as a list of arrays)."""
    extra = None
    if fam.extra is not None:
        extra = []
        for opts in fam.extra:
            item = {k: v for k, v in opts.items() if k != "init"}
            if "init" in opts:
                weights, factors = opts["init"]
                item["init"] = [np.asarray(weights), *(np.asarray(f) for f in factors)]
            extra.append(item)
    return {"structure": fam.structure.to_dict(), "kind": fam.kind, "params": fam.params, "err": fam.err,
            "ranks": fam.ranks, "extra": extra, "baseline": fam.baseline}


@functools.lru_cache(maxsize=4096)
def _structure(factor_shapes: tuple[tuple[int, ...], ...], labels: tuple[str, ...], pattern: str | None) -> Structure:
    """One validated Structure per description (they are immutable; a model's layers share a few hundred)."""
    return Structure(factor_shapes, pattern, labels=labels)


def family_from_plain(data: Mapping[str, Any]) -> sc.Family:
    """Inverse of :func:`family_to_plain`."""
    extra = None
    if data["extra"] is not None:
        from tensorly.cp_tensor import CPTensor

        extra = []
        for item in data["extra"]:
            opts = dict(item)
            if "init" in opts:
                weights, *factors = (aligned(a) for a in opts["init"])
                opts["init"] = CPTensor((weights, list(factors)))
            extra.append(opts)
    st = data["structure"]
    structure = _structure(tuple(tuple(int(v) for v in f) for f in st["factor_shapes"]), tuple(st["labels"]),
                           st.get("pattern"))
    return sc.Family(structure, data["kind"], aligned(data["params"]),
                     aligned(data["err"]), aligned(data["ranks"]), extra, data["baseline"])


def layer_task(W: np.ndarray, budget: float, method: str, whash: str,
               known: Mapping[str, Entry] | None = None) -> tuple[list[dict[str, Any]], dict[str, Entry], int, int]:
    """The work of one layer, where it runs: (families as plain data, new cache entries, hits, misses).

    ``known`` holds the cache entries of this weight (hash ``whash``) that the caller already has.
    Arrays that arrive unaligned (dask hands out views into its receive buffers) are copied
    first: numpy does not hand unaligned arrays to BLAS, and its fallback loops round
    differently, which would make the result depend on where the task ran.
    """
    W = aligned(W)
    known = {key: {k: aligned(v) for k, v in entry.items()} for key, entry in (known or {}).items()}
    m = Memo(W, whash, known)
    with m.active():
        fams = layer_families(W, budget, method)
    return [family_to_plain(f) for f in fams], m.new, m.hits, m.misses


def task_arguments(W: np.ndarray, budget: float, method: str, whash: str,
                   known: Mapping[str, Entry] | None) -> tuple[Any, ...]:
    """The positional arguments of :func:`layer_task` (validated plain values)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    return (np.ascontiguousarray(W, dtype=np.float64), float(budget), str(method), str(whash), dict(known or {}))


def run_plain(args: Sequence[Any]) -> tuple[list[dict[str, Any]], dict[str, Entry], int, int]:
    """:func:`layer_task` on a tuple of arguments (the picklable entry point of worker processes)."""
    return layer_task(*args)
