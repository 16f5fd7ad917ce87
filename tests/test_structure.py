"""Structure: the factor-shape grid, bond patterns, rearrangement (docs/math.md §2-§3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hst
from strategies import grids

from sekron.structure import Structure, pattern_labels, structures

PATTERNS = ("nested", "chain", "ring", "cp", "tucker")


def brute_rearrange(W: np.ndarray, grid: tuple) -> np.ndarray:
    """T[p_1..p_S] = W[i] with i_n = sum_k j_n^(k) prod_{l>k} a_n^(l), p_k = C-order flat of j^(k)."""
    S, N = len(grid), len(grid[0])
    T = np.zeros(tuple(math.prod(s) for s in grid), dtype=W.dtype)
    for i in np.ndindex(*W.shape):
        digits = []  # digits[n][k]
        for n in range(N):
            radices = [grid[k][n] for k in range(S)]
            digits.append(np.unravel_index(i[n], radices))
        p = tuple(int(np.ravel_multi_index([digits[n][k] for n in range(N)], grid[k])) for k in range(S))
        T[p] = W[i]
    return T


# --- rearrangement ---------------------------------------------------------------------------
@given(grids(max_size=3000), hst.sampled_from(PATTERNS))
def test_rearrange_unrearrange_inverse_and_norm(grid: tuple, pattern: str) -> None:
    st = Structure(grid, pattern)
    rng = np.random.default_rng(0)
    W = rng.standard_normal(st.shape)
    T = st.rearrange(W)
    assert tuple(T.shape) == st.factor_sizes
    np.testing.assert_array_equal(st.unrearrange(T), W)
    np.testing.assert_allclose(np.linalg.norm(T), np.linalg.norm(W), rtol=1e-12)
    # a permutation of entries: same multiset of values
    np.testing.assert_array_equal(np.sort(T, axis=None), np.sort(W, axis=None))
    T2 = rng.standard_normal(st.factor_sizes)
    np.testing.assert_array_equal(st.rearrange(st.unrearrange(T2)), T2)


@given(grids(max_size=300))
def test_rearrange_matches_digit_definition(grid: tuple) -> None:
    st = Structure(grid)
    W = np.arange(math.prod(st.shape), dtype=float).reshape(st.shape)
    np.testing.assert_array_equal(st.rearrange(W), brute_rearrange(W, grid))


def test_rearrange_worked_example_is_the_kron_layout() -> None:
    # S = 2: R(A kron B) is the rank-1 matrix vec(A) vec(B)^T (Van Loan-Pitsianis)
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((3, 4)), rng.standard_normal((2, 5))
    st = Structure([(3, 4), (2, 5)])
    np.testing.assert_allclose(st.rearrange(np.kron(A, B)), np.outer(A.ravel(), B.ravel()), rtol=1e-14)


def test_rearrange_backends(backend) -> None:
    st = Structure([(2, 3, 1), (2, 1, 2), (1, 2, 3)], "chain")
    W = np.random.default_rng(2).standard_normal(st.shape)
    x = backend.array(W)
    T = st.rearrange(x)
    assert type(T) is type(x)
    np.testing.assert_array_equal(backend.numpy(T), st.rearrange(W))
    np.testing.assert_array_equal(backend.numpy(st.unrearrange(T)), W)


def test_rearrange_shape_errors() -> None:
    st = Structure([(2, 3), (2, 1)])
    with pytest.raises(ValueError, match=r"does not match structure shape \(4, 3\)"):
        st.rearrange(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"does not match the rearranged shape \(6, 2\)"):
        st.unrearrange(np.zeros((2, 6)))


# --- properties and named patterns -------------------------------------------------------------
@given(grids(max_size=3000), hst.sampled_from(PATTERNS))
def test_shape_sizes_and_labels(grid: tuple, pattern: str) -> None:
    st = Structure(grid, pattern)
    S, N = len(grid), len(grid[0])
    assert (st.n_factors, st.order) == (S, N)
    assert st.shape == tuple(math.prod(grid[k][n] for k in range(S)) for n in range(N))
    assert st.factor_sizes == tuple(math.prod(s) for s in grid)
    assert st.labels == pattern_labels(pattern, S)
    assert st.pattern == (pattern if S > 1 else st.pattern)
    for c in st.bond_labels:  # every bond joins at least two factors
        assert sum(c in lab for lab in st.labels) >= 2
    assert Structure.from_dict(st.to_dict()) == st
    assert hash(Structure.from_dict(st.to_dict())) == hash(st)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("nested", ("a", "ab", "abc", "abc")),
        ("chain", ("a", "ab", "bc", "c")),
        ("ring", ("za", "ab", "bc", "cz")),
        ("cp", ("a", "a", "a", "a")),
        ("tucker", ("a", "b", "c", "abc")),
    ],
)
def test_pattern_labels_s4(pattern: str, expected: tuple) -> None:
    assert pattern_labels(pattern, 4) == expected
    assert Structure([(2,)] * 4, pattern).labels == expected


def test_s2_patterns_nested_chain_cp_share_labels() -> None:
    assert pattern_labels("nested", 2) == pattern_labels("chain", 2) == pattern_labels("cp", 2) == ("a", "a")


def test_classical_constructors() -> None:
    assert Structure.tt((4, 5, 6)).factor_shapes == ((4, 1, 1), (1, 5, 1), (1, 1, 6))
    assert Structure.tt((4, 5, 6)).pattern == "chain"
    assert Structure.tr((4, 5, 6)).labels == ("za", "ab", "bz")
    assert Structure.cp((4, 5, 6)).labels == ("a", "a", "a")
    st = Structure.tucker((4, 5, 6))
    assert st.factor_shapes[-1] == (1, 1, 1) and st.labels == ("a", "b", "c", "abc") and st.shape == (4, 5, 6)
    assert all(s.is_axis_aligned for s in (Structure.tt((4, 5)), Structure.tucker((4, 5))))
    assert not Structure([(2, 2), (2, 2)]).is_axis_aligned


def test_default_pattern_and_custom_labels() -> None:
    assert Structure([(2, 2), (3, 3)]).pattern == "nested"
    assert Structure([(2, 2), (3, 3), (1, 2)], labels=["a", "ab", "b"]).pattern == "chain"  # recognised
    custom = Structure([(2, 3), (2, 1), (1, 2)], labels=["ab", "a", "b"])
    assert custom.pattern is None and custom.bond_labels == ("a", "b")
    assert Structure([(2, 2), (2, 2)]).with_pattern("ring").labels == ("za", "az")


def test_repr_shows_grid_and_labels() -> None:
    text = repr(Structure([(16, 16, 3, 1), (16, 16, 1, 3)], "nested"))
    assert "(256, 256, 3, 3)" in text and "'nested'" in text
    assert "(16, 16, 3, 1)" in text and "bonds 'a'" in text


def test_parse_rank_forms() -> None:
    st = Structure([(2, 2), (2, 2), (2, 2)], "chain")
    assert st.parse_rank(None) == {"a": None, "b": None}
    assert st.parse_rank(3) == {"a": 3, "b": 3}
    assert st.parse_rank([3, 2]) == {"a": 3, "b": 2}
    assert st.parse_rank({"b": 2}) == {"a": None, "b": 2}


# --- structures() enumeration -------------------------------------------------------------------
def _n_ordered(d: int, S: int) -> int:
    return sum(1 for t in np.ndindex(*([d] * S)) if math.prod(x + 1 for x in t) == d)


@pytest.mark.parametrize(("shape", "S"), [((4, 3), 2), ((8,), 3), ((6, 4, 2), 2), ((12, 2), 3), ((1, 5), 2)])
def test_structures_count_order_and_validity(shape: tuple, S: int) -> None:
    found = structures(shape, S)
    assert len(found) == math.prod(_n_ordered(d, S) for d in shape)
    keys = [tuple(g[k][n] for n in range(len(shape)) for k in range(S)) for g in (s.factor_shapes for s in found)]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(s.shape == tuple(shape) and s.n_factors == S for s in found)
    trimmed = structures(shape, S, exclude_trivial=True)
    assert all(all(math.prod(f) > 1 for f in s.factor_shapes) for s in trimmed)


# --- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (([(2, 2), (2,)],), {}, ValueError, "same number N >= 1 of modes"),
        (([],), {}, ValueError, "at least one factor shape"),
        (("22",), {}, TypeError, "factor_shapes must be a sequence"),
        (([(2, 0)],), {}, ValueError, r"factor_shapes\[0\]\[1\] must be an integer >= 1"),
        (([(2, 2.5)],), {}, TypeError, r"factor_shapes\[0\]\[1\] must be an integer"),
        (([(2,), (2,)], "tt"), {}, ValueError, "pattern must be one of"),
        (([(2,), (2,), (2,)],), {"labels": ["a", "ab", "c"]}, ValueError, "used by only one factor"),
        (([(2,), (2,)],), {"labels": ["a"]}, ValueError, "one entry per factor"),
        (([(2,), (2,)],), {"labels": "aa"}, TypeError, "sequence of strings"),
        (([(2,), (2,)],), {"labels": ["aa", "a"]}, ValueError, "repeats a bond label"),
        (([(2,), (2,)], "ring"), {"labels": ["a", "a"]}, ValueError, "are not those of pattern 'ring'"),
    ],
)
def test_structure_errors(args: tuple, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Structure(*args, **kwargs)


@pytest.mark.parametrize(
    ("rank", "error", "match"),
    [
        (0, ValueError, "rank must be an integer >= 1, got 0"),
        (-2, ValueError, "rank must be an integer >= 1"),
        (2.5, TypeError, "rank must be an integer"),
        (True, TypeError, "rank must be an integer"),
        ([2], ValueError, "one entry per bond label"),
        ({"q": 2}, ValueError, "names bond labels"),
        ([2, 0], ValueError, r"rank\[1\] must be an integer >= 1"),
    ],
)
def test_parse_rank_errors(rank: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Structure([(2, 2), (2, 2), (2, 2)], "chain").parse_rank(rank)


def test_structures_and_pattern_labels_errors() -> None:
    with pytest.raises(ValueError, match="n_factors must be an integer >= 1"):
        structures((4,), 0)
    with pytest.raises(ValueError, match="pattern must be one of"):
        pattern_labels("mps", 3)
    with pytest.raises(ValueError, match="needs 'factor_shapes' and 'labels'"):
        Structure.from_dict({"labels": []})
