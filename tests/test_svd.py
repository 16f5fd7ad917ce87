"""The SVD registry: every variant is a thin SVD of a batch; "auto" picks Gram only where it is safe."""

from __future__ import annotations

import numpy as np
import pytest

from sekron._backend import using
from sekron.linalg.svd import SVD_FUNCTIONS, choose_svd, gram_eigh, svd_full, svd_gram, svd_randomized


def _batch(shape: tuple, dtype: str = "float64", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    M = rng.standard_normal(shape)
    if "complex" in dtype:
        M = M + 1j * rng.standard_normal(shape)
    return M.astype(dtype)


@pytest.mark.parametrize("name", sorted(SVD_FUNCTIONS))
@pytest.mark.parametrize("shape", [(1, 5, 40), (3, 40, 5), (2, 7, 7)])
@pytest.mark.parametrize("dtype", ["float64", "complex128"])
def test_variants_are_thin_svds(name: str, shape: tuple, dtype: str) -> None:
    M = _batch(shape, dtype)
    U, s, Vh = SVD_FUNCTIONS[name](M, None, 0)
    k = min(shape[1:])
    assert U.shape == (shape[0], shape[1], k) and s.shape == (shape[0], k) and Vh.shape == (shape[0], k, shape[2])
    np.testing.assert_allclose(U @ (s[..., None] * Vh), M, atol=1e-10)
    eye = np.broadcast_to(np.eye(k), (shape[0], k, k))
    np.testing.assert_allclose(np.conj(np.swapaxes(U, 1, 2)) @ U, eye, atol=1e-10)
    assert np.all(np.diff(s, axis=-1) <= 1e-10)  # decreasing
    np.testing.assert_allclose(s, np.linalg.svd(M, compute_uv=False), rtol=1e-8, atol=1e-10)


def test_randomized_keeps_rank_plus_oversampling_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    M = (rng.standard_normal((1, 60, 5)) @ rng.standard_normal((1, 5, 80)))  # exact rank 5
    U, s, _Vh = svd_randomized(M, 3, 7)
    assert U.shape == (1, 60, 13) and s.shape == (1, 13)
    np.testing.assert_allclose(s[0, :5], np.linalg.svd(M[0], compute_uv=False)[:5], rtol=1e-8)
    _U2, s2, _ = svd_randomized(M, 3, 7)
    np.testing.assert_array_equal(s, s2)
    full = svd_randomized(M, 55, 0)  # rank + oversampling >= min(m, n): the full SVD
    assert full[1].shape == (1, 60)


@pytest.mark.parametrize("shape", [(2, 6, 50), (2, 50, 6)])
def test_gram_eigh_gives_squared_singular_values(shape: tuple) -> None:
    M = _batch(shape)
    V, lam, tall = gram_eigh(M)
    assert tall == (shape[1] > shape[2])
    np.testing.assert_allclose(np.sqrt(np.maximum(lam, 0)), np.linalg.svd(M, compute_uv=False), rtol=1e-10)
    vecs = np.linalg.svd(M)[2].conj().swapaxes(1, 2) if tall else np.linalg.svd(M)[0]
    # the same singular subspaces (up to sign): |<v_i, w_i>| = 1
    overlap = np.abs(np.sum(np.conj(V) * vecs[..., : V.shape[-1]], axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-8)


def test_auto_rules() -> None:
    f64, f32 = np.dtype("float64"), np.dtype("float32")
    assert choose_svd("auto", (1, 16, 4096), f64, None) is svd_gram  # wide, no tol
    assert choose_svd("auto", (1, 4096, 16), f64, None) is svd_gram  # tall
    assert choose_svd("auto", (1, 30, 40), f64, None) is svd_full  # square-ish: plain SVD
    assert choose_svd("auto", (1, 16, 4096), f64, 1e-6) is svd_gram  # 1e-12 > 100 * eps * 16
    assert choose_svd("auto", (1, 64, 4096), f64, 1e-7) is svd_full  # squaring would bite
    assert choose_svd("auto", (1, 16, 4096), f32, 1e-3) is svd_full
    assert choose_svd("auto", (1, 16, 4096), f32, 0.1) is svd_gram
    assert choose_svd("full", (1, 16, 4096), f64, None) is svd_full
    assert choose_svd(svd_randomized, (1, 2, 2), f64, None) is svd_randomized


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"svd must be 'auto', a callable, or one of \['full', 'gram', 'randomized'\]"):
        choose_svd("lanczos", (1, 2, 2), np.dtype("float64"), None)


def test_full_on_backends(backend) -> None:
    M = _batch((2, 4, 9))
    for fn in (svd_full, svd_gram):
        with using(backend.name):  # internal helpers run under the caller's backend (see sekron._backend)
            U, s, _Vh = fn(backend.array(M))
        assert type(U) is type(backend.array(M))
        np.testing.assert_allclose(backend.numpy(s), np.linalg.svd(M, compute_uv=False), rtol=1e-8)
