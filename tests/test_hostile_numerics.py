"""Hostile numerics (issue 11): rank-deficient cp, extreme magnitudes, half precision, unreachable tolerances,
unchecked options, allocation budgets and the search workflow across frameworks. Each failed before its fix.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as hs

import sekron
from sekron.conversions import convert, to_cp, to_tt

CP3 = sekron.Structure([(4, 1, 1), (1, 4, 1), (1, 1, 4)], "cp")


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Relative error at unit scale (no under- or overflow whatever the magnitude)."""
    s = float(np.max(np.abs(b)))
    return float(np.linalg.norm(a / s - b / s) / np.linalg.norm(b / s))


def rng_tensor(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


# --- cp on rank-deficient and extreme data ------------------------------------------------------


CP_MIXED = sekron.Structure([(2, 3), (3, 2), (2, 2)], "cp")


def test_cp_rank_above_the_data_rank() -> None:
    rng = np.random.default_rng(0)
    W = sekron.SeKronTensor([rng.standard_normal((1, *fs)) for fs in CP_MIXED.factor_shapes], CP_MIXED).to_tensor()
    for R in (2, 3, 4):  # W is exactly Kronecker rank 1: ALS's normal equations are singular
        sk, err = sekron.decompose(W, CP_MIXED, rank=R, random_state=0, return_error=True)
        assert err < 1e-6 and rel(sk.to_tensor(), W) < 1e-6


def test_cp_with_tol_on_a_numerically_low_rank_tensor() -> None:
    i = np.arange(12)
    W = 1.0 / (1 + i[:, None] + i[None, :])  # Hilbert-like: numerically low rank
    sk, err = sekron.decompose(W, CP_MIXED, tol=1e-6, random_state=0, return_error=True)
    assert err <= 1e-6 and rel(sk.to_tensor(), W) <= 1e-6


@pytest.mark.parametrize("pattern", ["nested", "chain", "ring", "cp", "tucker"])
def test_the_zero_tensor(pattern: str) -> None:
    st = sekron.Structure([(2, 2, 1), (2, 1, 2), (1, 2, 2)], pattern)
    sk, err = sekron.decompose(np.zeros(st.shape), st, rank=2, return_error=True)
    assert err == 0.0 and set(sk.rank.values()) == {1}
    assert not np.any(sk.to_tensor()) and sk.to_tensor().shape == st.shape


# --- magnitudes ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e155, 1e300])
@pytest.mark.parametrize("pattern", ["nested", "chain", "cp", "tucker"])
def test_decompose_at_extreme_scales_matches_unit_scale(scale: float, pattern: str) -> None:
    st = sekron.Structure([(2, 2, 2), (2, 2, 2), (2, 2, 1)], pattern)
    W = rng_tensor(st.shape)
    ref, ref_err = sekron.decompose(W, st, rank=2, random_state=0, return_error=True)
    sk, err = sekron.decompose(W * scale, st, rank=2, random_state=0, return_error=True)
    assert err == pytest.approx(ref_err, rel=1e-6)
    assert rel(sk.to_tensor(), W * scale) == pytest.approx(ref_err, rel=1e-6)
    assert float(sk.norm()) == pytest.approx(float(ref.norm()) * scale, rel=1e-9)


def test_float32_tiny_magnitudes() -> None:
    W = rng_tensor((8, 8)).astype(np.float32)
    _, ref_err = sekron.decompose(W, [(2, 2), (4, 4)], rank=1, return_error=True)
    sk, err = sekron.decompose(W * np.float32(1e-25), [(2, 2), (4, 4)], rank=1, return_error=True)
    assert err == pytest.approx(ref_err, rel=1e-4) and sk.dtype == np.float32
    assert float(sk.norm()) > 0


def test_norm_of_tiny_and_huge_factors() -> None:
    sk = sekron.random_sekron(sekron.Structure([(3, 2), (2, 5)], "cp"), 3)
    ref = np.linalg.norm(sk.to_tensor())
    for s in (1e-200, 1e200):
        f = list(sk.factors)
        f[0] = f[0] * s
        assert float(sekron.SeKronTensor(f, sk.structure).norm()) == pytest.approx(ref * s, rel=1e-12)


def test_to_tt_and_round_keep_their_guarantee_on_tiny_tensors() -> None:
    st = sekron.Structure([(2, 2, 2)] * 3, "chain")
    W = rng_tensor(st.shape)
    sk = sekron.decompose(W, st)
    f = list(sk.factors)
    f[0] = f[0] * 1e-200
    tiny = sekron.SeKronTensor(f, st)
    tt = to_tt(tiny, tol=0.1)
    assert rel(tl.tt_to_tensor(tt), W * 1e-200) <= 0.1 + 1e-12
    r = sekron.round(tiny, tol=0.1)
    assert rel(r.to_tensor(), W * 1e-200) <= 0.1 + 1e-12


def test_search_scores_tiny_and_huge_weights() -> None:
    W = rng_tensor((8, 8, 3, 3))
    ref = [(c.structure, c.error) for c in sekron.search(W, ratio=4)[:5]]
    for s in (1e-200, 1e200):
        got = sekron.search(W * s, ratio=4)[:5]
        assert [c.structure for c in got] == [r[0] for r in ref]
        assert [c.error for c in got] == pytest.approx([r[1] for r in ref], rel=1e-6)
        assert all(c.error > 0 for c in got)
        sk = got[0].decompose(W * s)
        assert rel(sk.to_tensor(), W * s) == pytest.approx(got[0].error, rel=1e-6)


# --- half precision ----------------------------------------------------------------------------


def test_float16_is_computed_in_float32() -> None:
    W = rng_tensor((8, 8)).astype(np.float16)
    sk, err = sekron.decompose(W, [(2, 2), (4, 4)], rank=2, return_error=True)
    _, ref = sekron.decompose(W.astype(np.float32), [(2, 2), (4, 4)], rank=2, return_error=True)
    assert sk.dtype == np.float16 and err == pytest.approx(ref, rel=1e-5)


def test_bfloat16_torch() -> None:
    torch = pytest.importorskip("torch")
    W = torch.randn(8, 8, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    sk, err = sekron.decompose(W, [(2, 2), (4, 4)], rank=2, return_error=True)
    assert sk.dtype == torch.bfloat16 and 0 < err < 1


# --- tolerances ------------------------------------------------------------------------------


def test_tol_below_the_dtype_precision_is_refused() -> None:
    W = rng_tensor((8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"tol=1e-08 is below what float32"):
        sekron.decompose(W, [(2, 2), (4, 4)], tol=1e-8)


def test_gram_svd_falls_back_when_tol_needs_more() -> None:
    st = sekron.Structure([(2, 8), (2, 8)])  # R(W) is 4 x 64: wide, so gram is cheap
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    V, _ = np.linalg.qr(rng.standard_normal((64, 4)))
    s = np.array([1.0, 1e-4, 1e-8, 1e-13])
    W = st.unrearrange(((U * s) @ V.T).reshape(st.factor_sizes))
    with pytest.warns(UserWarning, match="svd='gram'"):
        sk, err = sekron.decompose(W, st, tol=1e-12, svd="gram", return_error=True)
    true = rel(sk.to_tensor(), W)
    assert true <= 1e-12 and err == pytest.approx(true, rel=0.1, abs=1e-15)


def test_round_without_saving_returns_the_input() -> None:
    sk = sekron.random_sekron(sekron.Structure([(2, 2, 2)] * 3, "nested"), [2, 3], random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = sekron.round(sk, tol=0.2)
    assert out.n_params < sk.n_params or out is sk
    assert out is sk  # here no rank can drop: the exact input comes back, not a same-size lossy copy


# --- options and allocation -------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, exc, text", [
    ({"n_iter_max": -1}, ValueError, "n_iter_max"),
    ({"n_iter_max": 1.5}, TypeError, "n_iter_max"),
    ({"init": "garbage"}, ValueError, "init must be one of"),
    ({"init": 3}, TypeError, "init must be"),
    ({"random_state": -1}, ValueError, "random_state"),
    ({"svd": "nope"}, ValueError, "svd must be 'auto', a callable, or one of"),
])
def test_unchecked_options(kwargs: dict, exc: type, text: str) -> None:
    with pytest.raises(exc, match=text):
        sekron.decompose(rng_tensor(CP3.shape), CP3, rank=2, **kwargs)


def test_svd_callable_returning_garbage() -> None:
    W = rng_tensor((4, 4))
    with pytest.raises(TypeError, match=r"svd callable 'bad' must return a tuple \(U, s, Vh\)"):
        def bad(M, rank, random_state):
            return None
        sekron.decompose(W, [(2, 2), (2, 2)], rank=1, svd=bad)
    with pytest.raises(TypeError, match="must return U"):
        sekron.decompose(W, [(2, 2), (2, 2)], rank=1, svd=lambda M, r, s: (M, M, M))


def test_allocations_are_checked_first() -> None:
    sk = sekron.random_sekron(sekron.Structure([(2, 2, 2)] * 3, "chain"), 2)
    with pytest.raises(ValueError, match="1,000,000,000,000 elements"):
        to_cp(sk, 10**6)
    chain = sekron.random_sekron(sekron.Structure([(2, 2)] * 12, "chain"), 8)
    with pytest.raises(ValueError, match=r"bond sizes \{'a': 8589934592\}"):
        convert(chain, "cp")
    k = sekron.random_sekron([(2, 2, 3, 1), (2, 2, 1, 3)], 2)
    with pytest.raises(ValueError, match=r"padded input of shape \(1, 4, 2000005, 2000005\)"):
        sekron.conv(np.ones((1, 4, 5, 5)), k, padding=10**6)


def test_conv_bias_of_another_dtype() -> None:
    k = sekron.random_sekron([(2, 2, 3, 1), (2, 2, 1, 3)], 2, dtype="float32")
    x = np.ones((1, 4, 5, 5), dtype=np.float32)
    with pytest.raises(TypeError, match="bias has dtype float64"):
        sekron.conv(x, k, bias=np.zeros(4))
    assert sekron.conv(x, k, bias=np.zeros(4, np.float32)).dtype == np.float32


# --- the search ------------------------------------------------------------------------------


def test_search_on_a_vector_and_int_n_factors() -> None:
    with pytest.raises(ValueError, match="at least 2 axes"):
        sekron.search(np.ones(16), ratio=2)
    W = rng_tensor((8, 8, 3, 3))
    got = sekron.search(W, ratio=4, n_factors=2, baselines=())
    assert got and all(c.structure.n_factors == 2 for c in got)


def test_cp_candidate_on_another_weight_is_refused() -> None:
    W = rng_tensor((16, 8, 3, 3))
    cand = next(c for c in sekron.search(W, ratio=4) if "init" in c.options)
    with pytest.raises(ValueError, match="fitted to the weight that was searched"):
        cand.decompose(rng_tensor((16, 8, 3, 3), seed=1))


def test_search_candidates_decompose_torch_weights() -> None:
    torch = pytest.importorskip("torch")
    W = rng_tensor((16, 8, 3, 3))
    for dtype in (torch.float64, torch.float32):
        Wt = torch.as_tensor(W, dtype=dtype)
        for cand in sekron.search(Wt, ratio=4)[:4]:  # cp candidates carry a numpy init
            sk = cand.decompose(Wt)
            assert isinstance(sk.factors[0], torch.Tensor) and sk.dtype == dtype
            err = float(torch.linalg.norm(sk.to_tensor() - Wt) / torch.linalg.norm(Wt))
            assert err == pytest.approx(cand.error, rel=1e-4 if dtype == torch.float32 else 1e-9)


# --- jax transformations ---------------------------------------------------------------------------


def test_jax_transformations_are_refused_clearly() -> None:
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    W = jnp.asarray(rng_tensor((4, 4)))

    def loss(x):
        return sekron.decompose(x, [(2, 2), (2, 2)], rank=1).to_tensor().sum()

    for transform in (jax.grad, jax.jit):
        with pytest.raises(TypeError, match=r"cannot run inside jax\.jit, jax\.grad"):
            transform(loss)(W)
    assert float(loss(W)) == pytest.approx(float(loss(np.asarray(W))))  # outside a transform it works


# --- property: any representable scale -----------------------------------------------------------


@settings(max_examples=12)
@given(exponent=hs.integers(-300, 300), seed=hs.integers(0, 2**16))
def test_extreme_scalings_property(exponent: int, seed: int) -> None:
    """decompose, norm, to_tt, round and search at scale 10^e agree with a rescaled unit-scale reference."""
    scale = 10.0**exponent
    st = sekron.Structure([(2, 2, 2), (2, 2, 2), (2, 1, 2)], "chain")
    W = rng_tensor(st.shape, seed)
    ref, ref_err = sekron.decompose(W, st, rank=2, return_error=True)
    sk, err = sekron.decompose(W * scale, st, rank=2, return_error=True)
    assert err == pytest.approx(ref_err, rel=1e-6)
    assert rel(sk.to_tensor(), W * scale) == pytest.approx(ref_err, rel=1e-6)
    assert float(sk.norm()) == pytest.approx(float(ref.norm()) * scale, rel=1e-9)
    tt = to_tt(sk, tol=0.05)
    assert rel(tl.tt_to_tensor(tt), sk.to_tensor()) <= 0.05 + 1e-9
    rounded = sekron.round(sk, tol=0.3)
    assert rel(rounded.to_tensor(), sk.to_tensor()) <= 0.3 + 1e-9
    M = W.reshape(16, 16)
    best = sekron.search(M * scale, ratio=4, n_factors=2, patterns=("nested",), baselines=("tt",))[0]
    unit = sekron.search(M, ratio=4, n_factors=2, patterns=("nested",), baselines=("tt",))[0]
    assert best.error == pytest.approx(unit.error, rel=1e-6, abs=1e-12)


def _cp_candidates(W: np.ndarray, flops: float, monkeypatch: pytest.MonkeyPatch) -> list:
    import sekron.structure_search._search as search_module

    monkeypatch.setattr(search_module, "POLISH_FLOPS", flops)
    return [c for c in sekron.search(W, ratio=8) if "init" in c.options]


def test_search_polishes_its_cp_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    W = np.einsum("ir,jr,kr->ijk", *(rng.standard_normal((d, 12)) for d in (24, 16, 9))).reshape(24, 16, 3, 3)
    W += 0.3 * rng.standard_normal(W.shape)  # a rank-12 CP plus noise: ALS needs many sweeps
    rough = {(c.structure, c.baseline): c.error for c in _cp_candidates(W, 0.0, monkeypatch)}
    polished = _cp_candidates(W, 1e13, monkeypatch)
    top = polished[0]
    assert top.error < rough[(top.structure, top.baseline)]  # the polish lowered it ...
    sk = top.decompose(W)
    assert rel(sk.to_tensor(), W) == pytest.approx(top.error, rel=1e-9)  # ... reproducibly
    T = top.structure.rearrange(W)
    from tensorly.decomposition import parafac

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = parafac(T, int(top.options["rank"]), init="svd", random_state=0, normalize_factors=False)
    assert top.error <= rel(tl.cp_to_tensor(ref), T) + 1e-9  # not worse than tensorly's parafac, same rank


def test_search_cp_not_worse_than_parafac_on_a_real_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    for pkg in ("ddddocr", "onnx"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} is not installed")
    from sekron.datasets import load_ddddocr_convs

    W = next(np.asarray(w, np.float64) for _, w in load_ddddocr_convs() if np.asarray(w).shape == (48, 48, 3, 3))
    top = _cp_candidates(W, 1e13, monkeypatch)[0]
    from tensorly.decomposition import parafac

    T = top.structure.rearrange(W)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ref = parafac(T, int(top.options["rank"]), init="svd", random_state=0, normalize_factors=False)
    assert top.error <= rel(tl.cp_to_tensor(ref), T) + 1e-9


def test_search_does_not_depend_on_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The polish is bounded by counted flops, not seconds: a machine where every call takes an hour
    (a clock that jumps) gets the very candidates of a quiet one."""
    import itertools
    import time

    rng = np.random.default_rng(5)
    W = np.einsum("ir,jr,kr->ijk", *(rng.standard_normal((d, 10)) for d in (16, 12, 9))).reshape(16, 12, 3, 3)
    W += 0.3 * rng.standard_normal(W.shape)
    quiet = sekron.search(W, ratio=6)
    ticks = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: 3600.0 * next(ticks))
    busy = sekron.search(W, ratio=6)
    assert [(c.structure, c.baseline, c.params) for c in busy] == [(c.structure, c.baseline, c.params) for c in quiet]
    assert [c.error for c in busy] == [c.error for c in quiet]
