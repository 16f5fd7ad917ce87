"""The faster search's pieces: one shared eigen-decomposition per unfolding, the CP-ALS solves, warm starts,
and one fit per CP problem. Each is checked against the plain computation it replaces."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from sekron import Structure, decompose
from sekron._backend import using
from sekron.linalg.als import INVERSE_ROWS, _solve
from sekron.linalg.svd import gram_top, shared_eigh, shares_eigh, svd_full
from sekron.structure_search import _scoring as sc
from sekron.structure_search._cache import SearchCache


def _projector(V: np.ndarray) -> np.ndarray:
    return V @ V.T


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 9), n=st.integers(2, 9), r=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_shared_eigh_matches_partial_and_ignores_call_order(m: int, n: int, r: int, seed: int) -> None:
    M = np.random.default_rng(seed).standard_normal((1, m, n)) * np.geomspace(1, 1e-3, m)[None, :, None]
    k = min(m, n)
    r = min(r, k)
    plain = gram_top(M, r)
    with shared_eigh(M.size):
        assert shares_eigh(M)
        first = gram_top(M, r)
        gram_top(M, k)
        again = gram_top(M, r)
    with shared_eigh(M.size):  # a fresh memo, asked in another order: the same values, bitwise
        gram_top(M, k)
        other_order = gram_top(M, r)
    assert plain is not None and first is not None and again is not None and other_order is not None
    for a, b in ((first, again), (first, other_order)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[3] == b[3]
    scale = float(np.sum(M * M))
    np.testing.assert_allclose(first[1], plain[1], rtol=1e-9, atol=1e-12 * scale)
    assert first[2] == plain[2]
    assert abs(first[3] - plain[3]) <= 1e-9 * scale
    lam = plain[1][0]
    if r < k and lam[r - 1] - np.append(lam, 0.0)[r] > 1e-6 * lam[0]:  # a gap: the same subspace
        np.testing.assert_allclose(_projector(first[0][0]), _projector(plain[0][0]), atol=1e-6)


def test_shared_eigh_serves_only_large_real_matrices() -> None:
    M = np.random.default_rng(0).standard_normal((1, 6, 10))
    with shared_eigh(M.size + 1):
        assert not shares_eigh(M)  # smaller than the threshold
    with shared_eigh(M.size):
        assert shares_eigh(M)
        got = gram_top(M, 2)
        assert got is not None
        got[0][...] = 0.0  # the caller's copy: the shared decomposition is untouched
        again = gram_top(M, 2)
        assert again is not None and np.any(again[0] != 0.0)
        assert not shares_eigh(M.astype(np.complex128))
        assert not shares_eigh(np.stack([M[0], M[0]]))  # a batch
    assert not shares_eigh(M)  # outside the block


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_shared_svd_is_the_plain_svd_bitwise(m: int, n: int, seed: int) -> None:
    M = np.random.default_rng(seed).standard_normal((1, m, n))
    plain = np.linalg.svd(M, full_matrices=False)
    with shared_eigh(M.size):
        first = svd_full(M)
        first[0][...] = 0.0  # the caller's copy: the stored SVD is untouched
        again = svd_full(np.array(M))  # the same content in another array
        small = svd_full(M[:, :1, :])  # below the block's size: computed, not served
    for a, b in zip(plain, again):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(np.linalg.svd(M[:, :1, :], full_matrices=False), small):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose((plain[0] * plain[1][:, None, :]) @ plain[2], M, atol=1e-10)


def test_rank_capped_search_of_a_matrix_shares_one_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    """TR's first cut of a 1x1 conv is the same square matrix at every cap: one SVD serves them all. In the
    search's block, TT and Tucker truncate it through its (shared) Gram matrix: the same errors to rounding."""
    W = np.random.default_rng(3).standard_normal((12, 12, 1, 1))
    calls = []
    real = np.linalg.svd

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(np.shape(args[0]))
        return real(*args, **kwargs)

    budgets = [20.0, 40.0, 80.0]
    plain = {name: sc.caps_family(W, getattr(Structure, name)(W.shape), budgets) for name in ("tr", "tt", "tucker")}
    monkeypatch.setattr(np.linalg, "svd", counted)
    with using("numpy"), shared_eigh(W.size):
        shared = {name: sc.caps_family(W, getattr(Structure, name)(W.shape), budgets)
                  for name in ("tr", "tt", "tucker")}
    assert calls.count((1, 12, 12)) == 1
    np.testing.assert_array_equal(plain["tr"].err, shared["tr"].err)  # the same SVD: bitwise
    for name in plain:
        np.testing.assert_allclose(plain[name].err, shared[name].err, rtol=1e-12)
        np.testing.assert_array_equal(plain[name].params, shared[name].params)
        np.testing.assert_array_equal(plain[name].ranks, shared[name].ranks)


