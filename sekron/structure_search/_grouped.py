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
from . import _baselines as bl
from . import _scoring as sc


def cp_rank(st: Structure, budget: float) -> int:
    """Largest cp rank of ``st`` within ``budget`` parameters."""
    return int(budget // sum(st.factor_sizes))


def spatial_grouped(shape: tuple[int, ...], n_factors: int) -> list[tuple[tuple[int, ...], ...]]:
    """Whole-mode grids of a conv kernel ``(F, C, K_1..K_D)``, D >= 2, that keep its spatial modes in one factor."""
    if len(shape) < 4:
        return []
    spatial = [n for n in range(2, len(shape)) if shape[n] > 1]
    return [g for g in bl.grouped_grids(shape, n_factors)
            if any(all(s[n] == shape[n] for n in spatial) for s in g)]


def whole_mode_families(W: np.ndarray, budget: float, budgets: Sequence[float], top_budget: float,
                        n_factors: Sequence[int], patterns: Sequence[str], s2_pattern: str | None) -> list[sc.Family]:
    """Whole-mode grids: every S = 2 split of the modes into two groups, e.g. ``(F | C kh kw)`` or
    ``(F kh | C kw)``, from spectra; CP and Tucker of the kernel seen as ``(F, C, kh*kw)``."""
    fams: list[sc.Family] = []
    if 2 in n_factors and s2_pattern is not None:
        for grid in bl.grouped_grids(W.shape, 2) if W.ndim >= 3 else []:
            if sum(math.prod(s) for s in grid) <= budget:
                fams.append(sc.two_factor(W, Structure(grid), top_budget, s2_pattern))
    if 3 not in n_factors:
        return fams
    for grid in spatial_grouped(W.shape, 3):
        if sum(math.prod(s) for s in grid) > budget:
            continue
        if "tucker" in patterns:
            T = Structure(grid).rearrange(W)
            fam = sc.caps_family(T, Structure.tucker(T.shape), budgets)
            fam.structure = Structure((*grid, (1,) * W.ndim), "tucker")  # same T, same algorithm, same labels
            fams.append(fam)
        if "cp" in patterns:
            st = Structure(grid, "cp")
            ranks = [cp_rank(st, b) for b in budgets if cp_rank(st, b) >= 1 and b <= 2 * budget]
            if ranks:
                fams.append(sc.cp_family(W, st, ranks))
    return fams
