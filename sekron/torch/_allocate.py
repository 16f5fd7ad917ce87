"""Budget allocation across layers: least total squared relative error for a cost budget.

The cost is the parameter count, or the deployed MACs (``compress(budget="macs")``).
Each layer offers a Pareto frontier of (cost, squared relative error) points, one
per scored (structure, ranks), plus "keep dense" (its dense cost, error 0). The greedy
walks the lower convex hulls, always buying the step with the largest error drop per
parameter that still fits; a fill pass then spends what is left on any frontier point.
On convex hulls this is the optimum of the continuous relaxation.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..structure_search import Candidate
from ..structure_search import _scoring as sc


@dataclass
class Frontier:
    """Pareto points of one layer, cheapest first; point ``len - 1`` may be the dense layer (``family`` None).

    ``cost`` is what the budget counts (parameters, or deployed MACs), ``dense`` the dense
    layer's cost.
    """

    cost: np.ndarray
    err2: np.ndarray
    refs: list[tuple[sc.Family, int] | None]
    dense: int

    @property
    def params(self) -> np.ndarray:
        """The cost axis (named for the parameter budget, the default)."""
        return self.cost

    @classmethod
    def from_families(cls, fams: Sequence[sc.Family], dense: int,
                      cost: Callable[[sc.Family, int], int] | None = None) -> Frontier:
        """The Pareto points of the families' (structure, rank) points that cost less than ``dense``.

        ``cost(family, i)`` prices point i of a family (default: its parameters).
        """
        price = (lambda f, i: int(f.params[i])) if cost is None else cost
        pts = [(c, float(f.err[i]) ** 2, k, i) for k, f in enumerate(fams) for i in range(len(f.params))
               if (c := int(price(f, i))) < dense]
        pts.sort(key=lambda p: (p[0], p[1]))
        keep, best = [], np.inf
        for p in pts:
            if p[1] < best - 1e-15:
                keep.append(p)
                best = p[1]
        costs = [p[0] for p in keep] + [dense]
        err2 = [p[1] for p in keep] + [0.0]
        refs: list[tuple[sc.Family, int] | None] = [(fams[p[2]], p[3]) for p in keep] + [None]
        return cls(np.asarray(costs, dtype=np.int64), np.asarray(err2), refs, dense)

    def candidate(self, i: int) -> Candidate | None:
        ref = self.refs[i]
        if ref is None:
            return None
        fam, j = ref
        return Candidate(fam.structure, fam.rank(j), int(fam.params[j]), float(fam.err[j]), None,
                         math.prod(fam.structure.shape), fam.baseline, fam.options(j))

    def hull(self) -> list[int]:
        """Indices of the lower convex hull of (cost, err2), cheapest first."""
        out: list[int] = []
        for i in range(len(self.cost)):
            while len(out) >= 2:
                a, b = out[-2], out[-1]
                # drop b when it lies on or above the segment a -> i
                lhs = (self.err2[b] - self.err2[a]) * (self.cost[i] - self.cost[a])
                rhs = (self.err2[i] - self.err2[a]) * (self.cost[b] - self.cost[a])
                if lhs >= rhs:
                    out.pop()
                else:
                    break
            out.append(i)
        return out


def _minimum(frontiers: Sequence[Frontier]) -> int:
    return int(sum(f.cost[0] for f in frontiers))


def allocate(frontiers: Sequence[Frontier], budget: float) -> list[int]:
    """Point index per layer: least sum of err2 with total cost <= budget (greedy on hulls, then fill)."""
    if _minimum(frontiers) > budget:
        raise ValueError(f"the budget of {budget:.0f} (parameters or MACs, as the budget counts) for the compressed "
                         f"layers is below the smallest structures they allow ({_minimum(frontiers)}); lower the "
                         "ratio or compress more layers")
    hulls = [f.hull() for f in frontiers]
    pos = [0] * len(frontiers)
    choice = [h[0] for h in hulls]
    spent = float(sum(f.cost[c] for f, c in zip(frontiers, choice)))
    heap: list[tuple[float, int]] = []

    def push(layer: int) -> None:
        h, f = hulls[layer], frontiers[layer]
        if pos[layer] + 1 < len(h):
            a, b = h[pos[layer]], h[pos[layer] + 1]
            slope = (f.err2[a] - f.err2[b]) / max(f.cost[b] - f.cost[a], 1)
            heapq.heappush(heap, (-slope, layer))

    for layer in range(len(frontiers)):
        push(layer)
    while heap:
        _, layer = heapq.heappop(heap)
        h, f = hulls[layer], frontiers[layer]
        a, b = h[pos[layer]], h[pos[layer] + 1]
        step = float(f.cost[b] - f.cost[a])
        if spent + step <= budget:
            spent += step
            pos[layer] += 1
            choice[layer] = b
            push(layer)
    return _fill(frontiers, choice, budget - spent)


def _fill(frontiers: Sequence[Frontier], choice: list[int], left: float) -> list[int]:
    """Spend the leftover budget: repeatedly take the single upgrade with the largest error drop that fits."""
    while True:
        best = None
        for layer, f in enumerate(frontiers):
            c = choice[layer]
            fits = np.flatnonzero((f.cost > f.cost[c]) & (f.cost - f.cost[c] <= left))
            if fits.size:
                j = int(fits[np.argmin(f.err2[fits])])
                gain = f.err2[c] - f.err2[j]
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, layer, j)
        if best is None:
            return choice
        _, layer, j = best
        left -= float(frontiers[layer].cost[j] - frontiers[layer].cost[choice[layer]])
        choice[layer] = j


def uniform(frontiers: Sequence[Frontier], budget: float) -> list[int]:
    """Point index per layer at one per-layer ratio (the largest that fits each layer's share of ``budget``).

    Layers never stay dense here; a layer whose share is below its smallest point takes that point.
    """
    total = sum(f.dense for f in frontiers)
    out = []
    for f in frontiers:
        share = f.dense * budget / total
        ok = np.flatnonzero(f.cost[:-1] <= share) if f.refs[-1] is None else np.flatnonzero(f.cost <= share)
        out.append(int(ok[np.argmin(f.err2[ok])]) if ok.size else 0)
    return out