@pytest.mark.parametrize("pattern, caps", [("chain", {"a": 3, "b": 4, "c": 2}), ("ring", None),
                                           ("tucker", {"a": 3, "b": 2, "c": 2})])
def test_rank_capped_decompose_same_error_with_shared_eigh(pattern: str, caps: dict | None) -> None:
    W = np.random.default_rng(1).standard_normal((6, 5, 3, 3))
    stc = getattr(Structure, {"chain": "tt", "ring": "tr", "tucker": "tucker"}[pattern])(W.shape)
    if caps is None:
        caps = {c: 2 for c in stc.bond_labels}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sk, err = decompose(W, stc, rank=caps, return_error=True)
        with shared_eigh(W.size):
            sk2, err2 = decompose(W, stc, rank=caps, return_error=True)
    assert sk.rank == sk2.rank
    if pattern != "ring":  # TT and Tucker errors do not depend on the signs of the singular vectors
        assert abs(err - err2) <= 1e-10
    # TR's first cut is split into two bonds, so another sign of a vector gives another (as valid) error
    true = np.linalg.norm(W - np.asarray(sk2.to_tensor())) / np.linalg.norm(W)
    assert abs(true - err2) <= 1e-10  # the recorded error is the reconstruction's


@pytest.mark.parametrize("P, R", [(4 * 5 + 1, 5), (4 * 5, 5), (3, 12)])
def test_normal_equation_solve_paths(P: int, R: int) -> None:
    rng = np.random.default_rng(P * R)
    A = rng.standard_normal((R + 3, R))
    V = A.T @ A + 1e-3 * np.eye(R)
    M = rng.standard_normal((P, R))
    X = _solve(V, M)
    np.testing.assert_allclose(X @ V, M, atol=1e-9)  # X V = M, whichever path (inverse when P > 4R)
    assert (P > INVERSE_ROWS * R) == (P == 21)
    with using("pytorch"):
        import torch

        Xt = _solve(tl.tensor(V), tl.tensor(M))
        assert isinstance(Xt, torch.Tensor)
        np.testing.assert_allclose(Xt.numpy(), X, atol=1e-9)


def test_singular_normal_equations_fall_back_to_lu() -> None:
    V = np.diag([1.0, 1.0, 0.0]) - 1e-14 * np.eye(3)  # not positive definite: Cholesky refuses
    M = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(_solve(V, M), np.linalg.solve(V.T, M.T).T)


