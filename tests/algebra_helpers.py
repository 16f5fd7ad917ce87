"""Shared builders for the algebra tests: random SeKron tensors in any backend and dtype."""

from __future__ import annotations

from typing import Any

import numpy as np

from sekron import SeKronTensor, Structure, random_sekron

PATTERNS = ("nested", "chain", "ring", "cp", "tucker")
RTOL = {"float32": 2e-4, "float64": 1e-10, "complex128": 1e-10, "complex64": 2e-4}


def make(st: Structure, rank: Any, seed: int, backend: Any, dtype: str) -> SeKronTensor:
    """A random SeKronTensor of ``st`` with factors in ``backend`` (conftest.Backend) and ``dtype``."""
    base = random_sekron(st, rank, seed, dtype=np.complex128 if "complex" in dtype else np.float64)
    return SeKronTensor([backend.array(np.asarray(f), dtype) for f in base.factors], st)


def dense(sk: SeKronTensor) -> np.ndarray:
    W = sk.to_tensor()
    if hasattr(W, "detach"):
        W = W.detach().cpu()
    return np.asarray(W)


def close(actual: Any, expected: np.ndarray, dtype: str) -> None:
    if hasattr(actual, "detach"):
        actual = actual.detach().cpu()
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    scale = max(float(np.abs(expected).max()) if expected.size else 0.0, 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)
