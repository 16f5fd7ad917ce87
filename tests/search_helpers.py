"""Shared by the search-cache tests: a kernel with a decaying spectrum, and bitwise equality of families."""

from __future__ import annotations

import numpy as np


def decaying_kernel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A random kernel whose first unfolding's singular values decay by 0.7 per index (like a trained one)."""
    W = rng.standard_normal(shape)
    U, s, Vh = np.linalg.svd(W.reshape(shape[0], -1), full_matrices=False)
    return ((U * (s * 0.7 ** np.arange(s.size))) @ Vh).reshape(shape)


def assert_same_families(a: list, b: list) -> None:
    """The families are the same, bit for bit: cached values must be the computed ones."""
    assert len(a) == len(b)
    for fa, fb in zip(a, b):
        assert fa.structure == fb.structure and fa.structure.pattern == fb.structure.pattern
        assert (fa.kind, fa.baseline) == (fb.kind, fb.baseline)
        np.testing.assert_array_equal(fa.params, fb.params)
        np.testing.assert_array_equal(fa.err, fb.err)
        np.testing.assert_array_equal(fa.ranks, fb.ranks)
        for i in range(len(fa.params)):
            oa, ob = fa.options(i), fb.options(i)
            assert oa.keys() == ob.keys() and oa["rank"] == ob["rank"]
            for x, y in zip(oa["init"][1] if "init" in oa else [], ob["init"][1] if "init" in ob else []):
                np.testing.assert_array_equal(x, y)