def _known_rank(shape: tuple[int, ...], R: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return tl.cp_to_tensor((None, [rng.standard_normal((d, R)) for d in shape]))


def _rel(T: np.ndarray, facs: list[np.ndarray]) -> float:
    return float(np.linalg.norm(T - tl.cp_to_tensor((None, facs))) / np.linalg.norm(T))


@pytest.mark.parametrize("shape", [(7, 6, 5), (9, 4, 3, 5)])
def test_warm_start_reaches_a_known_rank_as_well_as_a_cold_start(shape: tuple[int, ...]) -> None:
    T = _known_rank(shape, 4, seed=len(shape))
    low = sc.fast_als(T, 2, 60)
    start = sc.warm_start(T, low, 4)
    for k, f in enumerate(start):
        assert f.shape == (shape[k], 4)
        np.testing.assert_array_equal(f[:, :2], low[k])  # the rank-2 fit is kept as it is
    warm = _rel(T, sc.fast_als(T, 4, 300, tol=1e-12, init=start))
    cold = _rel(T, sc.fast_als(T, 4, 300, tol=1e-12))
    assert warm <= max(cold, 1e-6)
    assert warm < 1e-4


def test_warm_start_beyond_an_unfoldings_rank_is_seeded() -> None:
    T = _known_rank((8, 3, 2), 2, seed=5)  # mode 2 has 2 rows: columns beyond them are random, seeded
    low = sc.fast_als(T, 2, 20)
    a, b = sc.warm_start(T, low, 5), sc.warm_start(T, low, 5)
    for x, y in zip(a, b):
        assert np.all(np.isfinite(x))
        np.testing.assert_array_equal(x, y)


def test_one_fit_per_cp_problem_and_each_family_reproduces_its_error() -> None:
    W = np.random.default_rng(2).standard_normal((6, 5, 3, 3))
    a = Structure([(6, 1, 1, 1), (1, 5, 1, 1), (1, 1, 3, 3)], "cp")
    b = Structure([(1, 5, 1, 1), (1, 1, 3, 3), (6, 1, 1, 1)], "cp")  # the same modes in another order
    cache = SearchCache()
    with cache.using(W):
        fa = sc.cp_family(W, a, [2, 4, 8])
    misses = cache.misses
    with cache.using(W):
        fb = sc.cp_family(W, b, [2, 4, 8])
    assert cache.misses == misses  # the permuted problem is the one already fitted
    fresh = sc.cp_family(W, b, [2, 4, 8])  # no cache: computed again, the same fit
    for x, y in zip(fb.extra or [], fresh.extra or []):  # the same factors, bitwise
        for u, v in zip(x["init"][1], y["init"][1]):
            np.testing.assert_array_equal(u, v)
    # the recorded error is decompose's for the grid that fitted the problem first: another order of the same
    # modes sums the reconstruction in another order, so the errors may differ in the last bit
    np.testing.assert_allclose(fb.err, fresh.err, rtol=1e-13)
    np.testing.assert_array_equal(fb.params, fresh.params)
    np.testing.assert_allclose(fa.err, fb.err, rtol=1e-10)
    assert np.all(np.diff(fa.err) < 0)  # each rank (warm-started from the one below) fits better
    for fam in (fa, fb):
        for i in range(len(fam.params)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                sk, err = decompose(W, fam.structure, return_error=True, **fam.options(i))
            assert abs(err - fam.err[i]) <= 1e-10
            assert sk.n_params == fam.params[i]


def _als_errors(T: np.ndarray, R: int, sweeps: int, extrapolate: bool) -> list[float]:
    return [_rel(T, sc.fast_als(T, R, k, tol=0.0, extrapolate=extrapolate)) for k in range(1, sweeps + 1)]


def test_extrapolated_als_never_raises_the_error_and_gets_further() -> None:
    rng = np.random.default_rng(7)
    A = rng.standard_normal((8, 3))
    collinear = [np.column_stack([A[:, 0], A[:, 0] + 0.1 * A[:, 1], A[:, 2]])] + [
        rng.standard_normal((d, 3)) for d in (7, 6)]  # nearly collinear components: a swamp for plain ALS
    T = tl.cp_to_tensor((None, collinear)) + 1e-3 * rng.standard_normal((8, 7, 6))
    fast = _als_errors(T, 3, 25, True)
    plain = _als_errors(T, 3, 25, False)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(fast))  # a move is kept only when it lowers the error
    assert fast[-1] <= plain[-1]


def test_als_budget_sets_the_sweeps_for_the_block_only() -> None:
    from sekron.structure_search import _scoring as sc

    small = (4 * 4 * 9, 2, 3)  # a small tensor: the flop allowance does not bind
    assert sc._als_iters(*small) == sc.ALS_ITERS
    with sc.als_budget(7, 1e12):
        assert sc._als_iters(*small) == 7
        with sc.als_budget(40, 1e3):  # nested, and the flop allowance still floors at 2 sweeps
            assert sc._als_iters(*small) == 2
        assert sc._als_iters(*small) == 7
    assert sc._als_iters(*small) == sc.ALS_ITERS


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("extrapolate", [False, True])
def test_numpy_cp_als_is_the_backend_loop_bitwise(dtype: type, extrapolate: bool) -> None:
    """cp_als's numpy loop (numpy called directly) gives exactly what the backend-generic loop gives."""
    from sekron.linalg.als import _cp_als_backend, cp_als, dense_mttkrp

    rng = np.random.default_rng(5)
    T = rng.standard_normal((7, 6, 5)).astype(dtype)
    if np.iscomplexobj(T):
        T = T + 1j * rng.standard_normal(T.shape)
    start = [rng.standard_normal((d, 4)).astype(T.dtype) for d in T.shape]
    norm_sq = float(np.real(np.vdot(T, T)))
    with using("numpy"):
        fast = cp_als(dense_mttkrp(T), start, norm_sq, 12, 0.0, order=[2, 0, 1], extrapolate=extrapolate)
        plain = _cp_als_backend(dense_mttkrp(T), list(start), norm_sq, 12, 0.0, [2, 0, 1], None, extrapolate)
    for a, b in zip(fast, plain):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    approx = tl.cp_to_tensor((None, fast))
    assert np.linalg.norm(T - approx) < np.linalg.norm(T)  # and it fits


def test_numpy_cp_als_with_symmetric_grams_follows_the_backend_loop() -> None:
    """Real factors of at least SYRK_ROWS rows get their Gram matrices by a symmetric product: the same fit
    to rounding, and no extra sweep when n_iter is 0 (the factors come back as they are)."""
    from sekron.linalg.als import SYRK_ROWS, _cp_als_backend, cp_als, dense_mttkrp

    rng = np.random.default_rng(6)
    T = rng.standard_normal((SYRK_ROWS + 8, 6, 5))
    start = [rng.standard_normal((d, 3)) for d in T.shape]
    norm_sq = float(np.sum(T * T))
    with using("numpy"):
        fast = cp_als(dense_mttkrp(T), start, norm_sq, 10, 0.0, extrapolate=True)
        plain = _cp_als_backend(dense_mttkrp(T), list(start), norm_sq, 10, 0.0, [0, 1, 2], None, True)
        same = cp_als(dense_mttkrp(T), start, norm_sq, 0, 0.0)
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10 * np.abs(b).max())
    assert all(a is b for a, b in zip(same, start))


