"""SeKronTensor: the immutable container, its reconstruction, and the N-D Kronecker product.

Factor-axis convention (referred to everywhere else in sekron): factor ``k`` of a
structure with bond labels ``labels[k]`` and factor shape ``factor_shapes[k]`` is stored
as an array of shape ``(*bond sizes in labels[k] order, *factor_shapes[k])``: the bond
axes first, then the N digit axes. The tensor is

    T[p_1..p_S] = sum over all bonds of prod_k factor_k[bonds_k, p_k],   W = R^{-1}(T)

where ``p_k`` flattens factor k's digits and R is :meth:`Structure.rearrange`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl

from ._backend import dispatch, infer_backend, using
from ._validation import check_array, check_size
from .linalg.contraction import LabelAllocator, contract
from .structure import Structure


def _as_structure(structure: Any) -> Structure:
    if isinstance(structure, Structure):
        return structure
    if isinstance(structure, Sequence) and not isinstance(structure, (str, bytes)):
        return Structure(structure, "nested")
    raise TypeError(f"structure must be a sekron.Structure or a list of factor shapes, got {type(structure).__name__}")


def _validate_factors(factors: Any, st: Structure) -> tuple[tuple[Any, ...], str]:
    """The factors as a tuple, and their one tensorly backend; raise on any mismatch."""
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence):
        raise TypeError(f"factors must be a sequence of arrays, one per factor, got {type(factors).__name__}")
    factors = tuple(factors)
    if len(factors) != st.n_factors:
        raise ValueError(f"structure has {st.n_factors} factors but {len(factors)} arrays were given")
    backend = infer_backend(*factors)
    sizes: dict[str, tuple[int, int]] = {}
    for k, (f, labels, fshape) in enumerate(zip(factors, st.labels, st.factor_shapes)):
        check_array(f, f"factors[{k}]")
        want = len(labels) + st.order
        shape = tuple(int(s) for s in f.shape)
        if len(shape) != want:
            raise ValueError(
                f"factors[{k}] must have {want} axes ({len(labels)} bonds {labels!r} then the "
                f"{st.order} digit axes {fshape}), got shape {shape}"
            )
        if shape[len(labels):] != fshape:
            raise ValueError(f"factors[{k}] digit axes {shape[len(labels):]} do not match factor shape {fshape}")
        for c, size in zip(labels, shape):
            if c in sizes and sizes[c][1] != size:
                raise ValueError(
                    f"bond {c!r} has size {sizes[c][1]} in factors[{sizes[c][0]}] but {size} in "
                    f"factors[{k}]; the factors sharing a bond must agree on its size"
                )
            sizes.setdefault(c, (k, size))
    dtypes = {str(f.dtype) for f in factors}
    if len(dtypes) > 1:
        raise TypeError(f"all factors must share one dtype, got {sorted(dtypes)}; cast them first")
    dtype = dtypes.pop()
    if not any(k in dtype for k in ("float", "complex")):
        raise TypeError(
            f"factors must have a floating or complex dtype, got {dtype} (integer products overflow silently and "
            "bool/object arrays have no arithmetic); cast them first, e.g. f.astype(numpy.float64) or f.double()")
    return factors, backend


class SeKronTensor:
    """A tensor in SeKron form: factors plus their :class:`~sekron.Structure`.

    Validated once, and immutable as an object: its factors and structure cannot be
    reassigned, and no sekron function modifies a factor in place. The factor arrays are
    **not copied**, though: the SeKronTensor holds the very arrays passed in (and
    :func:`sekron.from_tt` holds the TT cores it was given), so writing into one of them
    afterwards, or into ``sk.factors[k]``, changes the tensor. Pass copies
    (``[f.copy() for f in factors]``) when the arrays will be reused. Factor ``k`` has shape
    ``(*bond sizes in structure.labels[k] order, *structure.factor_shapes[k])``; the
    dtype must be floating or complex.

    Parameters
    ----------
    factors : sequence of arrays
        One array per factor, all of one backend and dtype.
    structure : Structure or sequence of factor shapes
        A plain list of factor shapes means the ``nested`` pattern.

    Examples
    --------
    >>> import numpy as np
    >>> A, B = np.ones((1, 2, 2)), np.ones((1, 3, 3))
    >>> sk = SeKronTensor([A, B], [(2, 2), (3, 3)])
    >>> sk.shape, sk.rank, sk.n_params
    ((6, 6), {'a': 1}, 13)
    >>> bool(np.allclose(sk.to_tensor(), np.kron(A[0], B[0])))
    True
    """

    __slots__ = ("_backend", "_factors", "_structure")
    _factors: tuple[Any, ...]
    _structure: Structure
    _backend: str  # the factors' tensorly backend, found once (read by _backend.infer_backend)

    def __init__(self, factors: Sequence[Any], structure: Structure | Sequence[Sequence[int]]) -> None:
        st = _as_structure(structure)
        object.__setattr__(self, "_structure", st)
        checked, backend = _validate_factors(factors, st)
        object.__setattr__(self, "_factors", checked)
        object.__setattr__(self, "_backend", backend)

    @classmethod
    def _trusted(cls, factors: Sequence[Any], st: Structure, backend: str) -> SeKronTensor:
        """Wrap factors that an algorithm of sekron just built for ``st`` (right by construction) on
        ``backend``: no validation and no second backend inference."""
        self = object.__new__(cls)
        object.__setattr__(self, "_structure", st)
        object.__setattr__(self, "_factors", tuple(factors))
        object.__setattr__(self, "_backend", backend)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("SeKronTensor is immutable; build a new one instead")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle, ``copy.copy`` and ``copy.deepcopy`` rebuild it from its factors and structure."""
        return (SeKronTensor, (self._factors, self._structure))

    @property
    def factors(self) -> tuple[Any, ...]:
        """The factors, as a tuple (see the module docstring for their axes)."""
        return self._factors

    @property
    def structure(self) -> Structure:
        """The factor-shape grid and bond pattern."""
        return self._structure

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the full tensor W."""
        return self._structure.shape

    @property
    def pattern(self) -> str | None:
        """The structure's named pattern (None for custom labels)."""
        return self._structure.pattern

    @property
    def rank(self) -> dict[str, int]:
        """Bond sizes, ``{label: size}`` in the structure's bond-label order."""
        out: dict[str, int] = {}
        for f, labels in zip(self._factors, self._structure.labels):
            for i, c in enumerate(labels):
                out.setdefault(c, int(f.shape[i]))
        return {c: out[c] for c in self._structure.bond_labels}

    @property
    def n_params(self) -> int:
        """Number of stored entries: the sum of the factors' sizes."""
        return sum(math.prod(tuple(int(s) for s in f.shape)) for f in self._factors)

    @property
    def dtype(self) -> Any:
        """dtype of the factors."""
        return self._factors[0].dtype

    def to_tensor(self) -> Any:
        """The full tensor W (same backend, dtype and device as the factors).

        Refused with a ValueError, before allocating, when W has more elements than
        the size budget (``sekron.set_max_elements``).

        Examples
        --------
        >>> import sekron
        >>> st = sekron.Structure([(2, 2), (2, 2)])
        >>> sekron.random_sekron(st, 2).to_tensor().shape
        (4, 4)
        """
        return sekron_to_tensor(self)

    def norm(self) -> Any:
        """Frobenius norm of W, ``sqrt(sekron.inner(self, self))`` contracted from the factors.

        Small tensors (at most ``2**16`` entries) whose doubled bond network would be
        larger than W are summed densely; W is never formed otherwise.

        Examples
        --------
        >>> import numpy as np, sekron
        >>> sk = sekron.random_sekron(sekron.Structure([(3, 2), (2, 5)], "cp"), 3)
        >>> bool(np.isclose(sk.norm(), np.linalg.norm(sk.to_tensor())))
        True
        """
        from .algebra.arithmetic import norm

        return norm(self)

    # --- computing in SeKron form (sekron.algebra; W is never formed) -----------------
    __array_ufunc__ = None  # numpy defers to the operators below instead of densifying

    def __add__(self, other: Any) -> SeKronTensor:
        from .algebra.arithmetic import add

        return add(self, other) if isinstance(other, SeKronTensor) else NotImplemented

    def __radd__(self, other: Any) -> SeKronTensor:
        if isinstance(other, int) and other == 0:  # sum([a, b, ...]) starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: Any) -> SeKronTensor:
        from .algebra.arithmetic import subtract

        return subtract(self, other) if isinstance(other, SeKronTensor) else NotImplemented

    def __neg__(self) -> SeKronTensor:
        from .algebra.arithmetic import negative

        return negative(self)

    def __mul__(self, other: Any) -> SeKronTensor:
        from .algebra._common import is_scalar
        from .algebra.arithmetic import hadamard, scale

        if isinstance(other, SeKronTensor):
            return hadamard(self, other)
        return scale(self, other) if is_scalar(other) else NotImplemented

    def __rmul__(self, other: Any) -> SeKronTensor:
        from .algebra._common import is_scalar
        from .algebra.arithmetic import scale

        return scale(self, other) if is_scalar(other) else NotImplemented

    def __truediv__(self, other: Any) -> SeKronTensor:
        from .algebra._common import is_scalar
        from .algebra.arithmetic import scale

        if not is_scalar(other):
            return NotImplemented
        return scale(self, 1 / other)

    def __matmul__(self, other: Any) -> Any:
        from .algebra.linear import matmul

        return NotImplemented if isinstance(other, SeKronTensor) else matmul(self, other)

    def __rmatmul__(self, other: Any) -> Any:
        from .algebra.linear import rmatmul

        return rmatmul(self, other)

    @property
    def T(self) -> SeKronTensor:
        """The transpose (every factor's digit axes reversed); ``W.T`` for a matrix."""
        from .algebra.linear import transpose

        return transpose(self)

    def conj(self) -> SeKronTensor:
        """The complex conjugate (see :func:`sekron.algebra.conj`)."""
        from .algebra.arithmetic import conj

        return conj(self)

    def astype(self, dtype: Any) -> SeKronTensor:
        """The factors cast to ``dtype`` (see :func:`sekron.algebra.astype`)."""
        from .algebra.arithmetic import astype

        return astype(self, dtype)

    def entries(self, idx: Any) -> Any:
        """``W[idx[j]]`` for an (n, N) integer array, from the factors (see :func:`sekron.algebra.entries`)."""
        from .algebra.indexing import entries

        return entries(self, idx)

    def __getitem__(self, key: Any) -> Any:
        from .algebra.indexing import getitem

        return getitem(self, key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        from .algebra.linear import dense

        return dense(self, dtype)

    def __eq__(self, other: object) -> bool:
        raise TypeError("== on SeKronTensors is ambiguous (entry-wise? identity?); use sekron.allclose(a, b) to "
                        "compare values, or `a is b` for identity")

    def __ne__(self, other: object) -> bool:
        raise TypeError("!= on SeKronTensors is ambiguous; use not sekron.allclose(a, b), or `a is not b`")

    __hash__ = object.__hash__  # identity, like its (immutable) object; == never returns True for others

    def __repr__(self) -> str:
        from .algebra._common import device_of

        st = self._structure
        dense = math.prod(self.shape)
        head = (
            f"SeKronTensor(shape={self.shape}, pattern={st.pattern!r}, rank={self.rank}, "
            f"n_params={self.n_params}, compression={dense / max(self.n_params, 1):.2f}x, "
            f"dtype={str(self.dtype).replace('torch.', '')}, backend={self._backend}, "
            f"device={device_of(self._factors[0])}"
        )
        rows = [
            f"  factor {k}: digits {s}  bonds {lab!r}  stored {tuple(int(d) for d in f.shape)}"
            for k, (f, s, lab) in enumerate(zip(self._factors, st.factor_shapes, st.labels))
        ]
        return "\n".join([head, *rows]) + ")"

    def _repr_html_(self) -> str:
        from .algebra.display import html

        return html(self)


def _flat_operands(sk: SeKronTensor, digits: str) -> list[tuple[str, Any]]:
    """Factor k as (its bonds, ``digits[k]``): the digit axes flattened into one."""
    st = sk.structure
    ops = []
    for k, (f, labels) in enumerate(zip(sk.factors, st.labels)):
        bond_shape = tuple(int(s) for s in f.shape[: len(labels)])
        ops.append((labels + digits[k], tl.reshape(f, (*bond_shape, st.factor_sizes[k]))))
    return ops


@dispatch
def sekron_to_tensor(sk: SeKronTensor) -> Any:
    """Reconstruct W from a :class:`SeKronTensor`: one contraction, then the inverse rearrangement.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> A, B = np.arange(4.0).reshape(1, 2, 2), np.ones((1, 2, 3))
    >>> W = sekron.sekron_to_tensor(sekron.SeKronTensor([A, B], [(2, 2), (2, 3)]))
    >>> bool(np.allclose(W, np.kron(A[0], B[0])))
    True
    """
    if not isinstance(sk, SeKronTensor):
        raise TypeError(f"expected a SeKronTensor, got {type(sk).__name__}")
    st = sk.structure
    check_size(st.shape, f"the dense tensor of shape {st.shape}",
               "work with the factors instead (norm(), the conversions, conv)")
    out = LabelAllocator(st.labels).many(st.n_factors)
    T = contract(_flat_operands(sk, out), out)
    return st._unrearrange(T)


def _max_abs(f: Any) -> float | None:
    """The largest magnitude in ``f`` as a float; None when it cannot be read (a traced array under jit)."""
    try:
        return float(tl.to_numpy(tl.max(tl.abs(f))))
    except Exception:  # jax tracers, lazy arrays: compute unscaled
        return None


def _scaled(sk: SeKronTensor) -> tuple[SeKronTensor, float]:
    """``sk`` with every factor scaled to max magnitude 1, and the log of the scale that was divided out.

    Products of tiny (1e-200) or huge (1e200) entries under- or overflow; scaled
    factors keep every partial product near 1.
    """
    scales = [_max_abs(f) for f in sk.factors]
    if any(s is None or s == 0 or not math.isfinite(s) for s in scales):
        return sk, 0.0
    logs = [math.log10(s) for s in scales]  # type: ignore[arg-type]
    single = any(t in str(sk.dtype) for t in ("float32", "complex64", "float16"))
    safe = 15 if single else 100  # squares of products within 10^(2 * safe) stay far from under- and overflow
    if abs(math.fsum(logs)) <= safe and all(abs(v) <= safe for v in logs):
        return sk, 0.0  # ordinary magnitudes: leave the factors bit for bit as they are
    factors = [f / s for f, s in zip(sk.factors, scales)]
    return SeKronTensor(factors, sk.structure), math.fsum(math.log(s) for s in scales)  # type: ignore[arg-type]


def _unscale(arrays: list[Any], log_scale: float) -> list[Any]:
    """Share ``exp(log_scale)`` out equally over ``arrays`` (the inverse of :func:`_scaled` on a product)."""
    if log_scale == 0 or not arrays:
        return arrays
    share = math.exp(log_scale / len(arrays))
    return [a * share for a in arrays]




def random_sekron(structure: Structure | Sequence[Sequence[int]], rank: Any, random_state: Any = 0, *,
                  backend: str | None = None, **context: Any) -> SeKronTensor:
    """A SeKronTensor with standard normal factors.

    Parameters
    ----------
    structure : Structure or list of factor shapes
    rank : int, sequence or mapping
        Size of every bond (see :meth:`Structure.parse_rank`).
    random_state : None, int or numpy.random.Generator
    backend : str, optional
        tensorly backend name of the factors; by default ``pytorch`` when ``context``
        holds a torch dtype or device, else tensorly's current backend.
    **context
        Passed to ``tl.tensor``: ``dtype``, ``device``, ... (e.g. ``**tl.context(W)``).
        The backend is tensorly's current one unless ``context`` names a torch or jax dtype.

    Examples
    --------
    >>> import sekron
    >>> sk = random_sekron(sekron.Structure([(2, 3), (4, 1)], "cp"), 5)
    >>> [tuple(f.shape) for f in sk.factors]
    [(5, 2, 3), (5, 4, 1)]
    """
    st = _as_structure(structure)
    unknown = sorted(set(context) - {"dtype", "device", "requires_grad"})
    if unknown:
        raise TypeError(f"random_sekron got unknown keyword arguments {unknown}; valid: backend, random_state, "
                        "and the array context dtype, device, requires_grad")
    sizes = st._bond_sizes(rank)
    check_size(st.n_params(sizes), f"the factors at rank {rank!r}", "lower the rank")
    rng = np.random.default_rng(random_state)
    complex_ = "complex" in str(context.get("dtype", ""))
    name = backend or tl.get_backend()
    if backend is None and any("torch" in type(v).__module__ for v in context.values()):
        name = "pytorch"
    factors = []
    with using(name):
        for labels, fshape in zip(st.labels, st.factor_shapes):
            shape = tuple(sizes[c] for c in labels) + fshape
            data = rng.standard_normal(shape)
            if complex_:
                data = data + 1j * rng.standard_normal(shape)
            factors.append(tl.tensor(data, **context))
    return SeKronTensor(factors, st)


@dispatch
def kron(*tensors: Any) -> Any:
    """N-D Kronecker product, the left factor most significant (``numpy.kron`` on matrices).

    ``(A ⊗ B)[i] = A[i // b] * B[i % b]`` per mode; all inputs must have the same order.

    Examples
    --------
    >>> import numpy as np
    >>> A, B = np.arange(4.0).reshape(2, 2), np.ones((3, 2))
    >>> bool(np.array_equal(kron(A, B), np.kron(A, B)))
    True
    """
    if not tensors:
        raise ValueError("kron needs at least one tensor, got none")
    for i, t in enumerate(tensors):
        check_array(t, f"tensors[{i}]")
    orders = [len(tuple(t.shape)) for t in tensors]
    if len(set(orders)) != 1:
        raise ValueError(f"kron needs tensors of one order, got orders {orders}; reshape them to a common order")
    out = tensors[0]
    for t in tensors[1:]:
        a, b = tuple(out.shape), tuple(t.shape)
        left = tl.reshape(out, tuple(x for s in a for x in (s, 1)))
        right = tl.reshape(t, tuple(x for s in b for x in (1, s)))
        out = tl.reshape(left * right, tuple(s * r for s, r in zip(a, b)))
    return out
