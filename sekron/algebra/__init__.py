"""Computing in SeKron form: arithmetic, entries and slices, linear operators, cross approximation.

Nothing here forms the dense tensor W (except :func:`dense`, behind a size check). The
operators of :class:`sekron.SeKronTensor` (``+ - * / @``, ``[]``, ``.T``, ``conj``,
``astype``, ``entries``, ``numpy.asarray``) call these functions.
"""

from .arithmetic import add, allclose, astype, conj, hadamard, inner, negative, norm, scale, subtract
from .cross_approximation import cross, maxvol, rect_maxvol
from .indexing import entries, getitem
from .linear import DENSE_LIMIT, dense, linear_operator, matmul, rmatmul, transpose

__all__ = [
    "DENSE_LIMIT",
    "add",
    "allclose",
    "astype",
    "conj",
    "cross",
    "dense",
    "entries",
    "getitem",
    "hadamard",
    "inner",
    "linear_operator",
    "matmul",
    "maxvol",
    "negative",
    "norm",
    "rect_maxvol",
    "rmatmul",
    "scale",
    "subtract",
    "transpose",
]
