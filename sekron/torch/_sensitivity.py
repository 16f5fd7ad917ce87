"""Sensitivity allocation: per layer and candidate size, how much the network output moves.

For every compressed layer and every candidate on its frontier (a ladder of per-layer
ratios), only that layer is replaced by its weight fit (then, with ``fit_steps``, fitted
to the dense layer's outputs, :func:`sekron.torch.calibrate.fit_layer`, so the damage is
the one left after output fitting), and the relative squared change
of the network output on the calibration inputs, ``sum ||f_l(x) - f(x)||^2 / sum
||f(x)||^2``, is its damage. The layers' (parameters, damage) points then go through the
same budget allocation as the weight errors (the frontier's other points get damages
interpolated between the measured ones, so the budget is spent as finely) (:func:`sekron.torch._allocate.allocate`:
greedy on the convex hulls, then a fill pass), in the spirit of AIMET's greedy
compression-ratio selection.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._allocate import Frontier
from .calibrate import _first_tensor, execution_order, fit_layer, stream_grams

#: per-layer compression ratios at which each layer's damage is measured
RATIOS = tuple(float(r) for r in np.geomspace(1.25, 128.0, 13))


def _ladder(f: Frontier, ratios: Sequence[float]) -> list[int]:
    """Frontier indices: the best point within each per-layer ratio, plus the cheapest one."""
    picks = {0}
    for r in ratios:
        ok = np.flatnonzero(f.params[:-1] <= f.dense / r)
        if ok.size:
            picks.add(int(ok[-1]))
    return sorted(picks)


def _interpolated(f: Frontier, pts: Sequence[tuple[int, float, Any]]) -> Frontier:
    """All points of ``f`` with damages: measured where measured, else interpolated (linear in log params).

    The frontier between two measured sizes keeps its intermediate points, so the budget
    can be spent as finely as with the weight errors; "keep dense" has damage 0. A
    measured point may be another structure than ``f``'s point of that size (chosen by
    output error); it then enters with its own size and reference.
    """
    mp = np.log(np.asarray([p[0] for p in pts] + [f.dense], dtype=float))
    md = np.asarray([p[1] for p in pts] + [0.0])
    order = np.argsort(mp)
    measured = {p[0] for p in pts}
    items = [(int(p[0]), float(p[1]), p[2]) for p in pts]
    items += [(int(q), float(np.interp(np.log(q), mp[order], md[order])), f.refs[i])
              for i, q in enumerate(f.params[:-1]) if int(q) not in measured]
    keep, best = [], np.inf
    for item in sorted(items, key=lambda t: (t[0], t[1])):
        if item[1] < best:
            keep.append(item)
            best = item[1]
    return Frontier(np.asarray([t[0] for t in keep] + [f.dense], dtype=np.int64),
                    np.asarray([t[1] for t in keep] + [0.0]), [t[2] for t in keep] + [None], f.dense)


def _alternatives(f: Frontier, i: int, families: Sequence[Any], count: int) -> list[Any]:
    """Up to ``count`` references ``(family, j)``: ``f``'s point ``i`` first, then the other structures' best
    points within its size, least weight error first (one per structure), other bond patterns before a
    second structure of a pattern already taken (so a CP-like and a nested choice are both tried)."""
    ref = f.refs[i]
    out = [ref]
    budget = int(f.params[i])
    others: list[tuple[float, int, int, Any]] = []
    for fam in families:
        if ref is not None and fam is ref[0]:
            continue
        j = fam.best_under(budget)
        if j is not None:
            others.append((float(fam.err[j]), -int(fam.params[j]), len(others), (fam, j)))
    others.sort(key=lambda t: t[:3])
    seen = {_pattern(ref[0])} if ref is not None else set()
    fresh: list[Any] = []
    rest: list[Any] = []
    for t in others:
        p = _pattern(t[3][0])
        (rest if p in seen else fresh).append(t[3])
        seen.add(p)
    return out + (fresh + rest)[:max(count - 1, 0)]


def _pattern(fam: Any) -> str:
    return str(getattr(fam.structure, "pattern", None) or fam.baseline or "")


def _as_candidate(ref: Any, dense: int) -> Any:
    from ..structure_search import Candidate

    fam, j = ref
    return Candidate(fam.structure, fam.rank(j), int(fam.params[j]), float(fam.err[j]), None, dense, fam.baseline,
                     fam.options(j))


@torch.no_grad()
def _outputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [_first_tensor(model(x)).detach() for x in batches]


def sensitivity_frontiers(model: nn.Module, names: Sequence[str], frontiers: Sequence[Frontier],
                          build: Callable[[str, Any], nn.Module], batches: Sequence[torch.Tensor],
                          ratios: Sequence[float] = RATIOS, progress: Callable[[Any], Any] = iter,
                          fit_steps: int = 0, solver: str = "als", max_samples: int = 32768, seed: int = 0,
                          families: Sequence[Sequence[Any]] | None = None, structures: int = 1) -> list[Frontier]:
    """Frontiers whose errors are the measured output damage (``model`` is a dense working copy).

    With ``families`` (each layer's scored structures), ``structures > 1`` and ``fit_steps``,
    each measured size tries the ``structures`` structures of least weight error within it,
    output-fits each, and measures the network damage of the one of least output error
    ``||Y - layer(X)||`` (the structure choice by output error rather than weight error).
    """
    work = copy.deepcopy(model).eval()
    ref = _outputs(work, batches)
    norm = sum(float((r.double() ** 2).sum()) for r in ref) or 1.0
    runs = set(execution_order(work, [work.get_submodule(n) for n in names], batches[0]))
    out = []
    for j, (name, f) in enumerate(progress(list(zip(names, frontiers)))):
        dense = work.get_submodule(name)
        grams = None
        if fit_steps > 0 and j in runs:  # a layer that never runs in eval mode has no inputs to fit to
            grams = stream_grams(work, dense, work, dense, batches, max_samples, torch.Generator().manual_seed(seed))
        pts = []
        for i in _ladder(f, ratios):
            if f.refs[i] is None:  # only "keep dense" (damage 0) on this frontier
                continue
            refs = [f.refs[i]]
            if grams is not None and families is not None and structures > 1:
                refs = _alternatives(f, i, families[j], structures)
            best = None
            for r in refs:
                new = build(name, _as_candidate(r, f.dense))
                err = fit_layer(new, grams, solver=solver, steps=fit_steps).after if grams is not None else 0.0
                if best is None or err < best[0]:
                    best = (err, new, r)
            assert best is not None
            _, new, r = best
            work.set_submodule(name, new)
            got = _outputs(work, batches)
            size = int(f.params[i]) if r is refs[0] else int(r[0].params[r[1]])  # the frontier's own cost unit
            pts.append((size, sum(float(((g - r_).double() ** 2).sum())
                              for g, r_ in zip(got, ref)) / norm, r))
        work.set_submodule(name, dense)
        out.append(_interpolated(f, pts))
    return out
