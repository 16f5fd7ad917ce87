"""Entries and slices of a SeKron tensor, read from the factors.

Mode n of W is indexed in mixed radix over the factors, factor 0 most significant:
``i_n = sum_k p_{k,n} * prod_{j>k} a_n^(j)`` with digit ``p_{k,n} < a_n^(k)``.

* ``entries(idx)``: the digits of every requested multi-index select one slice of every
  factor; the bonds are then contracted with the n requested entries as a batch axis
  (cost about ``n`` times the bond network, never W).
* ``a[key]`` with ints and slices:

  - an integer selects its digit in every factor; the mode is dropped;
  - a slice is *digit-compatible* when the selected indices, in order, are exactly the
    product of one index list per digit (``:``, ``2:4`` when the lower digits are
    whole, any slice of a mode that only one factor holds, ...). Then every factor
    takes its digit list along that mode and the structure keeps its pattern;
  - any other slice (say ``1:6`` of a mode 2 x 2 x 2) has no Kronecker structure on the
    same grid. The tensor left after the compatible part is converted exactly to a TT
    in its own modes (:func:`sekron.to_tt`, from the factors), the TT cores of those
    modes are sliced, and the result is an axis-aligned ``chain`` SeKronTensor
    (``Structure.tt``). A 1-D remainder becomes one dense factor (the sliced vector),
    refused above ``2**24`` entries.

  When every index is an int, the scalar entry is returned (a 0-d array).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorly as tl

from .._validation import check_size
from ..linalg.contraction import LabelAllocator, contract
from ..sekron_tensor import SeKronTensor
from ..structure import Structure
from ._common import backend_dtype, check_sk, like_structure, on_sk_backend

__all__ = ["entries", "getitem"]

_DENSE_1D_MAX = 1 << 24


def _strides(st: Structure) -> np.ndarray:
    """(S, N) strides: prod_{j>k} a_n^(j)."""
    A = np.array(st.factor_shapes, dtype=np.int64)
    rev = np.cumprod(A[::-1], axis=0)[::-1]
    return np.vstack([rev[1:], np.ones((1, A.shape[1]), dtype=np.int64)])


def digits_of(st: Structure, idx: np.ndarray) -> np.ndarray:
    """(n, S) flat digit of every factor for multi-indices ``idx`` of shape (n, N)."""
    A = np.array(st.factor_shapes, dtype=np.int64)
    strides = _strides(st)
    d = (idx[:, None, :] // strides[None]) % A[None]  # (n, S, N)
    fstr = np.array([[math.prod(fs[m + 1:]) for m in range(st.order)] for fs in st.factor_shapes], dtype=np.int64)
    return np.sum(d * fstr[None], axis=2)


def check_multi_index(idx: Any, shape: tuple[int, ...], name: str = "idx") -> np.ndarray:
    if hasattr(idx, "detach"):
        idx = idx.detach().cpu()
    arr = np.asarray(idx)
    if arr.ndim == 1 and len(shape) == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != len(shape):
        raise ValueError(f"{name} must be an integer array of shape (n, {len(shape)}) (one multi-index per row "
                         f"into shape {shape}), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    dims = np.array(shape, dtype=np.int64)
    bad = (arr < -dims) | (arr >= dims)
    if bad.any():
        row = int(np.nonzero(bad.any(axis=1))[0][0])
        raise IndexError(f"{name}[{row}] = {arr[row].tolist()} is out of bounds for shape {shape}")
    return np.where(arr < 0, arr + dims, arr)


@on_sk_backend
def entries(sk: SeKronTensor, idx: Any) -> Any:
    """The entries ``W[idx[j]]`` for an (n, N) integer array of multi-indices: n values.

    Negative indices count from the end. Cost: n times one contraction of the bond network.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> sk = sekron.random_sekron(sekron.Structure([(2, 3), (3, 2), (2, 2)], "chain"), 2)
    >>> idx = np.array([[0, 0], [11, 11], [5, -1]])
    >>> W = sk.to_tensor()
    >>> bool(np.allclose(entries(sk, idx), [W[0, 0], W[11, 11], W[5, -1]]))
    True
    """
    check_sk(sk, "sk")
    st = sk.structure
    arr = check_multi_index(idx, st.shape)
    n = arr.shape[0]
    if n == 0:
        return tl.reshape(sk.factors[0], (-1,))[:0]
    dig = digits_of(st, arr)
    batch = LabelAllocator(st.labels).new()
    ops = []
    for k, (f, lab) in enumerate(zip(sk.factors, st.labels)):
        nb = len(lab)
        flat = tl.reshape(f, (*tuple(int(s) for s in f.shape[:nb]), st.factor_sizes[k]))
        flat = tl.moveaxis(flat, nb, 0) if nb else flat
        sel = flat[tl.tensor(dig[:, k], dtype=backend_dtype("int64"), **_device(f))]  # (n, bonds...)
        ops.append((batch + lab, sel))
    return contract(ops, batch)


def _device(f: Any) -> dict[str, Any]:
    ctx = tl.context(f)
    return {"device": ctx["device"]} if "device" in ctx and tl.get_backend() == "pytorch" else {}


def _normalize_key(key: Any, N: int) -> list[Any]:
    if not isinstance(key, tuple):
        key = (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        fill = N - (len(key) - 1)
        key = key[:i] + (slice(None),) * max(fill, 0) + key[i + 1:]
    if len(key) > N:
        raise IndexError(f"too many indices: the tensor has {N} modes but {len(key)} were indexed")
    out = []
    for k in key:
        if isinstance(k, bool) or not (isinstance(k, int | np.integer | slice)):
            raise TypeError(f"SeKronTensor indices must be ints, slices or '...', got {type(k).__name__} ({k!r}); "
                            "for a list of entries use sk.entries(idx)")
        out.append(int(k) if isinstance(k, int | np.integer) else k)
    return out + [slice(None)] * (N - len(out))


def _digit_lists(sel: np.ndarray, column: list[int]) -> list[np.ndarray] | None:
    """Per-factor digit lists whose product (lexicographic) is ``sel``, or None when there are none."""
    a = np.array(column, dtype=np.int64)
    strides = np.concatenate([np.cumprod(a[::-1])[::-1][1:], [1]])
    d = (sel[:, None] // strides[None]) % a[None]
    lists = [np.array(list(dict.fromkeys(d[:, k].tolist())), dtype=np.int64) for k in range(len(a))]
    if math.prod(len(x) for x in lists) != len(sel):
        return None
    grid = np.meshgrid(*lists, indexing="ij")
    rebuilt = sum(g.reshape(-1) * s for g, s in zip(grid, strides))
    return lists if np.array_equal(rebuilt, sel) else None


def _take(f: Any, axis: int, index: np.ndarray) -> Any:
    key = (slice(None),) * axis + (tl.tensor(index, dtype=backend_dtype("int64"), **_device(f)),)
    return f[key]


@on_sk_backend
def getitem(sk: SeKronTensor, key: Any) -> Any:
    """``sk[key]`` for ints, slices and ``...``: a SeKronTensor, or a 0-d array when all are ints.

    See the module docstring for which slices keep the structure.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> sk = sekron.random_sekron(sekron.Structure([(2, 3, 2), (3, 2, 2)], "nested"), 2)
    >>> W = sk.to_tensor()
    >>> sub = getitem(sk, (1, slice(None), slice(0, 2)))
    >>> sub.shape, sub.pattern, bool(np.allclose(sub.to_tensor(), W[1, :, 0:2]))
    ((6, 2), 'nested', True)
    >>> odd = getitem(sk, (slice(1, 5), 0))
    >>> odd.pattern, bool(np.allclose(odd.to_tensor(), W[1:5, 0]))
    ('chain', True)
    """
    check_sk(sk, "sk")
    st = sk.structure
    N = st.order
    keys = _normalize_key(key, N)
    if all(isinstance(k, int) for k in keys):
        idx = np.array([keys], dtype=np.int64)
        return tl.reshape(entries(sk, idx), ())
    factors = list(sk.factors)
    shapes = [list(s) for s in st.factor_shapes]
    drop: list[int] = []
    general: dict[int, np.ndarray] = {}
    for n, k in enumerate(keys):
        d = st.shape[n]
        column = [s[n] for s in st.factor_shapes]
        if isinstance(k, int):
            if not -d <= k < d:
                raise IndexError(f"index {k} is out of bounds for mode {n} of size {d}")
            sel = np.array([k % d], dtype=np.int64)
            drop.append(n)
        else:
            if k == slice(None):
                continue
            check_size(len(range(*k.indices(d))) * len(column), f"the digit lists of slice {k} on mode {n}",
                       "use a slice that follows the digits, or sk.entries")
            sel = np.arange(*k.indices(d), dtype=np.int64)
            if len(sel) == 0:
                raise IndexError(f"slice {k} selects nothing from mode {n} of size {d}; a SeKronTensor cannot "
                                 "have an empty mode")
            if len(sel) == d and np.array_equal(sel, np.arange(d)):
                continue
        lists = _digit_lists(sel, column)
        if lists is None:
            general[n] = sel
            continue
        for j, lst in enumerate(lists):
            if len(lst) == column[j] and np.array_equal(lst, np.arange(column[j])):
                continue
            nb = len(st.labels[j])
            factors[j] = _take(factors[j], nb + n, lst)
            shapes[j][n] = len(lst)
    keep = [n for n in range(N) if n not in drop]
    new_shapes = [tuple(s[n] for n in keep) for s in shapes]
    factors = [tl.reshape(f, tuple(int(x) for x in f.shape[:len(lab)]) + ns)
               for f, lab, ns in zip(factors, st.labels, new_shapes)]
    out = SeKronTensor(factors, like_structure(st, new_shapes))
    if not general:
        return out
    return _general_slices(out, {keep.index(n): sel for n, sel in general.items()})


def _general_slices(sk: SeKronTensor, sels: dict[int, np.ndarray]) -> SeKronTensor:
    from ..conversions import from_tt, to_tt

    st = sk.structure
    if st.order == 1:
        sel = sels[0]
        if len(sel) > _DENSE_1D_MAX:
            raise ValueError(f"slicing a 1-D SeKronTensor of size {st.shape[0]} with a step/range that does not "
                             f"follow its digits gives a dense vector of {len(sel)} entries (limit "
                             f"{_DENSE_1D_MAX}); use a digit-compatible slice or sk.entries")
        vals = entries(sk, sel[:, None])
        return SeKronTensor([vals], Structure([(len(sel),)]))
    cores = list(to_tt(sk))
    for n, sel in sels.items():
        cores[n] = _take(cores[n], 1, sel)
    return from_tt(cores)