@settings(max_examples=30, deadline=None)
@given(R=st.integers(1, 12), P=st.integers(1, 40), seed=st.integers(0, 2**16), singular=st.booleans())
def test_direct_lapack_solve_is_scipys_cholesky(R: int, P: int, seed: int, singular: bool) -> None:
    """_solve's direct potrf / potrs calls give scipy's cho_factor / cho_solve result, bitwise (with at least
    R right-hand sides: the Cholesky inverse times M, the same solution to rounding); a matrix that
    is not positive definite falls back to an LU solve, as before."""
    from scipy.linalg import cho_factor, cho_solve

    rng = np.random.default_rng(seed)
    A = rng.standard_normal((R + 2, R))
    V = A.T @ A + 1e-6 * np.eye(R)
    if singular:
        V[0, 0] = -1.0  # indefinite
    M = rng.standard_normal((P, R))
    got = _solve(V, M)
    if P > INVERSE_ROWS * R:
        np.testing.assert_array_equal(got, M @ np.linalg.inv(V.T))
    elif singular:
        np.testing.assert_array_equal(got, np.linalg.solve(V.T, M.T).T)
    else:
        want = cho_solve(cho_factor(V.T, check_finite=False), M.T, check_finite=False).T
        if P >= R:  # potri + symm: the same solution, to the rounding of the (well conditioned) system
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * float(np.max(np.abs(want))))
            np.testing.assert_allclose(got @ V, M, rtol=0, atol=1e-8 * float(np.max(np.abs(M))))
        else:
            np.testing.assert_array_equal(got, want)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=4), R=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_tree_mttkrp_is_the_dense_mttkrp(shape: list[int], R: int, seed: int) -> None:
    """Every mode's MTTKRP of the dimension tree equals the unfolding times the Khatri-Rao product, also for
    extrapolated factors whose partial product is moved along with them instead of recomputed."""
    rng = np.random.default_rng(seed)
    T = rng.standard_normal(shape)
    mttkrp, order = sc._tree_mttkrp(T)
    assert sorted(order) == list(range(T.ndim)) and T.shape[order[0]] == max(T.shape)

    def dense(facs: list[np.ndarray], k: int) -> np.ndarray:
        with using("numpy"):
            return tl.unfold(T, k) @ tl.tenalg.khatri_rao(facs, skip_matrix=k)

    a = [rng.standard_normal((d, R)) for d in shape]
    b = [rng.standard_normal((d, R)) for d in shape]
    scale = np.prod([np.linalg.norm(f) for f in a + b]) * np.linalg.norm(T) + 1.0
    for facs in (a, b):
        for k in order:
            np.testing.assert_allclose(mttkrp(facs, k), dense(facs, k), atol=1e-12 * scale)
    step = 1.7
    moved = [x + step * (y - x) for x, y in zip(a, b)]
    mttkrp.extrapolated(a, b, moved, step)  # type: ignore[attr-defined]
    for k in order:
        np.testing.assert_allclose(mttkrp(moved, k), dense(moved, k), atol=1e-10 * scale * (1 + step) ** T.ndim)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 40), R=st.integers(1, 8), decay=st.floats(0.0, 12.0), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float64, np.float32, np.complex128]))
