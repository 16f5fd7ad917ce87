"""Exact mappings TT/TR/CP/Tucker <-> SeKron, to_* without forming W, convert, round, hubs."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given
from hypothesis import strategies as st
from tensorly.decomposition import tensor_train

import sekron
from sekron._backend import using
from sekron.conversions import (
    convert,
    cp_to_tt,
    from_cp,
    from_tr,
    from_tt,
    from_tucker,
    to_cp,
    to_tr,
    to_tt,
    to_tucker,
    tt_to_tr,
    tt_to_tucker,
    tucker_to_tt,
)
from sekron.conversions import round as sk_round
from sekron.linalg import tt as _tt_ops

PATTERNS = ["nested", "chain", "ring", "cp", "tucker"]
RTOL = {"float32": 2e-4, "float64": 1e-10, "complex128": 1e-10}


def close(a: Any, b: Any, rtol: float = 1e-10) -> bool:
    a, b = np.asarray(tl.to_numpy(a)), np.asarray(tl.to_numpy(b))
    return a.shape == b.shape and float(np.linalg.norm(a - b)) <= rtol * max(float(np.linalg.norm(b)), 1e-300)


def unfolding_ranks(W: np.ndarray) -> list[int]:
    N = W.ndim
    return [int(np.linalg.matrix_rank(W.reshape(int(np.prod(W.shape[: m + 1])), -1))) for m in range(N - 1)]


def rel_err(a: Any, W: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(tl.to_numpy(a)) - W) / np.linalg.norm(W))


# --- strategies ---------------------------------------------------------------------
dims_st = st.lists(st.integers(2, 4), min_size=2, max_size=5)


@st.composite
def tt_case(draw: Any, ring: bool = False) -> tuple[tuple[int, ...], list[int], int]:
    shape = tuple(draw(dims_st))
    inner = [draw(st.integers(1, 3)) for _ in range(len(shape) - 1)]
    end = draw(st.integers(1, 3)) if ring else 1
    return shape, [end, *inner, end], draw(st.integers(0, 2**16))


@st.composite
def general_case(draw: Any) -> tuple[sekron.Structure, Any]:
    """A non-axis-aligned structure with 2 or 3 factors over 2..4 modes, and small ranks."""
    N = draw(st.integers(2, 4))
    S = draw(st.integers(2, 3))
    grid = [[draw(st.sampled_from([1, 2, 3])) for _ in range(N)] for _ in range(S)]
    grid[0][0], grid[1][0], grid[1][1 % N] = 2, 2, 2  # two factors share mode 0: never axis-aligned
    pattern = draw(st.sampled_from(PATTERNS))
    structure = sekron.Structure([tuple(row) for row in grid], pattern)
    rank = [draw(st.integers(1, 2)) for _ in structure.bond_labels]
    return structure, rank


# --- into SeKron: exact, parameter-preserving; round trips -------------------------
@given(tt_case())
def test_from_tt_exact_and_round_trip(case: Any) -> None:
    shape, rank, seed = case
    tt = tl.random.random_tt(shape, rank=rank, random_state=seed)
    sk = from_tt(tt)
    assert sk.structure == sekron.Structure.tt(shape)
    assert sk.n_params == sum(c.size for c in tt)
    assert close(sk.to_tensor(), tl.tt_to_tensor(tt))
    back = to_tt(sk)
    assert all(np.array_equal(a, b) for a, b in zip(back, tt))


@pytest.mark.filterwarnings("ignore:Determining the TR-rank")
@given(tt_case(ring=True))
def test_from_tr_exact_and_round_trip(case: Any) -> None:
    shape, rank, seed = case
    tr = tl.random.random_tr(shape, rank=rank, random_state=seed)
    sk = from_tr(tr)
    assert sk.pattern == "ring" and sk.n_params == sum(c.size for c in tr)
    assert close(sk.to_tensor(), tl.tr_to_tensor(tr))
    assert all(np.array_equal(a, b) for a, b in zip(to_tr(sk), tr))
    tt = to_tt(sk)  # the TR closure as a TT: ranks r_0 * r_k
    assert close(tt.to_tensor(), tl.tr_to_tensor(tr))
    assert list(tt.rank[1:-1]) == [rank[0] * r for r in rank[1:-1]]


@given(dims_st, st.integers(1, 4), st.integers(0, 2**16))
def test_from_cp_exact_and_round_trip(shape: list[int], R: int, seed: int) -> None:
    cp = tl.random.random_cp(tuple(shape), R, random_state=seed)
    cp.weights[:] = np.random.default_rng(seed).uniform(0.5, 2.0, R)
    sk = from_cp(cp)
    assert sk.pattern == "cp" and sk.n_params == sum(f.size for f in cp.factors)
    assert close(sk.to_tensor(), tl.cp_to_tensor(cp))
    back = to_cp(sk)
    assert np.array_equal(back.weights, np.ones(R))
    assert close(back.factors[0], cp.factors[0] * cp.weights)  # the weights come back folded
    assert all(np.array_equal(a, b) for a, b in zip(back.factors[1:], cp.factors[1:]))
    tt = to_tt(sk)
    assert close(tt.to_tensor(), tl.cp_to_tensor(cp)) and set(tt.rank[1:-1]) == {R}


@given(dims_st, st.integers(0, 2**16))
def test_from_tucker_exact_and_round_trip(shape: list[int], seed: int) -> None:
    ranks = [max(1, d - 1) for d in shape]
    tk = tl.random.random_tucker(tuple(shape), ranks, random_state=seed)
    sk = from_tucker(tk)
    assert sk.pattern == "tucker" and sk.n_params == tk.core.size + sum(f.size for f in tk.factors)
    assert close(sk.to_tensor(), tl.tucker_to_tensor(tk))
    back = to_tucker(sk)
    assert np.array_equal(back.core, tk.core) and all(np.array_equal(a, b) for a, b in zip(back.factors, tk.factors))
    assert close(to_tt(sk).to_tensor(), tl.tucker_to_tensor(tk))


def test_plain_tuples_and_lists_are_accepted() -> None:
    cp = tl.random.random_cp((3, 4), 2, random_state=0)
    assert close(from_cp((cp.weights, list(cp.factors))).to_tensor(), cp.to_tensor())
    assert close(from_cp(list(cp.factors)).to_tensor(), tl.cp_to_tensor((None, cp.factors)))
    tk = tl.random.random_tucker((3, 4), [2, 2], random_state=0)
    assert close(from_tucker((tk.core, list(tk.factors))).to_tensor(), tk.to_tensor())
    tt = tl.random.random_tt((3, 4, 2), rank=[1, 2, 2, 1], random_state=0)
    assert close(from_tt(tuple(tt)).to_tensor(), tt.to_tensor())


# --- to_tt of general structures equals dense TT-SVD ---------------------------------
@given(general_case(), st.integers(0, 2**16))
def test_to_tt_general_equals_dense_tt_svd(case: Any, seed: int) -> None:
    structure, rank = case
    sk = sekron.random_sekron(structure, rank, random_state=seed)
    W = sk.to_tensor()
    tt = to_tt(sk)
    assert close(tt.to_tensor(), W, 1e-11)
    assert list(tt.rank[1:-1]) == unfolding_ranks(W)  # the ranks of exact dense TT-SVD
    caps = [max(1, r - 1) for r in tt.rank[1:-1]]
    ours = to_tt(sk, rank=caps)
    dense = tensor_train(W, rank=[1, *caps, 1])
    assert all(r <= c for r, c in zip(ours.rank[1:-1], caps))
    assert rel_err(ours.to_tensor(), W) <= rel_err(dense.to_tensor(), W) * (1 + 1e-6) + 1e-12


@given(general_case(), st.sampled_from([0.05, 0.2, 0.5]))
def test_to_tt_tol_guarantee(case: Any, tol: float) -> None:
    structure, rank = case
    sk = sekron.random_sekron(structure, rank, random_state=1)
    W = sk.to_tensor()
    tt = to_tt(sk, tol=tol)
    assert rel_err(tt.to_tensor(), W) <= tol * (1 + 1e-9)
    assert all(a <= b for a, b in zip(tt.rank, to_tt(sk).rank))


def test_to_tt_never_forms_w(monkeypatch: pytest.MonkeyPatch) -> None:
    """No densify path: reconstruction and rearrangement are never called."""
    structure = sekron.Structure([(2, 3, 2), (3, 2, 2), (2, 2, 1)], "nested")
    sk = sekron.random_sekron(structure, [2, 2])
    W = sk.to_tensor()

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("W was formed")

    monkeypatch.setattr(sekron.SeKronTensor, "to_tensor", forbidden)
    monkeypatch.setattr(sekron.Structure, "unrearrange", forbidden)
    monkeypatch.setattr(sekron.Structure, "rearrange", forbidden)
    assert close(to_tt(sk).to_tensor(), W, 1e-11)
    assert rel_err(to_tt(sk, tol=0.1).to_tensor(), W) <= 0.1 * (1 + 1e-9)
    assert max(to_tt(sk, rank=3).rank) <= 3
    assert close(to_tucker(sk).to_tensor(), W)


def test_implicit_randomized_cut_matches_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    """A capped cut above the size threshold is factorised without forming Y, as accurately as TT-SVD."""
    monkeypatch.setattr(_tt_ops, "IMPLICIT_MIN_SIZE", 0)
    calls = []
    original = _tt_ops.implicit_svd
    monkeypatch.setattr(_tt_ops, "implicit_svd", lambda *a, **k: calls.append(1) or original(*a, **k))
    structure = sekron.Structure([(4, 4, 4, 4), (4, 4, 4, 4)], "nested")
    sk = sekron.random_sekron(structure, 2, random_state=0)
    W = sk.to_tensor()
    ours = to_tt(sk, rank=3)
    assert calls, "the implicit SVD was not used"
    dense = tensor_train(W, rank=[1, 3, 3, 3, 1])
    assert rel_err(ours.to_tensor(), W) <= rel_err(dense.to_tensor(), W) * 1.01


# --- to_tucker, to_tr, to_cp ---------------------------------------------------------
@given(general_case())
def test_to_tucker_general(case: Any) -> None:
    structure, rank = case
    sk = sekron.random_sekron(structure, rank, random_state=2)
    W = sk.to_tensor()
    tk = to_tucker(sk)
    assert close(tk.to_tensor(), W, 1e-10)
    assert list(tk.rank) == [int(np.linalg.matrix_rank(tl.unfold(W, n))) for n in range(W.ndim)]
    approx = to_tucker(sk, tol=0.3)
    assert rel_err(approx.to_tensor(), W) <= 0.3 * (1 + 1e-9)


def test_to_tr_general_is_tt_with_closing_rank_one() -> None:
    sk = sekron.random_sekron(sekron.Structure([(2, 3), (2, 2)], "cp"), 2)
    tr = to_tr(sk)
    assert tr.rank[0] == tr.rank[-1] == 1 and close(tl.tr_to_tensor(tr), sk.to_tensor())


def test_to_cp_als_recovers_low_rank() -> None:
    cp = tl.random.random_cp((4, 5, 6), 2, random_state=0)
    sk = sekron.decompose(cp.to_tensor(), sekron.Structure([(2, 5, 2), (2, 1, 3)], "chain"))
    approx = to_cp(sk, 2)
    assert rel_err(approx.to_tensor(), cp.to_tensor()) < 1e-3
    with pytest.raises(ValueError, match="needs a rank"):
        to_cp(sk)


# --- hub ------------------------------------------------------------------------------
def test_hub_conversions() -> None:
    cp = tl.random.random_cp((3, 4, 5), 2, random_state=0)
    tk = tl.random.random_tucker((3, 4, 5), [2, 3, 2], random_state=0)
    tt = tl.random.random_tt((3, 4, 5), rank=[1, 2, 3, 1], random_state=0)
    assert close(cp_to_tt(cp).to_tensor(), cp.to_tensor())
    assert close(tucker_to_tt(tk).to_tensor(), tk.to_tensor())
    assert close(tl.tr_to_tensor(tt_to_tr(tt)), tt.to_tensor())
    tk2 = tt_to_tucker(tt)
    assert close(tk2.to_tensor(), tt.to_tensor(), 1e-10) and tk2.rank == (2, 4, 3)


# --- convert ----------------------------------------------------------------------------
@pytest.mark.parametrize("source", PATTERNS)
@pytest.mark.parametrize("target", PATTERNS)
@pytest.mark.parametrize("S", [2, 3, 4])
def test_convert_every_pair_exact(source: str, target: str, S: int) -> None:
    grid = [(2, 3), (3, 2), (2, 2), (1, 2)][:S]
    sk = sekron.random_sekron(sekron.Structure(grid, source), 2, random_state=S)
    out = convert(sk, target)
    assert out.pattern == target and out.structure.factor_shapes == sk.structure.factor_shapes
    assert close(out.to_tensor(), sk.to_tensor(), 1e-12)


def test_convert_containment_ranks() -> None:
    grid = [(2, 2), (2, 3), (3, 2), (2, 2)]
    nested = sekron.random_sekron(sekron.Structure(grid, "nested"), [2, 3, 2])
    assert convert(nested, "chain").rank == {"a": 2, "b": 6, "c": 12}  # running products
    chain = sekron.random_sekron(sekron.Structure(grid, "chain"), [2, 3, 2])
    assert convert(chain, "nested").rank == {"a": 2, "b": 3, "c": 2}  # same ranks
    cp = sekron.random_sekron(sekron.Structure(grid, "cp"), 3)
    assert convert(cp, "nested").rank == {"a": 3, "b": 1, "c": 1}
    tucker = sekron.random_sekron(sekron.Structure(grid, "tucker"), [2, 3, 2])
    assert convert(tucker, "chain").rank == {"a": 2, "b": 6, "c": 12}


def test_convert_error_when_target_cannot_carry_a_bond() -> None:
    sk = sekron.random_sekron(sekron.Structure([(2, 2)] * 4, "cp"), 2)
    with pytest.raises(ValueError, match="does not connect"):
        convert(sk, ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match="pattern must be one of"):
        convert(sk, "mps")


# --- round ------------------------------------------------------------------------------
@given(st.sampled_from(["chain", "ring"]), st.sampled_from([0.05, 0.3, 0.6]), st.integers(0, 2**16))
def test_round_chain_ring_bound_and_ranks(pattern: str, tol: float, seed: int) -> None:
    structure = sekron.Structure([(2, 3), (3, 2), (2, 2), (2, 2)], pattern)
    sk = sekron.random_sekron(structure, 3, random_state=seed)
    W = sk.to_tensor()
    out = sk_round(sk, tol=tol)
    assert rel_err(out.to_tensor(), W) <= tol * (1 + 1e-9)
    assert all(out.rank[c] <= sk.rank[c] for c in sk.rank)
    capped = sk_round(sk, rank={c: 2 for c in sk.rank if c != "z"})
    assert all(capped.rank[c] <= min(2, sk.rank[c]) for c in sk.rank if c != "z")


def test_round_exact_on_redundant_chain() -> None:
    grid = [(2, 2), (2, 2), (2, 2)]
    small = sekron.random_sekron(sekron.Structure(grid, "chain"), [1, 2])
    padded = convert(convert(small, "tucker"), "chain")  # exact, redundant ranks
    out = sk_round(padded)
    assert close(out.to_tensor(), small.to_tensor(), 1e-10)
    assert all(out.rank[c] <= padded.rank[c] for c in out.rank) and out.rank["a"] == 1


@given(st.sampled_from([0.1, 0.3]), st.integers(0, 2**16))
def test_round_nested_guarantee_on_decompose_output(tol: float, seed: int) -> None:
    W = np.random.default_rng(seed).standard_normal((8, 6, 4))
    sk = sekron.decompose(W, sekron.Structure([(2, 3, 2), (2, 2, 1), (2, 1, 2)], "nested"))
    out = sk_round(sk, tol=tol)
    assert rel_err(out.to_tensor(), W) <= tol * (1 + 1e-6)
    assert all(out.rank[c] <= sk.rank[c] for c in sk.rank)


def test_round_nested_ranks_never_grow_and_warns() -> None:
    sk = sekron.random_sekron(sekron.Structure([(2, 3), (3, 2), (2, 2), (2, 2)], "nested"), 3, random_state=0)
    assert sk_round(sk) is sk
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sk_round(sk, tol=0.01)
    assert all(out.rank[c] <= sk.rank[c] for c in sk.rank)
    err = rel_err(out.to_tensor(), sk.to_tensor())
    assert err <= 0.01 * (1 + 1e-6) or any("above tol" in str(w.message) for w in caught)


def test_round_errors() -> None:
    sk = sekron.random_sekron(sekron.Structure([(2, 2)] * 3, labels=["ab", "a", "b"]), 2)
    with pytest.raises(ValueError, match="round supports"):
        sk_round(sk)
    ring = sekron.random_sekron(sekron.Structure([(2, 2)] * 3, "ring"), 2)
    with pytest.raises(ValueError, match="closing bond"):
        sk_round(ring, rank=1)
    with pytest.raises(ValueError, match="tol"):
        sk_round(ring, tol=2.0)


# --- backends, dtypes, devices -----------------------------------------------------------
def test_backends_and_dtypes(backend: Any, dtype: str) -> None:
    rtol = RTOL[dtype]
    rng = np.random.default_rng(0)
    cores = [rng.standard_normal(s) for s in [(1, 3, 2), (2, 4, 3), (3, 2, 1)]]
    tt = [backend.array(c, dtype) for c in cores]
    sk = from_tt(tt)
    assert str(sk.dtype) == str(tt[0].dtype) and type(sk.factors[0]) is type(tt[0])
    with using(backend.name):
        ref = tl.tt_to_tensor(tt)
    assert close(backend.numpy(sk.to_tensor()), backend.numpy(ref), rtol)
    back = to_tt(sk)
    assert all(close(backend.numpy(a), backend.numpy(b), rtol) for a, b in zip(back, tt))
    if backend.name == "jax" and dtype != "float64":
        return  # jax compiles every SVD shape anew: the SVD paths run once, in float64, to stay fast
    general = sekron.Structure([(2, 3, 2), (3, 2, 2)], "nested")
    factors = [backend.array(rng.standard_normal((2, *s)), dtype) for s in general.factor_shapes]
    gsk = sekron.SeKronTensor(factors, general)
    W = backend.numpy(gsk.to_tensor())
    for out in (to_tt(gsk), to_tt(gsk, rank=3)) if backend.name != "jax" else (to_tt(gsk),):
        assert str(out.factors[0].dtype) == str(factors[0].dtype) and type(out.factors[0]) is type(factors[0])
    assert close(backend.numpy(tl.tt_to_tensor([backend.numpy(c) for c in to_tt(gsk)])), W, 10 * rtol)
    assert close(backend.numpy(convert(gsk, "chain").to_tensor()), W, 10 * rtol)
    if backend.name == "pytorch":
        assert all(f.device == factors[0].device for f in to_tt(gsk).factors)


def test_complex128_numpy() -> None:
    rng = np.random.default_rng(3)
    st_ = sekron.Structure([(2, 3), (2, 2), (1, 2)], "chain")
    factors = [rng.standard_normal((*b, *s)) + 1j * rng.standard_normal((*b, *s))
               for b, s in zip([(2,), (2, 2), (2,)], st_.factor_shapes)]
    sk = sekron.SeKronTensor(factors, st_)
    W = sk.to_tensor()
    tt = to_tt(sk)
    assert tt.factors[0].dtype == np.complex128 and close(tt.to_tensor(), W)
    assert close(to_tucker(sk).to_tensor(), W) and close(sk_round(sk).to_tensor(), W)
    assert close(convert(sk, "cp").to_tensor(), W)


# --- bad inputs -------------------------------------------------------------------------
def test_bad_inputs() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="share their rank"):
        from_tt([rng.standard_normal((1, 3, 2)), rng.standard_normal((3, 4, 1))])
    with pytest.raises(ValueError, match="boundary ranks 1"):
        from_tt([rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 4, 2))])
    with pytest.raises(ValueError, match="must close"):
        from_tr([rng.standard_normal((2, 3, 3)), rng.standard_normal((3, 4, 4))])
    with pytest.raises(ValueError, match="one entry per rank-one term"):
        from_cp((np.ones(3), [rng.standard_normal((3, 2)), rng.standard_normal((4, 2))]))
    with pytest.raises(ValueError, match="does not match the factors"):
        from_tucker((np.ones((2, 3)), [rng.standard_normal((3, 2)), rng.standard_normal((4, 2))]))
    with pytest.raises(TypeError, match="tensorly container"):
        from_tt("not a tt")
    with pytest.raises(TypeError, match="TuckerTensor"):
        from_tucker(object())
    with pytest.raises(TypeError, match="SeKronTensor"):
        to_tt(np.ones((2, 2)))
    with pytest.raises(ValueError, match="inner TT ranks"):
        to_tt(from_tt(tl.random.random_tt((2, 3, 4), rank=[1, 2, 2, 1])), rank=[2, 2, 2])
    with pytest.raises(ValueError, match="order >= 2"):
        from_tt([rng.standard_normal((1, 3, 1))])


# --- the docs page runs ---------------------------------------------------------------------
def test_docs_formats_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block.replace("docs/img/", str(tmp_path) + "/"), str(page), "exec"), namespace)
