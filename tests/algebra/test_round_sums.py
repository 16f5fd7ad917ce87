"""``round`` brings the ranks of sums back down on ring and nested (direct summands that coincide are merged),
checked against dense on hypothesis-drawn structures, numpy and torch, real and complex."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from algebra_helpers import dense, make
from conftest import Backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst
from strategies import grids

import sekron
from sekron import Structure

FIXTURES = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CASES = [("numpy", "float64"), ("numpy", "complex128"), ("pytorch", "float64"), ("pytorch", "complex128")]
TOL = 1e-8


def _round(x: sekron.SeKronTensor, **kw: Any) -> sekron.SeKronTensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested may warn that a cap binds; the error is checked below
        return sekron.round(x, **kw)


def _check(out: sekron.SeKronTensor, W: np.ndarray, tol: float) -> None:
    err = np.linalg.norm(dense(out) - W)
    assert err <= tol * np.linalg.norm(W) + 1e-12 * np.linalg.norm(W), err / np.linalg.norm(W)


@pytest.mark.parametrize(("name", "dtype"), CASES)
@pytest.mark.parametrize("pattern", ["ring", "nested"])
@FIXTURES
@given(grid=grids(min_factors=2, max_factors=4, max_order=2, max_size=300, max_cell=4),
       data=hst.data())
def test_round_of_multiples_returns_the_ranks(name: str, dtype: str, pattern: str, grid: tuple,
                                              data: hst.DataObject) -> None:
    st = Structure(grid, pattern)
    ranks = [data.draw(hst.integers(1, 3)) for _ in st.bond_labels]
    backend = Backend(name)
    a = make(st, ranks, 0, backend, dtype)
    A = dense(a)
    for x, W in ((a + a, 2 * A), (a - 0.5 * a, 0.5 * A), (a + a + (-3) * a, -A)):
        out = _round(x, tol=TOL)
        assert all(out.rank[c] <= a.rank[c] for c in st.bond_labels), (out.rank, a.rank)
        _check(out, W, TOL)
        assert type(out.factors[0]) is type(a.factors[0])


@pytest.mark.parametrize(("name", "dtype"), CASES)
@pytest.mark.parametrize("pattern", ["ring", "nested"])
def test_round_of_mixed_sums(name: str, dtype: str, pattern: str) -> None:
    """a + b + a: the two copies of a merge, b stays; a + b of unrelated tensors keeps its (needed) ranks."""
    st = Structure([(2, 3), (3, 2), (2, 2), (2, 3)], pattern)
    backend = Backend(name)
    a, b = make(st, 2, 1, backend, dtype), make(st, 1, 2, backend, dtype)
    A, B = dense(a), dense(b)
    out = _round(a + b + a, tol=TOL)
    assert all(out.rank[c] <= a.rank[c] + b.rank[c] for c in st.bond_labels), out.rank
    _check(out, 2 * A + B, TOL)
    out = _round(a + b, tol=TOL)
    assert all(out.rank[c] <= a.rank[c] + b.rank[c] for c in st.bond_labels)
    _check(out, A + B, TOL)
    out = _round(a + b + a, tol=0.3)
    _check(out, 2 * A + B, 0.3)


@pytest.mark.parametrize("pattern", ["ring", "nested"])
def test_round_of_cancelling_sum_and_exact_mode(pattern: str) -> None:
    st = Structure([(2, 2), (3, 2), (2, 3)], pattern)
    a, b = sekron.random_sekron(st, 2, 3), sekron.random_sekron(st, 1, 4)
    out = _round(a + b - a, tol=TOL)  # a - a cancels exactly: only b is left
    assert all(out.rank[c] <= b.rank[c] for c in st.bond_labels), out.rank
    _check(out, b.to_tensor(), TOL)
    exact = _round(a + a)  # neither rank nor tol: the merge is exact and is kept
    assert exact.rank == a.rank
    _check(exact, 2 * a.to_tensor(), 0.0)
    zero = _round(a - a, tol=TOL)
    assert np.linalg.norm(zero.to_tensor()) <= 1e-12 * np.linalg.norm(a.to_tensor())
