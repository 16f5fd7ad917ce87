"""Shared input checks. This is the one place that words sekron's input errors."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorly as tl

from ._backend import is_array

#: The most array elements one sekron call may allocate for a single result or
#: intermediate (about 2.1e9: 17 GB in float64) before it refuses with a ValueError that
#: names the size. Sizes are known before anything is allocated, so the check is free.
#: Raise it for bigger work with :func:`sekron.set_max_elements`.
MAX_ELEMENTS: int = 2**31


def set_max_elements(n: int) -> int:
    """Set the size budget (array elements one sekron call may allocate); return the old one.

    Examples
    --------
    >>> import sekron
    >>> old = sekron.set_max_elements(10**10)
    >>> sekron.set_max_elements(old) == 10**10
    True
    """
    global MAX_ELEMENTS
    n = check_int(n, "n")
    old, MAX_ELEMENTS = MAX_ELEMENTS, n
    return old


def check_size(n_elements: int | Sequence[int], what: str, hint: str = "") -> int:
    """Refuse, before allocating, an array of more than :data:`MAX_ELEMENTS` elements.

    ``n_elements`` is a count or a shape; ``what`` names the array in the message.
    """
    n = math.prod(int(s) for s in n_elements) if isinstance(n_elements, Sequence) else int(n_elements)
    if n > MAX_ELEMENTS:
        raise ValueError(
            f"{what} would have {n:,} elements ({n * 8 / 2**30:,.1f} GiB in float64), above sekron's size budget "
            f"of {MAX_ELEMENTS:,} elements; {hint + '; ' if hint else ''}"
            "raise the budget with sekron.set_max_elements(n) if the machine has the memory")
    return n


def _index(value: Any) -> int | None:
    """``value`` as an int when it is a 0-d integer array (numpy, torch, jax), else None."""
    dtype = str(getattr(value, "dtype", ""))
    if tuple(getattr(value, "shape", (1,))) != () or "int" not in dtype:
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as int, or raise if it is not an integer >= ``minimum``.

    0-d integer arrays of any framework (``numpy.int64(2)``, ``torch.tensor(2)``) count as integers.
    """
    if not isinstance(value, numbers.Integral) and _index(value) is not None:
        value = _index(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_shape(shape: Any, name: str) -> tuple[int, ...]:
    """A shape: a sequence of integers >= 1."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
        raise TypeError(f"{name} must be a sequence of positive integers, got {shape!r}")
    shape = tuple(shape)
    for i, size in enumerate(shape):
        check_int(size, f"{name}[{i}]")
    return tuple(int(s) for s in shape)


def check_array(x: Any, name: str, *, ndim: int | None = None) -> Any:
    """Check that ``x`` is an array of a known backend, optionally of order ``ndim``.

    ``numpy.matrix`` (whose ``*`` and reshape break N-D code) and masked arrays (whose
    mask no decomposition could honour) are refused with the conversion to make.
    """
    if not is_array(x):
        raise TypeError(
            f"{name} must be an array (numpy, torch, jax, ...), got {type(x).__name__}; "
            "wrap plain lists with numpy.asarray"
        )
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy masked array; sekron cannot honour a mask (the decompositions need every entry): "
            "fill the masked entries first, e.g. x.filled(0), or pass numpy.ma.getdata(x) to ignore the mask"
        )
    if isinstance(x, np.matrix):
        raise TypeError(f"{name} is a numpy.matrix; pass a plain array instead: numpy.asarray({name})")
    if ndim is not None and len(tuple(x.shape)) != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def check_finite(x: Any, name: str) -> None:
    """Raise if ``x`` holds NaN or Inf."""
    total = tl.sum(tl.abs(x)) if tuple(x.shape) else tl.abs(x)
    if not bool(np.isfinite(complex(tl.to_numpy(total)))):
        raise ValueError(f"{name} contains NaN or Inf values; clean the input (e.g. numpy.nan_to_num) first")


def max_abs(x: Any, name: str) -> float:
    """The largest magnitude in ``x`` as a float; raise if ``x`` holds NaN or Inf."""
    if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.size:  # no |x| temporary; NaN propagates
        value = float(max(np.max(x), -np.min(x)))
        if not np.isfinite(value):
            raise ValueError(f"{name} contains NaN or Inf values; clean the input (e.g. numpy.nan_to_num) first")
        return value
    peak = tl.max(tl.abs(tl.reshape(x, (-1,)))) if math.prod(tuple(x.shape)) else tl.tensor(0.0)
    value = float(np.real(tl.to_numpy(peak)))
    if not np.isfinite(value):
        raise ValueError(f"{name} contains NaN or Inf values; clean the input (e.g. numpy.nan_to_num) first")
    return value


def finite_sq_norm(x: Any, name: str) -> float:
    """Squared Frobenius norm of ``x`` as a float; raise if ``x`` holds NaN or Inf.

    One pass, no full-size temporary for float64 (a BLAS dot). A finite result proves
    every entry finite; only a non-finite one triggers the entry-wise check.
    """
    flat = tl.reshape(x, (-1,))
    dtype = str(x.dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        if "complex" in dtype:
            sq = tl.sum(tl.abs(flat) ** 2)
        elif "float64" in dtype:
            sq = tl.dot(flat, flat)
        else:  # pairwise summation keeps single precision accurate
            sq = tl.sum(flat * flat)
    value = float(np.real(tl.to_numpy(sq)))
    if not np.isfinite(value):
        check_finite(x, name)
        raise ValueError(f"{name} has entries so large that its squared norm overflows ({dtype}); rescale it first")
    return value


def check_tol(tol: Any) -> float | None:
    """``tol`` is None or a float in (0, 1)."""
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a float in (0, 1), got {tol!r} of type {type(tol).__name__}")
    if not 0 < float(tol) < 1:
        raise ValueError(f"tol must be in (0, 1) (a relative Frobenius error), got {tol}")
    return float(tol)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` must be one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_float_dtype(x: Any, name: str) -> None:
    """Decompositions need floating or complex input."""
    dtype = str(x.dtype)
    if "float" not in dtype and "complex" not in dtype:
        raise TypeError(
            f"{name} must have a floating or complex dtype, got {dtype}; convert it first (e.g. x.astype(float))"
        )
