"""The size budget (sekron.set_max_elements) also guards the element-wise product and slicing."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import sekron


@pytest.fixture
def small_budget() -> Iterator[None]:
    old = sekron.set_max_elements(1000)
    try:
        yield
    finally:
        sekron.set_max_elements(old)


def test_hadamard_checks_the_product_size_first(small_budget: None) -> None:
    st = sekron.Structure([(2, 3), (3, 2), (2, 2), (2, 2)], "nested")
    a = sekron.random_sekron(st, 3, 0)
    assert a.n_params < 1000
    with pytest.raises(ValueError, match=r"element-wise product.*size budget.*sekron.round"):
        a * a * a


def test_hadamard_within_the_budget_matches_dense() -> None:
    st = sekron.Structure([(2, 3), (3, 2)], "chain")
    a, b = sekron.random_sekron(st, 2, 0), sekron.random_sekron(st, 3, 1)
    np.testing.assert_allclose((a * b).to_tensor(), a.to_tensor() * b.to_tensor(), rtol=1e-12, atol=1e-12)


def test_slicing_a_huge_mode_is_refused_before_allocating(small_budget: None) -> None:
    st = sekron.Structure([(2,)] * 24, "chain")  # one mode of 2**24 entries, over the budget of 1000
    a = sekron.random_sekron(st, 1, 0)
    with pytest.raises(ValueError, match=r"slice.*size budget"):
        a[1:]
