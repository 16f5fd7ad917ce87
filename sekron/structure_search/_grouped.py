"""Whole-mode grids for the structure search: factors that own whole modes of the weight.

These are the classical formats of a reshaped weight, e.g. CP and Tucker of a conv kernel
seen as ``(F, C, kh*kw)``, and every two-group split of the modes (``(F | C kh kw)``,
``(F kh | C kw)``, ...). See :mod:`sekron.structure_search`, search space item 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..structure import Structure
from . import _scoring as sc

#: cp (ALS, the costliest scorer) is scored only at budgets up to this multiple of the target
#: budget: the larger budgets of a ladder serve the frontier, where cp is rarely chosen
CP_BUDGET_FACTOR = 2.0


def cp_rank(st: Structure, budget: float) -> int:
    """Largest cp rank of ``st`` within ``budget`` parameters."""
    return int(budget // sum(st.factor_sizes))


def cp_ranks(st: Structure, budgets: Sequence[float], budget: float, below: float | None = None) -> list[int]:
    """The cp ranks of ``st`` worth scoring: one per budget of the ladder up to ``CP_BUDGET_FACTOR * budget``
    (and, with ``below``, under it: compress passes the dense size, where the dense layer itself, exact,
    is always a choice, so that a fit of its costliest rank would not compress)."""
    return [cp_rank(st, b) for b in budgets
            if cp_rank(st, b) >= 1 and b <= CP_BUDGET_FACTOR * budget and (below is None or b < below)]


def set_partitions(items: Sequence[int], blocks: int) -> list[list[list[int]]]:
    """Partitions of ``items`` into ``blocks`` non-empty blocks (blocks in order of their first item).

    Examples
    --------
    >>> len(set_partitions(range(4), 3))
    6
    """
    items = list(items)
    if blocks == 0:
        return [[]] if not items else []
    if len(items) < blocks:
        return []
    first, rest = items[0], items[1:]
    out = [[[first], *p] for p in set_partitions(rest, blocks - 1)]
    for p in set_partitions(rest, blocks):
        for i in range(len(p)):
            out.append([*p[:i], [first, *p[i]], *p[i + 1:]])
    return out


def grouped_grids(shape: Sequence[int], n_factors: int) -> list[tuple[tuple[int, ...], ...]]:
    """Grids in which every factor owns whole modes, and some factor owns two or more.

    These are the classical formats of a reshaped weight, e.g. CP of a kernel
    ``(F, C, kh, kw)`` seen as ``(F, C, kh*kw)``: ``(F,1,1,1) x (1,C,1,1) x (1,1,kh,kw)``.

    Examples
    --------
    >>> grouped_grids((4, 5, 3, 3), 3)[0]
    ((4, 1, 1, 1), (1, 5, 1, 1), (1, 1, 3, 3))
    """
    live = [n for n, d in enumerate(shape) if d > 1]
    out = []
    for part in sorted(set_partitions(live, n_factors), key=lambda p: [len(b) for b in p]):
        if all(len(block) <= 1 for block in part):
            continue
        out.append(tuple(tuple(shape[n] if n in block else 1 for n in range(len(shape))) for block in part))
    return out


def spatial_grouped(shape: tuple[int, ...], n_factors: int) -> list[tuple[tuple[int, ...], ...]]:
    """Whole-mode grids of a conv kernel ``(F, C, K_1..K_D)``, D >= 2, that keep its spatial modes in one factor."""
    if len(shape) < 4:
        return []
    spatial = [n for n in range(2, len(shape)) if shape[n] > 1]
    return [g for g in grouped_grids(shape, n_factors)
            if any(all(s[n] == shape[n] for n in spatial) for s in g)]


def whole_mode_families(W: np.ndarray, budget: float, budgets: Sequence[float], top_budget: float,
                        n_factors: Sequence[int], patterns: Sequence[str], s2_pattern: str | None,
                        octaves: bool = False, select: float | None = None) -> list[sc.Family]:
    """Whole-mode grids: every S = 2 split of the modes into two groups, e.g. ``(F | C kh kw)`` or
    ``(F kh | C kw)``, from spectra; CP and Tucker of the kernel seen as ``(F, C, kh*kw)``.

    The grids are admitted at ``select`` (default ``budget``); ``budget`` sets the cp ranks."""
    select = budget if select is None else select
    fams: list[sc.Family] = []
    if 2 in n_factors and s2_pattern is not None:
        norm2 = sc.sq_norm(W)
        for grid in grouped_grids(W.shape, 2) if W.ndim >= 3 else []:
            if sum(math.prod(s) for s in grid) <= select:
                fams.append(sc.two_factor(W, Structure(grid), top_budget, s2_pattern, norm2))
    if 3 not in n_factors:
        return fams
    for grid in spatial_grouped(W.shape, 3):
        if sum(math.prod(s) for s in grid) > select:
            continue
        if "tucker" in patterns:
            T = Structure(grid).rearrange(W)
            fam = sc.caps_family(T, Structure.tucker(T.shape), budgets)
            fam.structure = Structure((*grid, (1,) * W.ndim), "tucker")  # same T, same algorithm, same labels
            fams.append(fam)
        if "cp" in patterns:
            st = Structure(grid, "cp")
            ranks = cp_ranks(st, budgets, budget, W.size if octaves else None)
            if ranks:
                fams.append(sc.cp_family(W, st, ranks, octaves))
    return fams
