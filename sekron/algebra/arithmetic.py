"""Arithmetic on SeKron tensors of one structure, computed on the factors only.

Every operation keeps the structure (factor shapes and bond labels); W is never formed.

* ``a + b`` (direct sum): each factor becomes block-diagonal over its bonds, A's factor in
  the leading block of every bond and B's in the trailing block, zeros elsewhere. A bond
  index then lies in A's or B's range, and a product over the factors is non-zero only
  when every factor sees one range: along any bond two neighbours agree, so in a
  connected bond graph either every index is A's or every index is B's, and the sum over
  the bonds is ``W_a + W_b``. Bond sizes add: ``R_c = R_c^a + R_c^b``. This is one rule
  for every pattern: ``cp`` ranks add (the terms are concatenated), ``chain`` and ``ring``
  cores become block-diagonal (the first/last core of a chain only concatenated since it
  has one bond), ``tucker`` factors are concatenated along their bond and the core is
  block-diagonal, ``nested`` factors are block-diagonal over all their bonds. A custom
  bond graph with several components (or a factor without bonds, S > 1) cannot hold a
  sum in its own structure: that raises ValueError.
* ``a * b`` (Hadamard): ``W = R^{-1}(T)`` is a permutation of T, so the Hadamard product of
  the W's is that of the T's, whose factor k is the outer product of the two factors over
  their bonds and the element-wise product over the digits. Bond sizes multiply.
* ``c * a``, ``a / c``, ``-a`` scale the first factor; ``conj`` conjugates every factor.
* :func:`inner` contracts the network of ``conj(a)`` and ``b`` joined at their digits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorly as tl

from .._backend import dispatch, using
from .._validation import check_size
from ..linalg.contraction import LabelAllocator, contract
from ..sekron_tensor import SeKronTensor
from ..structure import Structure
from ._common import (
    backend_dtype,
    cast_all,
    check_same_structure,
    check_sk,
    connected,
    dtype_name,
    is_scalar,
    result_dtype,
    scalar_dtype,
    zeros_like_shape,
)

__all__ = ["add", "allclose", "astype", "conj", "hadamard", "inner", "negative", "norm", "scale", "subtract"]


def _operands(a: Any, b: Any, what: str) -> tuple[Structure, list[Any], list[Any]]:
    """Check two SeKron operands of ``what`` and return their structure and promoted factors."""
    check_sk(a, "a")
    check_sk(b, "b")
    check_same_structure(a, b, what)
    fa, fb = _promote(a, b)
    return a.structure, fa, fb


def _promote(a: SeKronTensor, b: SeKronTensor) -> tuple[list[Any], list[Any]]:
    name = result_dtype(dtype_name(a.dtype), dtype_name(b.dtype))
    return cast_all(a.factors, name), cast_all(b.factors, name)


def _pad(x: Any, axis: int, before: int, after: int) -> Any:
    parts = []
    shape = [int(s) for s in x.shape]
    if before:
        shape[axis] = before
        parts.append(zeros_like_shape(shape, x))
    parts.append(x)
    if after:
        shape[axis] = after
        parts.append(zeros_like_shape(shape, x))
    return tl.concatenate(parts, axis=axis) if len(parts) > 1 else x


@dispatch
def add(a: SeKronTensor, b: SeKronTensor) -> SeKronTensor:
    """``a + b`` in the common structure, by direct sums on every bond (bond sizes add).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> st = sekron.Structure([(2, 3), (3, 2), (2, 2)], "chain")
    >>> a, b = sekron.random_sekron(st, 2, 0), sekron.random_sekron(st, 3, 1)
    >>> s = add(a, b)
    >>> s.rank
    {'a': 5, 'b': 5}
    >>> bool(np.allclose(s.to_tensor(), a.to_tensor() + b.to_tensor()))
    True
    """
    st, fa, fb = _operands(a, b, "a + b")
    if st.n_factors == 1:
        return SeKronTensor([fa[0] + fb[0]], st)
    if not connected(st.labels):
        raise ValueError(f"a + b needs a connected bond graph to stay in its structure; labels {st.labels!r} "
                         "leave some factors unjoined. Convert both to a named pattern first (sekron.convert)")
    ra, rb = a.rank, b.rank
    out = []
    for A, B, lab in zip(fa, fb, st.labels):
        for i, c in enumerate(lab):
            A = _pad(A, i, 0, rb[c])
            B = _pad(B, i, ra[c], 0)
        out.append(A + B)
    return SeKronTensor(out, st)


@dispatch
def scale(a: SeKronTensor, c: Any) -> SeKronTensor:
    """``c * a`` for a scalar ``c`` (the first factor is scaled).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> a = sekron.random_sekron(sekron.Structure([(2, 2), (2, 2)], "cp"), 2)
    >>> bool(np.allclose(scale(a, -2.5).to_tensor(), -2.5 * a.to_tensor()))
    True
    """
    check_sk(a, "a")
    if not is_scalar(c):
        raise TypeError(f"scale needs a scalar (a number or a 0-d array), got {type(c).__name__}; "
                        "for an element-wise product with a tensor use a * b on two SeKronTensors")
    name = scalar_dtype(c, dtype_name(a.dtype))
    factors = cast_all(a.factors, name)
    if hasattr(c, "item"):
        c = c.item()  # numpy scalar or 0-d array of any backend: a Python number keeps the factors' precision
    factors[0] = factors[0] * c
    return SeKronTensor(factors, a.structure)


def negative(a: SeKronTensor) -> SeKronTensor:
    """``-a``.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> a = sekron.random_sekron([(2, 2), (2, 2)], 2)
    >>> bool(np.allclose(negative(a).to_tensor(), -a.to_tensor()))
    True
    """
    return scale(a, -1)


def subtract(a: SeKronTensor, b: SeKronTensor) -> SeKronTensor:
    """``a - b`` (bond sizes add).

    Examples
    --------
    >>> import sekron
    >>> a = sekron.random_sekron(sekron.Structure([(2, 2), (2, 2)], "chain"), 2)
    >>> bool(subtract(a, a).norm() < 1e-6)
    True
    """
    check_sk(b, "b")
    return add(a, negative(b))


@dispatch
def hadamard(a: SeKronTensor, b: SeKronTensor) -> SeKronTensor:
    """Element-wise product ``a * b`` of two SeKronTensors of one structure (bond sizes multiply).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> st = sekron.Structure([(2, 3), (3, 2)], "cp")
    >>> a, b = sekron.random_sekron(st, 2, 0), sekron.random_sekron(st, 3, 1)
    >>> h = hadamard(a, b)
    >>> h.rank, bool(np.allclose(h.to_tensor(), a.to_tensor() * b.to_tensor()))
    ({'a': 6}, True)
    """
    check_sk(a, "a")
    check_sk(b, "b")
    check_same_structure(a, b, "a * b")
    st = a.structure
    fa, fb = _promote(a, b)
    ra, rb = a.rank, b.rank
    check_size(st.n_params({c: ra[c] * rb[c] for c in ra}), "the factors of the element-wise product a * b",
               "round the operands first (sekron.round)")
    out = []
    for A, B, lab, fshape in zip(fa, fb, st.labels, st.factor_shapes):
        sa = tuple(x for c in lab for x in (ra[c], 1)) + fshape
        sb = tuple(x for c in lab for x in (1, rb[c])) + fshape
        prod = tl.reshape(A, sa) * tl.reshape(B, sb)
        out.append(tl.reshape(prod, tuple(ra[c] * rb[c] for c in lab) + fshape))
    return SeKronTensor(out, st)


@dispatch
def conj(a: SeKronTensor) -> SeKronTensor:
    """Complex conjugate (the factors conjugated; a real tensor is returned unchanged).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> a = sekron.random_sekron([(2, 2), (2, 2)], 2, dtype=np.complex128)
    >>> bool(np.allclose(conj(a).to_tensor(), np.conj(a.to_tensor())))
    True
    """
    check_sk(a, "a")
    if "complex" not in dtype_name(a.dtype):
        return a
    return SeKronTensor([_resolved(tl.conj(f)) for f in a.factors], a.structure)


def _resolved(x: Any) -> Any:
    return x.resolve_conj() if hasattr(x, "resolve_conj") else x  # torch's lazy conjugate bit


@dispatch
def astype(a: SeKronTensor, dtype: Any) -> SeKronTensor:
    """The same tensor with factors cast to ``dtype`` (a name such as "float32" or a backend dtype).

    Complex to real is refused (it would drop the imaginary part silently).

    Examples
    --------
    >>> import sekron
    >>> a = sekron.random_sekron([(2, 2), (2, 2)], 2)
    >>> str(astype(a, "float32").dtype)
    'float32'
    """
    check_sk(a, "a")
    name = dtype_name(dtype)
    try:
        np.dtype(name)
        backend_dtype(name)
    except (TypeError, AttributeError) as exc:
        raise TypeError(f"dtype must name a float or complex dtype (e.g. 'float32', 'complex128'), got {dtype!r}"
                        ) from exc
    if "float" not in name and "complex" not in name:
        raise TypeError(f"SeKron factors must be floating or complex, got dtype {dtype!r}")
    if "complex" in dtype_name(a.dtype) and "complex" not in name:
        raise ValueError(f"astype({dtype!r}) from {dtype_name(a.dtype)} would drop the imaginary part; take "
                         "the real part yourself (e.g. (a + a.conj()) / 2 stays complex) or keep a complex dtype")
    return SeKronTensor(cast_all(a.factors, name), a.structure)


def _flat(f: Any, nb: int, P: int) -> Any:
    return tl.reshape(f, (*tuple(int(s) for s in f.shape[:nb]), P))


@dispatch
def inner(a: SeKronTensor, b: SeKronTensor) -> Any:
    """``<a, b> = sum(conj(W_a) * W_b)``, contracted from the factors (``numpy.vdot`` convention).

    The two networks are joined at their digits and contracted greedily (for a chain:
    a left-to-right sweep costing about ``S * R^3 * P`` operations).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> st = sekron.Structure([(2, 3), (3, 2), (2, 2)], "ring")
    >>> a, b = sekron.random_sekron(st, 2, 0), sekron.random_sekron(st, 3, 1)
    >>> bool(np.isclose(inner(a, b), np.vdot(a.to_tensor(), b.to_tensor())))
    True
    """
    st, fa, fb = _operands(a, b, "inner(a, b)")
    bonds = st.bond_labels
    fresh = LabelAllocator(st.labels)
    la = {c: fresh.new() for c in bonds}
    lb = {c: fresh.new() for c in bonds}
    ops = []
    for k, (A, B, lab) in enumerate(zip(fa, fb, st.labels)):
        d = fresh.new()
        P = st.factor_sizes[k]
        ops.append(("".join(la[c] for c in lab) + d, tl.conj(_flat(A, len(lab), P))))
        ops.append(("".join(lb[c] for c in lab) + d, _flat(B, len(lab), P)))
    return contract(ops, "")


_DENSE_NORM_MAX = 1 << 16  # entries of W below which norm() sums W directly when the network is larger


@dispatch
def norm(a: SeKronTensor) -> Any:
    """Frobenius norm ``sqrt(<a, a>)`` from :func:`inner`.

    Small tensors whose doubled bond network would be larger than W are summed densely
    (at most ``2**16`` entries); W is never formed otherwise.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> a = sekron.random_sekron(sekron.Structure([(2, 3), (3, 2)], "tucker"), 2)
    >>> bool(np.isclose(norm(a), np.linalg.norm(a.to_tensor())))
    True
    """
    check_sk(a, "a")
    from ..sekron_tensor import _scaled

    scaled, log_scale = _scaled(a)  # tiny (1e-200) or huge factors: contract at unit scale (issue 11)
    value = _norm_unscaled(scaled)
    if log_scale == 0:
        return value
    with np.errstate(over="ignore"):  # a norm beyond the dtype's range is inf, as numpy's would be
        return value * float(np.exp(log_scale))


def _norm_unscaled(a: SeKronTensor) -> Any:
    size = math.prod(a.shape)
    if size <= _DENSE_NORM_MAX and math.prod(a.rank.values()) ** 2 > size:
        return tl.norm(tl.reshape(a.to_tensor(), (-1,)))
    sq = inner(a, a)
    return tl.sqrt(tl.abs(sq))


def allclose(a: SeKronTensor, b: SeKronTensor, rtol: float = 1e-5, atol: float = 0.0) -> bool:
    """Whether ``||a - b||_F <= atol + rtol * ||b||_F``, from the factors (W is never formed).

    A Frobenius-norm test, not an entry-wise one (``==`` on SeKronTensors raises and points
    here). Computed in double precision; its floor is about ``1e-8 ||a||`` (the norm of a
    difference is contracted from the factors, which cancels). Operands of different
    structures but one shape are compared through their exact TTs (:func:`sekron.to_tt`).

    Examples
    --------
    >>> import sekron
    >>> a = sekron.random_sekron(sekron.Structure([(2, 2), (2, 2)], "chain"), 2)
    >>> allclose(a, a * 1.0), allclose(a, 1.001 * a)
    (True, False)
    """
    check_sk(a, "a")
    check_sk(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"allclose needs two tensors of one shape, got {a.shape} and {b.shape}")
    if a._backend != b._backend:
        raise TypeError(f"allclose needs operands of one framework, got {a._backend} and {b._backend}")
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    if a.structure.labels != b.structure.labels or a.structure.factor_shapes != b.structure.factor_shapes:
        from ..conversions import from_tt, to_tt

        with using(a._backend):
            a = from_tt(to_tt(a)) if a.structure.order > 1 else a
            b = from_tt(to_tt(b)) if b.structure.order > 1 else b
        if a.structure != b.structure:
            raise ValueError(f"allclose cannot align the structures of shapes {a.shape} (order 1 with different "
                             "grids); convert one into the other's structure first")
    wide = "complex128" if "complex" in dtype_name(a.dtype) + dtype_name(b.dtype) else "float64"
    with using(a._backend):
        a64 = SeKronTensor(cast_all(a.factors, wide), a.structure)
        b64 = SeKronTensor(cast_all(b.factors, wide), b.structure)
        diff = float(tl.to_numpy(norm(subtract(a64, b64))))
        ref = float(tl.to_numpy(norm(b64)))
    return bool(diff <= atol + rtol * ref)



