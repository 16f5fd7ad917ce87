"""A 2-D SeKron tensor as a linear operator: products through its Kronecker structure.

For W of shape (M, N) every factor k is a stack of ``a_k x b_k`` matrices over its bonds and
``W = sum over bonds of F_1[bonds] kron .. kron F_S[bonds]`` (MATH's Kronecker convention,
factor 0 most significant). ``W @ x`` reshapes x to ``(b_1, .., b_S, K)`` and applies the
factors one at a time: step k replaces the digit ``j_k`` by ``i_k`` and contracts the bonds
that no later factor carries. For a chain of rank R the cost is about
``sum_k R^2 a_k M_<k N_>k K`` operations instead of ``M N K``; the matrix is never formed.
``W.T`` transposes every factor's digit axes (``W^T = sum kron F_k^T``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorly as tl

from .._backend import dispatch, using
from .._validation import check_array, check_size
from ..linalg.contraction import LabelAllocator, einsum2
from ..sekron_tensor import SeKronTensor
from ._common import backend_dtype, check_sk, dtype_name, like_structure, result_dtype

__all__ = ["DENSE_LIMIT", "dense", "linear_operator", "matmul", "rmatmul", "transpose"]

#: entries above which ``numpy.asarray(sk)`` refuses to form W (``sk.to_tensor()`` goes up to the size budget,
#: ``sekron.set_max_elements``, which caps both)
DENSE_LIMIT = 1 << 27


@dispatch
def transpose(sk: SeKronTensor) -> SeKronTensor:
    """``W.T``: every mode order reversed (for a matrix, the transpose), factor by factor.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> sk = sekron.random_sekron(sekron.Structure([(2, 3), (4, 1)], "cp"), 2)
    >>> bool(np.allclose(transpose(sk).to_tensor(), sk.to_tensor().T))
    True
    """
    check_sk(sk, "sk")
    st = sk.structure
    N = st.order
    factors = []
    for f, lab in zip(sk.factors, st.labels):
        nb = len(lab)
        factors.append(tl.transpose(f, (*range(nb), *range(nb + N - 1, nb - 1, -1))))
    return SeKronTensor(factors, like_structure(st, [tuple(reversed(s)) for s in st.factor_shapes]))


def _check_matrix(sk: SeKronTensor, op: str) -> None:
    if sk.structure.order != 2:
        raise ValueError(f"{op} needs a 2-D SeKronTensor (a matrix), got shape {sk.shape}; reshape your tensor's "
                         "modes into two groups when decomposing it")


def _bond_last_use(labels: tuple[str, ...]) -> dict[str, int]:
    last: dict[str, int] = {}
    for k, lab in enumerate(labels):
        for c in lab:
            last[c] = k
    return last


@dispatch
def matmul(sk: SeKronTensor, x: Any) -> Any:
    """``W @ x`` for x of shape (N,) or (N, K), through the factors (W is never formed).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> sk = sekron.random_sekron(sekron.Structure([(2, 3), (4, 2), (2, 2)], "chain"), 3)
    >>> x = np.arange(12.0)
    >>> bool(np.allclose(matmul(sk, x), sk.to_tensor() @ x))
    True
    """
    check_sk(sk, "sk")
    _check_matrix(sk, "a @ x")
    check_array(x, "x")
    st = sk.structure
    M, N = st.shape
    shape = tuple(int(s) for s in x.shape)
    if len(shape) not in (1, 2) or shape[0] != N:
        raise ValueError(f"a @ x needs x of shape ({N},) or ({N}, K) for a of shape {sk.shape}, got {shape}")
    K = 1 if len(shape) == 1 else shape[1]
    name = result_dtype(dtype_name(sk.dtype), dtype_name(x.dtype))
    from ._common import cast

    factors = [cast(f, name) for f in sk.factors]
    y = cast(x, name)
    S = st.n_factors
    if S > 1 and len(set(st.labels)) == 1 and len(st.labels[0]) == 1:
        Y = _matmul_one_bond(factors, st.factor_shapes, y, K)
        return Y[:, 0] if len(shape) == 1 else Y
    fresh = LabelAllocator(st.labels)
    i_lab, j_lab, kl = list(fresh.many(S)), list(fresh.many(S)), fresh.new()
    b = [s[1] for s in st.factor_shapes]
    Y = tl.reshape(y, (*b, K))
    spec = "".join(j_lab) + kl
    last = _bond_last_use(st.labels)
    open_bonds: list[str] = []
    for k, (F, lab) in enumerate(zip(factors, st.labels)):
        new_open = [c for c in open_bonds + [c for c in lab if c not in open_bonds] if last[c] > k]
        out = "".join(new_open) + "".join(i_lab[: k + 1]) + "".join(j_lab[k + 1:]) + kl
        Y = einsum2(spec, Y, lab + i_lab[k] + j_lab[k], F, out)
        spec, open_bonds = out, new_open
    Y = tl.reshape(Y, (M, K))
    return Y[:, 0] if len(shape) == 1 else Y


def _matmul_one_bond(factors: list[Any], grid: Any, y: Any, K: int) -> Any:
    """``W @ x`` when every factor carries the same single bond (cp; nested/chain/tucker with S = 2).

    The classic rotating Kronecker product: Y is kept as (bond, j_k .. j_S, K, i_1 .. i_{k-1});
    each step is one batched matmul ``Y^T F_k^T`` that consumes j_k at the front and
    appends i_k at the back, so no transpose is ever copied.
    """
    R = int(factors[0].shape[0])
    Y = tl.reshape(y, (1, grid[0][1], -1))
    for k, F in enumerate(factors):
        out = tl.matmul(tl.transpose(Y, (0, 2, 1)), tl.transpose(F, (0, 2, 1)))  # (R, rest, a_k)
        nxt = grid[k + 1][1] if k + 1 < len(factors) else K
        Y = tl.reshape(out, (R, nxt, -1))
    M = math.prod(g[0] for g in grid)
    return tl.transpose(tl.sum(tl.reshape(Y, (R, K, M)), axis=0), (1, 0))


def rmatmul(sk: SeKronTensor, x: Any) -> Any:
    """``x @ W`` for x of shape (M,) or (K, M): ``(W.T @ x.T).T``.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> sk = sekron.random_sekron(sekron.Structure([(2, 3), (4, 2)], "nested"), 2)
    >>> x = np.ones((2, 8))
    >>> bool(np.allclose(rmatmul(sk, x), x @ sk.to_tensor()))
    True
    """
    check_sk(sk, "sk")
    _check_matrix(sk, "x @ a")
    check_array(x, "x")
    shape = tuple(int(s) for s in x.shape)
    if len(shape) == 1:
        return matmul(transpose(sk), x)
    if len(shape) != 2:
        raise ValueError(f"x @ a needs x of shape ({sk.shape[0]},) or (K, {sk.shape[0]}), got {shape}")
    with using(sk._backend):
        return tl.transpose(matmul(transpose(sk), tl.transpose(x, (1, 0))), (1, 0))


def linear_operator(sk: SeKronTensor) -> Any:
    """A ``scipy.sparse.linalg.LinearOperator`` of a 2-D SeKronTensor (matvec, rmatvec, matmat).

    Inputs and outputs are numpy arrays; a torch or jax SeKronTensor computes in its own
    framework (and device) and copies back. ``rmatvec`` applies the conjugate transpose,
    so ``cg``, ``gmres``, ``lsqr`` and ``eigsh`` run on it.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> from scipy.sparse.linalg import cg
    >>> rng = np.random.default_rng(0)
    >>> spd = lambda n: (lambda m: m @ m.T + n * np.eye(n))(rng.standard_normal((n, n)))
    >>> A = sekron.SeKronTensor([np.stack([spd(4)]), np.stack([spd(8)])], sekron.Structure([(4, 4), (8, 8)], "cp"))
    >>> b = np.ones(32)
    >>> x, info = cg(linear_operator(A), b, rtol=1e-10)
    >>> info, bool(np.allclose(A @ x, b))
    (0, True)
    """
    from scipy.sparse.linalg import LinearOperator

    check_sk(sk, "sk")
    _check_matrix(sk, "linear_operator")
    M, N = sk.shape
    AH = transpose(_conj(sk))
    ref = sk.factors[0]
    backend = sk._backend

    def to_backend(v: np.ndarray) -> Any:
        with using(backend):
            name = result_dtype(dtype_name(sk.dtype), str(np.asarray(v).dtype))
            ctx = {k: val for k, val in tl.context(ref).items() if k != "requires_grad"}
            ctx["dtype"] = backend_dtype(name)
            return tl.tensor(np.asarray(v), **ctx)

    def back(y: Any) -> np.ndarray:
        with using(backend):
            return np.asarray(tl.to_numpy(y))

    return LinearOperator(
        (M, N), dtype=np.dtype(dtype_name(sk.dtype)),
        matvec=lambda v: back(matmul(sk, to_backend(np.ravel(v)))),
        rmatvec=lambda v: back(matmul(AH, to_backend(np.ravel(v)))),
        matmat=lambda V: back(matmul(sk, to_backend(V))),
        rmatmat=lambda V: back(matmul(AH, to_backend(V))),
    )


def _conj(sk: SeKronTensor) -> SeKronTensor:
    from .arithmetic import conj

    return conj(sk)  # type: ignore[no-any-return]


def dense(sk: SeKronTensor, dtype: Any = None) -> np.ndarray:
    """W as a numpy array, refused above :data:`DENSE_LIMIT` entries (``numpy.asarray(sk)``).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> sk = sekron.random_sekron([(2, 2), (2, 2)], 1)
    >>> np.asarray(sk).shape
    (4, 4)
    """
    check_sk(sk, "sk")
    size = math.prod(sk.shape)
    if size > DENSE_LIMIT:
        raise ValueError(f"numpy.asarray would form a dense array of {size} entries (shape {sk.shape}), above "
                         f"sekron.algebra.DENSE_LIMIT = {DENSE_LIMIT}; call sk.to_tensor() to form it anyway, or "
                         "compute in SeKron form (entries, slicing, @, inner)")
    check_size(size, "numpy.asarray(sk)", "compute in SeKron form (entries, slicing, @, inner)")
    with using(sk._backend):
        W = tl.to_numpy(sk.to_tensor())
    W = np.asarray(W)
    return W if dtype is None else W.astype(dtype)