def test_orthonormal_columns_of_a_gram_truncation(m: int, R: int, decay: float, seed: int, dtype: type) -> None:
    """The tall branch of a Gram truncation orthonormalises Y = M V_R (Cholesky QR, or Householder QR when
    that does not apply): orthonormal columns spanning Y's, each along its own column of Y."""
    from sekron.decomposition._svd_based import _orthonormal_columns
    from sekron.linalg.svd import gram_eigh

    rng = np.random.default_rng(seed)
    n = max(1, min(R + 2, m // 2))
    M = rng.standard_normal((1, m, n)) * np.logspace(0, -decay, n)[None, None, :]
    if np.iscomplexobj(np.empty(0, dtype)):
        M = M + 1j * rng.standard_normal(M.shape) * np.logspace(0, -decay, n)[None, None, :]
    M = M.astype(dtype)
    V, _, tall = gram_eigh(M)
    assert tall or m == n == 1
    R = min(R, n)
    Y = M @ V[:, :, :R]
    Q = _orthonormal_columns(Y)
    eps = float(np.finfo(Q.real.dtype).eps)
    G = np.swapaxes(Q, 1, 2).conj() @ Q
    assert np.max(np.abs(G - np.eye(R))) <= 100 * m * eps
    Qh, _ = np.linalg.qr(Y)
    # the same span as Householder's basis, when Y is well conditioned
    s = np.linalg.svd(Y[0], compute_uv=False)
    if s[-1] > 1e3 * np.sqrt(eps) * s[0]:
        P1, P2 = Q[0] @ Q[0].conj().T, Qh[0] @ Qh[0].conj().T
        assert np.max(np.abs(P1 - P2)) <= (1e-3 if dtype == np.float32 else 1e-8)
    same = _orthonormal_columns(Y, householder=True)
    np.testing.assert_allclose(np.abs(same), np.abs(Qh), atol=1e-4 if dtype == np.float32 else 1e-10)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 8), extra=st.integers(0, 12), r=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_shared_projection_is_the_leading_rows_of_vt_m(m: int, extra: int, r: int, seed: int) -> None:
    """The shared V^T M hands out the product of gram_top's leading vectors with M, whatever the call order;
    a tall matrix, or one outside the block, is not served."""
    from sekron.linalg.svd import shared_projection

    M = np.random.default_rng(seed).standard_normal((1, m, m + extra))
    r = min(r, m)
    assert shared_projection(M, r) is None
    with shared_eigh(M.size):
        got = gram_top(M, r)
        assert got is not None
        P = shared_projection(M, r)
        P_all = shared_projection(M, m)
        assert shared_projection(np.swapaxes(M, 1, 2), 1) is None or m + extra == m  # tall: not served
    assert P is not None and P_all is not None
    np.testing.assert_allclose(P[0], got[0][0].T @ M[0], atol=1e-12 * np.abs(M).sum())
    np.testing.assert_array_equal(P, P_all[:, :r])


# --- issue 16, third pass: place-matched views, the fit's own error, tall problems on their QR -------------
def test_views_of_the_frozen_weight_are_matched_by_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within shared_eigh(frozen=W), a view into W is found again by where it lies, with no comparison of
    contents, and gets exactly the values a content match (and a block without ``frozen``) gives."""
    import sekron.linalg.svd as svd

    W = np.random.default_rng(3).standard_normal((8, 6, 5))
    with shared_eigh(W.size):
        plain = gram_top(W.reshape(1, 8, 30), 3)
        plain_proj = svd.shared_projection(W.reshape(1, 8, 30), 3)
    calls = []
    real_equal = np.array_equal
    monkeypatch.setattr(svd.np, "array_equal", lambda a, b: calls.append(1) or real_equal(a, b))
    with shared_eigh(W.size, frozen=W):
        first = gram_top(W.reshape(1, 8, 30), 3)
        n = len(calls)
        again = gram_top(W.reshape(1, 8, 30), 3)  # another view object, the same place
        proj = svd.shared_projection(W.reshape(1, 8, 30), 3)
        proj_again = svd.shared_projection(W.reshape(1, 8, 30), 3)
        assert len(calls) == n  # found by place: nothing compared
        copied = gram_top(W.reshape(1, 8, 30).copy(), 3)  # not in W's memory: matched by content
        assert len(calls) > n
    assert plain is not None and first is not None and again is not None and copied is not None
    assert plain_proj is not None and proj is not None and proj_again is not None
    for got in (first, again, copied):
        for a, b in zip(got[:2], plain[:2]):
            np.testing.assert_array_equal(a, b)
        assert got[2:] == plain[2:]
    np.testing.assert_array_equal(proj, plain_proj)
    np.testing.assert_array_equal(proj_again, plain_proj)


def test_frozen_value_is_computed_once_per_place_only_in_the_block() -> None:
    from sekron.linalg.svd import frozen_value

    W = np.random.default_rng(4).standard_normal((5, 7))
    count = []

    def norm() -> float:
        count.append(1)
        return float(np.sum(W * W))

    assert frozen_value("n", W, norm) == frozen_value("n", W, norm) and len(count) == 2  # no block
    with shared_eigh(W.size, frozen=W):
        values = {frozen_value("n", W, norm), frozen_value("n", W.reshape(7, 5), norm), frozen_value("n", W, norm)}
        assert len(count) == 4  # W once, its (differently shaped) view once
        frozen_value("n", W.copy(), norm)
        frozen_value("n", W.copy(), norm)
        assert len(count) == 6  # a copy is another array: computed each time
    assert values == {float(np.sum(W * W))}


@pytest.mark.parametrize("pattern", ["chain", "ring", "tucker"])
def test_decompose_in_a_frozen_block_is_bitwise_the_plain_block(pattern: str) -> None:
    W = np.random.default_rng(5).standard_normal((12, 6, 3, 3))
    st_ = getattr(Structure, {"chain": "tt", "ring": "tr", "tucker": "tucker"}[pattern])(W.shape)
    caps = {c: 2 + i for i, c in enumerate(st_.bond_labels)}
    out = []
    for frozen in (None, W):
        with shared_eigh(W.size, frozen=frozen), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out.append([decompose(W, st_, rank=caps, return_error=True) for _ in range(2)])
    for (sk_a, e_a), (sk_b, e_b) in zip(out[0], out[1]):
        assert e_a == e_b
        for fa, fb in zip(sk_a.factors, sk_b.factors):
            np.testing.assert_array_equal(np.asarray(fa), np.asarray(fb))


@settings(max_examples=20, deadline=None)
@given(extra=st.lists(st.integers(2, 4), min_size=2, max_size=3), rows=st.integers(2, 5), R=st.integers(1, 6),
       extrapolate=st.booleans(), seed=st.integers(0, 2**16))
def test_tall_cp_problem_runs_on_its_qr_compression(extra: list[int], rows: int, R: int, extrapolate: bool,
                                                    seed: int) -> None:
    """A CP problem whose largest mode is TALL times the product of the others or more is fitted on its
    QR-compressed tensor: the same ALS iterates as on T itself, to rounding; the fit's own error is the
    reconstruction's."""
    import math

    p = math.prod(extra)
    shape = (sc.TALL * p * rows, *extra)
    rng = np.random.default_rng(seed)
    T = _known_rank(shape, 3, seed) + 0.1 * rng.standard_normal(shape)
    assert sc._compressed(T) is not None and sc._compressed(T[: p * sc.TALL - 1]) is None
    info: dict[str, float] = {}
    small = sc.fast_als(T, R, 10, tol=0.0, extrapolate=extrapolate, info=info)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sc, "TALL", math.inf)
        assert sc._compressed(T) is None
        plain = sc.fast_als(T, R, 10, tol=0.0, extrapolate=extrapolate)
    for a, b in zip(small, plain):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7 * float(np.max(np.abs(b))))
    assert abs(info["error"] - _rel(T, small)) <= 1e-9
    assert abs(_rel(T, small) - _rel(T, plain)) <= 1e-9


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(2, 6), min_size=3, max_size=4), R=st.integers(1, 5), sweeps=st.integers(1, 12),
       extrapolate=st.booleans(), seed=st.integers(0, 2**16))
