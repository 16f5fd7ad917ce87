"""Arithmetic, inner, norm, conj, astype and round against dense, every pattern, backend and dtype."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from algebra_helpers import PATTERNS, close, dense, make
from conftest import Backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst
from strategies import grids

import sekron
from sekron import Structure

FIXTURES = settings(max_examples=5, suppress_health_check=[HealthCheck.function_scoped_fixture])
# jax compiles every new shape eagerly: it gets one fixed grid per pattern instead of hypothesis draws
JAX_GRID = ((2, 3, 1), (3, 1, 2), (1, 2, 2))


NP_TORCH = [("numpy", "float32"), ("numpy", "float64"), ("numpy", "complex128"), ("pytorch", "float32"),
            ("pytorch", "float64"), ("pytorch", "complex128")]


@pytest.mark.parametrize(("name", "dtype"), NP_TORCH)
@FIXTURES
@given(grid=grids(min_factors=1, max_factors=3, max_order=3, max_size=200, max_cell=4),
       pattern=hst.sampled_from(PATTERNS), ra=hst.integers(1, 3), rb=hst.integers(1, 3))
def test_operations_match_dense(name: str, dtype: str, grid: tuple, pattern: str, ra: int, rb: int) -> None:
    check_operations(Structure(grid, pattern), ra, rb, Backend(name), dtype)


@pytest.mark.parametrize("pattern", ["chain", "tucker"])
def test_operations_match_dense_jax(pattern: str) -> None:
    """jax compiles every new shape eagerly (about 10 s per pattern on the shared CPU): one fixed grid, float64,
    two patterns (the five run on numpy and pytorch)."""
    pytest.importorskip("jax")
    check_operations(Structure(JAX_GRID, pattern), 2, 1, Backend("jax"), "float64")


def check_operations(st: Structure, ra: int, rb: int, backend: Any, dtype: str) -> None:
    pattern = st.pattern
    a, b = make(st, ra, 1, backend, dtype), make(st, rb, 2, backend, dtype)
    A, B = dense(a), dense(b)
    s = a + b
    assert all(s.rank[c] == a.rank[c] + b.rank[c] for c in st.bond_labels)
    close(dense(s), A + B, dtype)
    close(dense(a - b), A - B, dtype)
    close(dense(-a), -A, dtype)
    close(dense(2.5 * a), 2.5 * A, dtype)
    close(dense(a * 2.5), 2.5 * A, dtype)
    close(dense(a / 4), A / 4, dtype)
    h = a * b
    assert all(h.rank[c] == a.rank[c] * b.rank[c] for c in st.bond_labels)
    close(dense(h), A * B, dtype)
    close(sekron.inner(a, b), np.vdot(A, B), dtype)
    close(a.norm(), np.linalg.norm(A), dtype)
    close(dense(a.conj()), np.conj(A), dtype)
    assert sum([a, b]).rank == s.rank
    assert s.structure == st and h.structure == st and s.pattern == pattern
    assert sekron.allclose(a + b, b + a) and not sekron.allclose(a, 1.01 * a)


def test_scalars_and_dtypes(backend: Any) -> None:
    st = Structure([(2, 3), (3, 2)], "chain")
    a = make(st, 2, 0, backend, "float32")
    A = dense(a)
    assert "float32" in str((a * 2.0).dtype)
    z = a * 1j
    assert "complex" in str(z.dtype)
    close(dense(z), 1j * A, "float32")
    close(dense(a * np.float64(3.0)), 3 * A, "float32")
    up = a.astype("float64")
    assert "float64" in str(up.dtype)
    close(dense(up), A, "float32")
    mixed = a + make(st, 1, 3, backend, "float64")
    assert "float64" in str(mixed.dtype)
    with pytest.raises(ValueError, match="imaginary"):
        z.astype("float32")
    with pytest.raises(TypeError, match="dtype"):
        a.astype("int32")


def test_structure_mismatch_and_bad_operands() -> None:
    a = sekron.random_sekron(Structure([(2, 2), (2, 2)], "chain"), 2)
    b = sekron.random_sekron(Structure([(4, 1), (1, 4)], "chain"), 2)
    with pytest.raises(ValueError, match="same structure"):
        a + b
    with pytest.raises(ValueError, match="same structure"):
        sekron.inner(a, b)
    with pytest.raises(TypeError):
        a + 1.0
    with pytest.raises(TypeError):
        a * np.ones((4, 4))
    with pytest.raises(TypeError):
        np.ones((4, 4)) + a
    split = sekron.random_sekron(Structure([(2, 1), (1, 2), (2, 1), (1, 2)], labels=["a", "a", "b", "b"]), 1)
    with pytest.raises(ValueError, match="connected"):
        split + split
    assert sekron.allclose(a, sekron.convert(a, "nested"))  # different labels, compared through the TT


@pytest.mark.parametrize("pattern", PATTERNS)
def test_round_brings_sums_back_down(pattern: str) -> None:
    st = Structure([(2, 3, 2), (3, 2, 2), (2, 2, 3)], pattern)
    a = sekron.random_sekron(st, 2, 0)
    twice = a + a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = sekron.round(twice, tol=1e-8)
    W = 2 * a.to_tensor()
    assert np.linalg.norm(out.to_tensor() - W) <= 1e-8 * np.linalg.norm(W)
    assert all(out.rank[c] <= twice.rank[c] for c in st.bond_labels)
    assert out.rank == a.rank  # the exact ranks come back, for every pattern


def test_round_tucker_and_cp_tolerance() -> None:
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 6, 4))
    st = Structure([(2, 3, 2), (3, 2, 2), (1, 1, 1)], "tucker")
    sk = sekron.decompose(W, st)
    for tol in (0.3, 0.1):
        out = sekron.round(sk, tol=tol)
        assert np.linalg.norm(out.to_tensor() - W) <= tol * np.linalg.norm(W) * (1 + 1e-9)
    capped = sekron.round(sk, rank=2)
    assert max(capped.rank.values()) <= 2
    cp = sekron.random_sekron(Structure([(2, 3), (3, 2), (2, 2)], "cp"), 2, 0)
    noisy = cp + 1e-3 * sekron.random_sekron(cp.structure, 1, 1)
    out = sekron.round(noisy, tol=1e-2)
    ref = noisy.to_tensor()
    assert out.rank["a"] <= 2
    assert np.linalg.norm(out.to_tensor() - ref) <= 1e-2 * np.linalg.norm(ref)
    fit = sekron.round(noisy, rank=2)
    assert fit.rank["a"] == 2 and np.linalg.norm(fit.to_tensor() - ref) < 0.05 * np.linalg.norm(ref)
