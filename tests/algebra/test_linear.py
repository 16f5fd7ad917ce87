"""a @ x, x @ a, a.T and the scipy LinearOperator against dense; cg, gmres and eigsh on the operator."""

from __future__ import annotations

import numpy as np
import pytest
from algebra_helpers import PATTERNS, close, dense, make
from conftest import Backend
from hypothesis import given, settings
from hypothesis import strategies as hst
from scipy.sparse.linalg import cg, eigsh, gmres

import sekron
from sekron import SeKronTensor, Structure


@settings(max_examples=15)
@given(rows=hst.lists(hst.tuples(hst.integers(1, 4), hst.integers(1, 4)), min_size=1, max_size=4),
       pattern=hst.sampled_from(PATTERNS), r=hst.integers(1, 3), K=hst.integers(1, 3))
def test_matmul_matches_dense(rows: list, pattern: str, r: int, K: int) -> None:
    st = Structure(rows, pattern)
    sk = sekron.random_sekron(st, r, 0)
    W = sk.to_tensor()
    M, N = st.shape
    rng = np.random.default_rng(1)
    x, X, y = rng.standard_normal(N), rng.standard_normal((N, K)), rng.standard_normal((K, M))
    close(sk @ x, W @ x, "float64")
    close(sk @ X, W @ X, "float64")
    close(y @ sk, y @ W, "float64")
    close(y[0] @ sk, y[0] @ W, "float64")
    close(sk.T.to_tensor(), W.T, "float64")
    assert sk.T.pattern == pattern


CASES = [(n, d, p) for p in PATTERNS for n, d in [("numpy", "float32"), ("pytorch", "float32"),
                                                  ("pytorch", "complex128")]]
# jax compiles every shape: two patterns here (the five are spread over the algebra tests)
CASES += [("numpy", "complex128", "cp"), ("jax", "float64", "chain"), ("jax", "float32", "ring")]


@pytest.mark.parametrize(("name", "dtype", "pattern"), CASES)
def test_matmul_backends(name: str, dtype: str, pattern: str) -> None:
    if name == "jax":
        pytest.importorskip("jax")
    be = Backend(name)
    st = Structure([(2, 3), (3, 2), (2, 2)], pattern)
    sk = make(st, 2, 0, be, dtype)
    W = dense(sk)
    x = np.random.default_rng(2).standard_normal((12, 2)).astype(dtype)
    out = sk @ be.array(x, dtype)
    assert type(out).__module__.split(".")[0] == type(sk.factors[0]).__module__.split(".")[0]
    close(out, W @ x, dtype)
    close(be.array(x.T, dtype) @ sk, x.T @ W, dtype)
    op = sekron.linear_operator(sk)
    v = x[:, 0]
    close(op.matvec(v), W @ v, dtype)
    close(op.rmatvec(v), np.conj(W).T @ v, dtype)
    close(op.matmat(x), W @ x, dtype)


def _spd(n: int, rng: np.random.Generator) -> np.ndarray:
    m = rng.standard_normal((n, n))
    return m @ m.T + n * np.eye(n)


def test_solvers_run_on_the_operator() -> None:
    rng = np.random.default_rng(0)
    # A = A1 kron B1 + A2 kron B2 with SPD blocks: SPD, Kronecker rank 2 (cp pattern)
    f0 = np.stack([_spd(8, rng), _spd(8, rng)])
    f1 = np.stack([_spd(16, rng), _spd(16, rng)])
    A = SeKronTensor([f0, f1], Structure([(8, 8), (16, 16)], "cp"))
    op = sekron.linear_operator(A)
    b = rng.standard_normal(128)
    x, info = cg(op, b, rtol=1e-10, maxiter=500)
    assert info == 0
    W = A.to_tensor()
    np.testing.assert_allclose(W @ x, b, atol=1e-7 * np.linalg.norm(b))
    xg, info = gmres(op, b, rtol=1e-10, restart=128, maxiter=10)
    assert info == 0 and np.allclose(W @ xg, b, atol=1e-6 * np.linalg.norm(b))
    vals = eigsh(op, k=3, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(vals), np.sort(np.linalg.eigvalsh(W))[-3:], rtol=1e-8)


def test_array_protocol_and_errors() -> None:
    sk = sekron.random_sekron(Structure([(2, 2), (3, 3)], "chain"), 2)
    np.testing.assert_allclose(np.asarray(sk), sk.to_tensor())
    assert np.asarray(sk, dtype=np.float32).dtype == np.float32
    big = sekron.random_sekron(Structure([(2 ** 14, 1), (1, 2 ** 14)], "cp"), 1)
    with pytest.raises(ValueError, match="DENSE_LIMIT"):
        np.asarray(big)
    cube = sekron.random_sekron(Structure([(2, 2, 2)]), 1)
    with pytest.raises(ValueError, match="2-D"):
        cube @ np.ones(2)
    with pytest.raises(ValueError, match=r"\(6,\) or \(6, K\)"):
        sk @ np.ones(5)