def test_cp_als_info_is_the_reconstruction_error(shape: list[int], R: int, sweeps: int, extrapolate: bool,
                                                 seed: int) -> None:
    """cp_als(info=...) reports the relative error of the factors it returns (the last sweep's MTTKRP and the
    Grams without the ridge), whichever of the plain or the extrapolated factors it kept."""
    from sekron.linalg.als import cp_als, dense_mttkrp

    rng = np.random.default_rng(seed)
    T = rng.standard_normal(tuple(shape))
    start = [rng.standard_normal((d, R)) for d in shape]
    info: dict[str, float] = {}
    U = cp_als(dense_mttkrp(T), start, float(np.sum(T * T)), sweeps, 0.0, extrapolate=extrapolate, info=info)
    assert abs(info["error"] - _rel(T, U)) <= 1e-9
    assert "error" not in (none := {}) and cp_als(dense_mttkrp(T), start, 1.0, 0, 0.0, info=none) == start


def test_cp_family_errors_are_decomposes_and_tiny_ones_are_replayed() -> None:
    """A cp family's errors come from the fits themselves (no reconstruction), equal to decompose's to rounding;
    below REPLAY_BELOW they are decompose's own, bitwise."""
    rng = np.random.default_rng(6)
    st_ = Structure([(6, 1, 1, 1), (1, 5, 1, 1), (1, 1, 3, 3)], "cp")
    W = rng.standard_normal((6, 5, 3, 3))
    exact = _known_rank((6, 5, 9), 2, 7).reshape(6, 5, 3, 3)
    for weight, tiny in ((W, False), (exact, True)):
        fam = sc.cp_family(weight, st_, [2, 4])
        for i in range(len(fam.params)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                sk, err = decompose(weight, fam.structure, return_error=True, **fam.options(i))
            assert sk.n_params == fam.params[i] and list(sk.rank.values()) == list(fam.ranks[i])
            if tiny:
                assert fam.err[i] < sc.REPLAY_BELOW and err == fam.err[i]
            else:
                assert fam.err[i] >= sc.REPLAY_BELOW and abs(err - fam.err[i]) <= 1e-12


def test_one_fit_per_cp_problem_within_a_search_without_a_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    W = np.random.default_rng(8).standard_normal((6, 5, 3, 3))
    a = Structure([(6, 1, 1, 1), (1, 5, 1, 1), (1, 1, 3, 3)], "cp")
    b = Structure([(1, 5, 1, 1), (1, 1, 3, 3), (6, 1, 1, 1)], "cp")  # the same CP problem
    fits = []
    real = sc.fast_als
    monkeypatch.setattr(sc, "fast_als", lambda *args, **kw: fits.append(1) or real(*args, **kw))
    with shared_eigh(W.size, frozen=W):
        fa = sc.cp_family(W, a, [2, 4])
        fb = sc.cp_family(W, b, [2, 4])
    assert len(fits) == 2  # fitted for the first family only
    np.testing.assert_array_equal(fa.err, fb.err)
    fresh = sc.cp_family(W, b, [2, 4])  # outside a search: fitted again (its SVD start not from the shared
    assert len(fits) == 4                 # eigen-decompositions: the same fit to rounding)
    np.testing.assert_allclose(fresh.err, fb.err, rtol=1e-12)
