"""cross: a SeKron tensor from samples, every pattern, against the dense function; maxvol's invariants."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from algebra_helpers import PATTERNS
from hypothesis import given, settings
from hypothesis import strategies as hst

import sekron
from sekron import Structure
from sekron.algebra import maxvol, rect_maxvol


def smooth(idx: np.ndarray) -> np.ndarray:
    x = idx / 15.0
    return np.exp(-x[:, 0]) * np.cos(x[:, 1] + x[:, 2]) + 0.5 * x[:, 2]  # smooth, low rank


def grid_values(shape: tuple[int, ...]) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(d) for d in shape], indexing="ij"), -1).reshape(-1, len(shape))
    return smooth(idx).reshape(shape)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_cross_every_pattern(pattern: str) -> None:
    st = Structure([(2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)], pattern)  # a 16^3 grid
    calls = []

    def fn(idx: np.ndarray) -> np.ndarray:
        assert idx.dtype == np.int64 and idx.shape[1] == 3
        calls.append(len(idx))
        return smooth(idx)

    sk, info = sekron.cross(fn, st, tol=1e-6, random_state=0, return_info=True)
    W = grid_values(st.shape)
    assert sk.structure == st
    err = np.linalg.norm(sk.to_tensor() - W) / np.linalg.norm(W)
    assert err < 1e-5
    assert info["evals"] == sum(calls) and info["evals"] < W.size
    assert info["error"] < 1e-5 and info["n_test"] == 1000


def test_cross_torch_function_and_info() -> None:
    torch = pytest.importorskip("torch")
    st = Structure([(4, 4), (4, 4), (4, 4)], "chain")  # 64 x 64

    def fn(idx: np.ndarray):
        x = torch.as_tensor(idx, dtype=torch.float32) / 63
        return torch.exp(-x[:, 0] * x[:, 1])

    sk, info = sekron.cross(fn, st, tol=1e-4, random_state=1, return_info=True, n_test=200)
    assert isinstance(sk.factors[0], torch.Tensor) and sk.factors[0].dtype == torch.float32
    i, j = np.meshgrid(np.arange(64) / 63, np.arange(64) / 63, indexing="ij")
    W = np.exp(-i * j)
    assert np.linalg.norm(sk.to_tensor().numpy() - W) / np.linalg.norm(W) < 1e-3
    assert set(info) >= {"evals", "evals_fit", "error", "sweeps", "ranks", "stop", "seconds"}
    capped = sekron.cross(fn, st, tol=1e-4, rank=2, random_state=1)
    assert max(capped.rank.values()) <= 2


def test_cross_max_evals_and_errors() -> None:
    st = Structure([(2, 2, 2)] * 4, "chain")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, info = sekron.cross(smooth, st, tol=1e-12, max_evals=1500, n_test=100, return_info=True, random_state=0)
    assert info["evals"] <= 1500 and info["stop"] == "max_evals"
    assert any("max_evals" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="tol"):
        sekron.cross(smooth, st, tol=2.0)
    with pytest.raises(TypeError, match="Structure"):
        sekron.cross(smooth, [(2, 2)])
    with pytest.raises(ValueError, match="NaN"):
        sekron.cross(lambda idx: np.full(len(idx), np.nan), st)
    with pytest.raises(ValueError, match="one value per multi-index"):
        sekron.cross(lambda idx: np.ones(3), st)


@settings(max_examples=30)
@given(n=hst.integers(1, 40), r=hst.integers(1, 6), seed=hst.integers(0, 100), extra=hst.integers(0, 4))
def test_maxvol_invariants(n: int, r: int, seed: int, extra: int) -> None:
    r = min(r, n)
    A = np.random.default_rng(seed).standard_normal((n, r))
    rows, B = maxvol(A)
    assert len(set(rows.tolist())) == r
    np.testing.assert_allclose(B[rows], np.eye(r), atol=1e-8)
    assert np.abs(B).max() <= 1.05 + 1e-9
    np.testing.assert_allclose(B @ A[rows], A, atol=1e-8)
    rows2, B2 = rect_maxvol(A, min_add=min(extra, n - r), max_add=extra)
    assert len(rows2) == r + min(extra, n - r) and len(set(rows2.tolist())) == len(rows2)
    np.testing.assert_allclose(B2 @ A[rows2], A, atol=1e-8)
