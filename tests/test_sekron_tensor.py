"""SeKronTensor, reconstruction, norm, random_sekron and kron against dense references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given
from hypothesis import strategies as hst
from strategies import grids

from sekron.sekron_tensor import SeKronTensor, kron, random_sekron, sekron_to_tensor
from sekron.structure import Structure

PATTERNS = ("nested", "chain", "ring", "cp", "tucker")
RTOL = {"float32": 2e-4, "float64": 1e-10, "complex128": 1e-10}


def brute_to_tensor(factors: list[np.ndarray], st: Structure) -> np.ndarray:
    """docs/math.md §3 literally: one einsum over all bonds, then R^{-1}."""
    bonds = st.bond_labels
    letters = {c: chr(ord("A") + i) for i, c in enumerate(bonds)}
    ops, specs = [], []
    for k, (f, lab) in enumerate(zip(factors, st.labels)):
        ops.append(np.reshape(f, (*f.shape[:len(lab)], st.factor_sizes[k])))
        specs.append("".join(letters[c] for c in lab) + chr(ord("a") + k))
    T = np.einsum(",".join(specs) + "->" + "".join(chr(ord("a") + k) for k in range(st.n_factors)), *ops)
    return st.unrearrange(T)


def assert_close(actual: object, expected: np.ndarray, rtol: float = 1e-12) -> None:
    """Entry-wise equality up to ``rtol`` times the largest entry (cancellation-safe)."""
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=rtol * float(np.abs(expected).max()))


def brute_kron(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(A kron B)[i] = A[i // b] * B[i % b], entry by entry (docs/math.md §1)."""
    out = np.zeros(tuple(a * b for a, b in zip(A.shape, B.shape)), dtype=np.result_type(A, B))
    for i in np.ndindex(*out.shape):
        out[i] = A[tuple(x // b for x, b in zip(i, B.shape))] * B[tuple(x % b for x, b in zip(i, B.shape))]
    return out


# --- reconstruction --------------------------------------------------------------------------
@given(grids(max_cell=5), hst.sampled_from(PATTERNS), hst.integers(1, 3))
def test_to_tensor_matches_einsum_definition(grid: tuple, pattern: str, r: int) -> None:
    st = Structure(grid, pattern)
    sk = random_sekron(st, r, random_state=r)
    W = sk.to_tensor()
    assert tuple(W.shape) == st.shape
    assert_close(W, brute_to_tensor(list(sk.factors), st))
    np.testing.assert_allclose(sekron_to_tensor(sk), W, rtol=0, atol=0)
    # n_params is the element count of the factors, and the parameter formula of docs/math.md §3
    assert sk.n_params == sum(f.size for f in sk.factors)
    assert sk.n_params == sum(r ** len(lab) * P for lab, P in zip(st.labels, st.factor_sizes))
    assert sk.rank == {c: r for c in st.bond_labels}
    np.testing.assert_allclose(sk.norm(), np.linalg.norm(W), rtol=1e-10)


@pytest.mark.parametrize("S", [2, 3, 4])
def test_cp_and_nested_are_sums_of_kronecker_products(S: int) -> None:
    rng = np.random.default_rng(S)
    grid = [tuple(int(x) for x in rng.integers(1, 4, size=3)) for _ in range(S)]
    cp = random_sekron(Structure(grid, "cp"), 3, random_state=1)
    expected = sum(_kron_all([f[r] for f in cp.factors]) for r in range(3))
    assert_close(cp.to_tensor(), expected)
    # nested: W = sum_{r1} A1_{r1} kron sum_{r2} A2_{r1 r2} kron ... (docs/math.md §3)
    nested = random_sekron(Structure(grid, "nested"), 2, random_state=2)
    assert_close(nested.to_tensor(), _nested_sum(list(nested.factors), ()))


def _kron_all(mats: list[np.ndarray]) -> np.ndarray:
    out = mats[0]
    for m in mats[1:]:
        out = brute_kron(out, m)
    return out


def _nested_sum(factors: list[np.ndarray], idx: tuple) -> np.ndarray:
    if len(factors) == 1:
        return factors[0][idx]
    head = factors[0][idx]
    return sum(brute_kron(head[r], _nested_sum(factors[1:], (*idx, r))) for r in range(head.shape[0]))


@pytest.mark.parametrize("labels", [["ab", "a", "b"], ["ab", "bc", "ca"], ["abc", "a", "bc", "bc"], ["a", "ab", "b"]])
def test_custom_labels_reconstruct_like_einsum(labels: list[str]) -> None:
    grid = [(2, 3), (3, 1), (1, 2), (2, 2)][: len(labels)]
    st = Structure(grid, labels=labels)
    sizes = {"a": 2, "b": 3, "c": 4}
    sk = random_sekron(st, {c: sizes[c] for c in st.bond_labels}, random_state=5)
    assert_close(sk.to_tensor(), brute_to_tensor(list(sk.factors), st))
    np.testing.assert_allclose(sk.norm(), np.linalg.norm(sk.to_tensor()), rtol=1e-12)


@pytest.mark.parametrize("labels", [["\ue000\ue001", "\ue000", "\ue001"], ["\ue000a", "a\ue400", "\ue400\ue000"],
                                    ["\ue000\ue800\uf100", "\ue000\ue800\uf100"],
                                    ["\ue100\ue700", "\ue700\ue600", "\ue600\ue100"]])
def test_private_use_labels_do_not_collide(labels: list[str]) -> None:
    """Bond labels in the private-use area (where internal einsum labels live) still give the right tensor."""
    import sekron
    from sekron.conversions import convert, to_tt
    from sekron.conversions import round as sk_round

    grid = [(2, 3, 1, 2), (3, 1, 2, 1), (1, 2, 2, 2)][: len(labels)]
    st = Structure(grid, labels=labels)
    sk = random_sekron(st, {c: 2 for c in st.bond_labels}, random_state=7)
    W = brute_to_tensor(list(sk.factors), st)
    assert_close(sk.to_tensor(), W)
    np.testing.assert_allclose(sk.norm(), np.linalg.norm(W), rtol=1e-12)
    assert_close(tl.tt_to_tensor(to_tt(sk)), W, rtol=1e-10)
    nested = convert(sk, "nested")
    assert_close(nested.to_tensor(), W, rtol=1e-10)
    assert_close(sk_round(nested).to_tensor(), W, rtol=1e-10)
    Wd = np.asarray(W)
    np.testing.assert_allclose(sekron.inner(sk, sk), np.vdot(Wd, Wd), rtol=1e-10)
    idx = np.array([[0] * Wd.ndim, [d - 1 for d in Wd.shape]])
    np.testing.assert_allclose(sk.entries(idx), Wd[tuple(idx.T)], rtol=1e-10)
    mat = random_sekron(Structure([(2, 3), (3, 2), (2, 2)][: len(labels)], labels=labels), 2, random_state=3)  # a @ x
    v = np.arange(mat.shape[1], dtype=float)
    np.testing.assert_allclose(mat @ v, np.asarray(mat.to_tensor()) @ v, rtol=1e-10)
    x = np.random.default_rng(0).standard_normal((1, W.shape[1], 5, 5))
    ref = sekron.conv(x, SeKronTensor([np.asarray(W)], [W.shape]), padding=1)  # one factor: the dense kernel
    for implementation in ("factorized", "dense"):
        y = sekron.conv(x, sk, padding=1, implementation=implementation)
        assert_close(y, ref, rtol=1e-10)


def test_norm_both_paths() -> None:
    # gram path (small bonds) and the dense fallback (bond network larger than W)
    small = random_sekron(Structure([(8, 8), (8, 8), (4, 4)], "chain"), 2)
    big = random_sekron(Structure([(2, 1), (1, 2)], "cp"), 9)
    for sk in (small, big):
        np.testing.assert_allclose(sk.norm(), np.linalg.norm(sk.to_tensor()), rtol=1e-12)


def test_worked_example_kron_of_rank_one() -> None:
    A, B = np.arange(6.0).reshape(1, 2, 3), np.arange(4.0).reshape(1, 2, 2) - 1
    sk = SeKronTensor([A, B], [(2, 3), (2, 2)])
    np.testing.assert_array_equal(sk.to_tensor(), np.kron(A[0], B[0]))
    assert sk.shape == (4, 6) and sk.rank == {"a": 1} and sk.n_params == 10 and sk.pattern == "nested"


# --- container rules ---------------------------------------------------------------------------
def test_immutable_and_factors_tuple() -> None:
    sk = random_sekron(Structure([(2, 2), (2, 2)]), 2)
    assert isinstance(sk.factors, tuple)
    with pytest.raises(AttributeError, match="immutable"):
        sk.factors = ()  # type: ignore[misc]
    assert "SeKronTensor(shape=(4, 4)" in repr(sk) and "compression" in repr(sk)


@pytest.mark.parametrize(
    ("factors", "structure", "error", "match"),
    [
        ([np.ones((1, 2))], [(2,), (2,)], ValueError, "structure has 2 factors but 1 arrays"),
        ([np.ones((2, 2)), np.ones((3, 2))], [(2,), (2,)], ValueError, "bond 'a' has size 2 in factors"),
        ([np.ones((2,)), np.ones((2, 2))], [(2,), (2,)], ValueError, r"factors\[0\] must have 2 axes"),
        ([np.ones((2, 3)), np.ones((2, 2))], [(2,), (2,)], ValueError, r"digit axes \(3,\) do not match"),
        ([np.ones((2, 2)), np.ones((2, 2), dtype=np.float32)], [(2,), (2,)], TypeError, "share one dtype"),
        ([[1.0, 2.0], np.ones((2, 2))], [(2,), (2,)], TypeError, r"factors\[0\] must be an array"),
        (np.ones((2, 2)), [(2,), (2,)], TypeError, "factors must be a sequence of arrays"),
        ([np.ones((2, 2)), np.ones((2, 2))], "nested", TypeError, "structure must be a sekron.Structure"),
    ],
)
def test_sekron_tensor_errors(factors: object, structure: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SeKronTensor(factors, structure)  # type: ignore[arg-type]


def test_mixed_frameworks_rejected() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="several frameworks"):
        SeKronTensor([np.ones((2, 2)), torch.ones((2, 2), dtype=torch.float64)], [(2,), (2,)])


def test_random_sekron_needs_every_bond_and_is_seeded() -> None:
    st = Structure([(2, 2), (2, 2), (2, 2)], "chain")
    with pytest.raises(ValueError, match="rank must give a size for every bond"):
        random_sekron(st, {"a": 2})
    a, b = random_sekron(st, [2, 3], random_state=7), random_sekron(st, [2, 3], random_state=7)
    assert all(np.array_equal(x, y) for x, y in zip(a.factors, b.factors))
    assert a.rank == {"a": 2, "b": 3}


# --- backends, dtypes, autograd -----------------------------------------------------------------
def test_backend_dtype_preserved(backend, dtype) -> None:
    st = Structure([(2, 3, 1), (3, 1, 2), (1, 2, 2)], "ring")
    rng = np.random.default_rng(0)
    ref = []
    for lab, fs in zip(st.labels, st.factor_shapes):
        shape = (2,) * len(lab) + fs
        data = rng.standard_normal(shape) + (1j * rng.standard_normal(shape) if "complex" in dtype else 0)
        ref.append(data.astype(dtype))
    sk = SeKronTensor([backend.array(f, dtype) for f in ref], st)
    W = sk.to_tensor()
    assert type(W) is type(sk.factors[0])
    assert str(W.dtype).endswith(dtype) and tl.context(W).get("device", None) == tl.context(sk.factors[0]).get(
        "device", None)
    expected = brute_to_tensor(ref, st)
    np.testing.assert_allclose(backend.numpy(W), expected, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(expected).max())
    np.testing.assert_allclose(float(backend.numpy(sk.norm())), np.linalg.norm(expected), rtol=RTOL[dtype])
    assert tl.get_backend() == "numpy"  # no global switch


def test_random_sekron_context(backend) -> None:
    st = Structure([(2, 2), (2, 2)], "cp")
    like = backend.array(np.zeros(2), "float32")
    sk = random_sekron(st, 2, backend=backend.name, **tl.context(like))
    assert type(sk.factors[0]) is type(like) and str(sk.dtype).endswith("float32")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_torch_autograd_through_to_tensor(pattern: str) -> None:
    torch = pytest.importorskip("torch")
    st = Structure([(2, 1, 2), (1, 3, 2), (2, 2, 1)], pattern)
    sk = random_sekron(st, 2, random_state=3)
    leaves = [torch.tensor(np.asarray(f), dtype=torch.float64, requires_grad=True) for f in sk.factors]

    def reconstruct(*factors: object) -> object:
        return SeKronTensor(list(factors), st).to_tensor()

    assert torch.autograd.gradcheck(reconstruct, tuple(leaves), eps=1e-6, atol=1e-6)
    # analytic check: d<G, W>/d factor equals the finite difference along a random direction
    G = torch.tensor(np.random.default_rng(4).standard_normal(st.shape))
    (reconstruct(*leaves) * G).sum().backward()
    direction = [torch.tensor(np.random.default_rng(9 + k).standard_normal(tuple(f.shape))) for k, f in
                 enumerate(leaves)]
    h = 1e-6
    with torch.no_grad():
        plus = (reconstruct(*[f + h * d for f, d in zip(leaves, direction)]) * G).sum()
        minus = (reconstruct(*[f - h * d for f, d in zip(leaves, direction)]) * G).sum()
    analytic = sum((f.grad * d).sum() for f, d in zip(leaves, direction))
    np.testing.assert_allclose(float(analytic), float((plus - minus) / (2 * h)), rtol=1e-6)


# --- kron ----------------------------------------------------------------------------------------
def test_kron_equals_numpy_kron_on_matrices() -> None:
    rng = np.random.default_rng(0)
    A, B, C = rng.standard_normal((2, 3)), rng.standard_normal((4, 1)), rng.standard_normal((2, 2))
    np.testing.assert_array_equal(kron(A, B), np.kron(A, B))
    assert_close(kron(A, B, C), np.kron(np.kron(A, B), C))
    np.testing.assert_array_equal(kron(A), A)


@given(hst.integers(1, 4), hst.data())
def test_kron_brute_force_nd(N: int, data: hst.DataObject) -> None:
    a = data.draw(hst.tuples(*[hst.integers(1, 3)] * N))
    b = data.draw(hst.tuples(*[hst.integers(1, 3)] * N))
    rng = np.random.default_rng(math.prod(a) + 7 * math.prod(b))
    A, B = rng.standard_normal(a), rng.standard_normal(b)
    np.testing.assert_array_equal(kron(A, B), brute_kron(A, B))


def test_kron_backends(backend) -> None:
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((2, 3, 2)), rng.standard_normal((3, 1, 2))
    out = kron(backend.array(A), backend.array(B))
    assert_close(backend.numpy(out), brute_kron(A, B))


def test_kron_errors() -> None:
    with pytest.raises(ValueError, match="at least one tensor"):
        kron()
    with pytest.raises(ValueError, match="tensors of one order"):
        kron(np.ones((2, 2)), np.ones(3))
    with pytest.raises(TypeError, match=r"tensors\[1\] must be an array"):
        kron(np.ones((2, 2)), [[1.0]])


def test_pickle_and_deepcopy_rebuild_it() -> None:
    import copy
    import pickle

    sk = random_sekron(Structure([(2, 3), (3, 2)], "chain"), 2, random_state=0)
    for twin in (pickle.loads(pickle.dumps(sk)), copy.deepcopy(sk), copy.copy(sk)):
        assert twin.structure == sk.structure and twin.rank == sk.rank
        assert all(np.array_equal(a, b) for a, b in zip(twin.factors, sk.factors))
    assert copy.deepcopy(sk).factors[0] is not sk.factors[0]
