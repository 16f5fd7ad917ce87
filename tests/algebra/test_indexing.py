"""entries and slicing against dense: digit-compatible slices keep the structure, others go through the TT."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from algebra_helpers import PATTERNS, close, dense, make
from conftest import Backend
from hypothesis import given, settings
from hypothesis import strategies as hst
from strategies import grids

import sekron
from sekron import Structure


@hst.composite
def keys(draw: hst.DrawFn, shape: tuple[int, ...]) -> tuple:
    out: list[Any] = []
    for d in shape:
        kind = draw(hst.sampled_from(["int", "full", "slice"]))
        if kind == "int":
            out.append(draw(hst.integers(-d, d - 1)))
        elif kind == "full":
            out.append(slice(None))
        else:
            start = draw(hst.one_of(hst.none(), hst.integers(-d, d - 1)))
            stop = draw(hst.one_of(hst.none(), hst.integers(-d, d)))
            step = draw(hst.one_of(hst.none(), hst.sampled_from([1, 2, 3, -1, -2])))
            out.append(slice(start, stop, step))
    return tuple(out)


@settings(max_examples=25)
@given(data=hst.data(), grid=grids(min_factors=1, max_factors=3, max_order=3, max_size=300, max_cell=4),
       pattern=hst.sampled_from(PATTERNS))
def test_getitem_matches_dense(data: hst.DataObject, grid: tuple, pattern: str) -> None:
    st = Structure(grid, pattern)
    sk = sekron.random_sekron(st, 2, 0)
    W = sk.to_tensor()
    key = data.draw(keys(st.shape))
    expected = W[key]
    if expected.size == 0:
        with pytest.raises(IndexError, match="selects nothing"):
            sk[key]
        return
    got = sk[key]
    if np.ndim(expected) == 0:
        assert np.ndim(got) == 0
        close(got, expected, "float64")
        return
    assert isinstance(got, sekron.SeKronTensor) and got.shape == expected.shape
    close(got.to_tensor(), expected, "float64")
    if got.pattern != pattern:
        assert got.pattern == "chain"  # a slice that does not follow the digits goes through the TT


CASES = [(n, d, p) for p in PATTERNS
         for n, d in [("numpy", "float32"), ("numpy", "complex128"), ("pytorch", "float64"), ("pytorch", "complex128")]]
CASES += [("jax", "float64", "nested"), ("jax", "float64", "cp")]  # jax compiles every shape: two patterns here


@pytest.mark.parametrize(("name", "dtype", "pattern"), CASES)
def test_entries_and_slices_backends(name: str, dtype: str, pattern: str) -> None:
    if name == "jax":
        pytest.importorskip("jax")
    st = Structure([(2, 3, 1), (3, 1, 2), (1, 2, 2)], pattern)  # the grid of test_arithmetic (jax reuses its kernels)
    sk = make(st, 2, 0, Backend(name), dtype)
    W = dense(sk)
    rng = np.random.default_rng(0)
    idx = np.stack([rng.integers(-d, d, size=20) for d in st.shape], axis=1)
    close(sk.entries(idx), W[tuple(idx.T)], dtype)
    sub = sk[1, :, -2:]
    assert sub.pattern == pattern
    close(dense(sub), W[1, :, -2:], dtype)
    close(dense(sk[1:10:3, ::-1]), W[1:10:3, ::-1], dtype)
    close(sk[3, 4, 1], W[3, 4, 1], dtype)


def test_digit_compatible_slices_keep_the_structure() -> None:
    st = Structure([(2, 2), (2, 2), (2, 2)], "cp")
    sk = sekron.random_sekron(st, 3)
    W = sk.to_tensor()
    for key in [(slice(0, 4), slice(None)), (slice(None, None, 2), 1), (slice(4, 8), slice(1, None, 2)),
                (slice(None, None, -1), 0)]:
        out = sk[key]
        assert out.pattern == "cp" and out.rank == sk.rank
        np.testing.assert_allclose(out.to_tensor(), W[key], atol=1e-12)
    ragged = sk[1:6]
    assert ragged.pattern == "chain"
    np.testing.assert_allclose(ragged.to_tensor(), W[1:6], atol=1e-12)


def test_index_errors() -> None:
    sk = sekron.random_sekron(Structure([(2, 2), (2, 2)], "chain"), 2)
    with pytest.raises(IndexError, match="out of bounds"):
        sk[4, 0]
    with pytest.raises(IndexError, match="too many"):
        sk[0, 0, 0]
    with pytest.raises(TypeError, match="entries"):
        sk[[0, 1]]
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        sk.entries(np.zeros((3, 3), dtype=int))
    with pytest.raises(IndexError, match="out of bounds"):
        sk.entries(np.array([[0, 9]]))
    vec = sekron.random_sekron(Structure([(2,), (2,), (2,)], "chain"), 2)
    np.testing.assert_allclose(vec[1:6].to_tensor(), vec.to_tensor()[1:6], atol=1e-12)
    np.testing.assert_allclose(sk[..., 1].to_tensor(), sk.to_tensor()[..., 1], atol=1e-12)
