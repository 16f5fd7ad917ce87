"""Hypothesis strategies shared by the test modules (importable through pytest's ``pythonpath``)."""

from __future__ import annotations

from hypothesis import strategies as hst


@hst.composite
def grids(draw: hst.DrawFn, min_factors: int = 1, max_factors: int = 4, max_order: int = 4,
          max_size: int = 2000, max_cell: int = 6) -> tuple:
    """Factor-shape grids: S in [min_factors, max_factors], N in [1, max_order], cells in [1, max_cell],
    at most ``max_size`` entries in all (every cell is capped so that the product fits)."""
    S, N = draw(hst.integers(min_factors, max_factors)), draw(hst.integers(1, max_order))
    total, grid = 1, []
    for _ in range(S):
        row = []
        for _ in range(N):
            size = draw(hst.integers(1, max(1, min(max_cell, max_size // total))))
            total *= size
            row.append(size)
        grid.append(tuple(row))
    return tuple(grid)
