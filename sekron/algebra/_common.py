"""Helpers shared by the algebra modules: operand checks, dtype promotion, casting."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl

from ..sekron_tensor import SeKronTensor
from ..structure import Structure


def check_sk(x: Any, name: str) -> SeKronTensor:
    if not isinstance(x, SeKronTensor):
        raise TypeError(f"{name} must be a sekron.SeKronTensor, got {type(x).__name__}")
    return x


def check_same_structure(a: SeKronTensor, b: SeKronTensor, op: str) -> None:
    """Both operands must share factor shapes and bond labels (the pattern name may differ only if labels agree)."""
    sa, sb = a.structure, b.structure
    if sa.factor_shapes != sb.factor_shapes or sa.labels != sb.labels:
        raise ValueError(
            f"{op} needs two SeKronTensors of the same structure; got factor shapes {sa.factor_shapes} with "
            f"labels {sa.labels!r} and factor shapes {sb.factor_shapes} with labels {sb.labels!r}. Decompose or "
            "convert one of them into the other's structure first (sekron.convert keeps the factor shapes)"
        )
    if a._backend != b._backend:
        raise TypeError(f"{op} needs operands of one framework, got {a._backend} and {b._backend}; "
                        "move one of them first (astype does not change frameworks)")


def like_structure(st: Structure, factor_shapes: Sequence[Sequence[int]]) -> Structure:
    """A structure with new factor shapes and the same pattern (or labels) as ``st``."""
    if st.pattern is not None:
        return Structure(factor_shapes, st.pattern)
    return Structure(factor_shapes, labels=st.labels)


def dtype_name(dtype: Any) -> str:
    """'float32', 'complex128', ... for a numpy, torch or jax dtype (or a string)."""
    name = str(dtype)
    for prefix in ("torch.", "dtype(", "<class 'numpy."):
        name = name.replace(prefix, "")
    return name.strip("')\"")


def result_dtype(*names: str) -> str:
    """numpy's promotion of the given dtype names, as a name."""
    return str(np.result_type(*[np.dtype(n) for n in names]))


def backend_dtype(name: str) -> Any:
    """The current tensorly backend's dtype called ``name`` (``tl.float64`` is numpy's whatever the backend)."""
    from tensorly.backend import BackendManager

    return getattr(BackendManager.current_backend(), name)


def cast(x: Any, name: str) -> Any:
    """``x`` (any backend) cast to dtype ``name`` (current tensorly backend)."""
    if dtype_name(x.dtype) == name:
        return x
    target = backend_dtype(name)
    if hasattr(x, "astype"):  # numpy, jax
        return x.astype(target)
    return x.to(target)  # torch


def cast_all(factors: Sequence[Any], name: str) -> list[Any]:
    return [cast(f, name) for f in factors]


def is_scalar(c: Any) -> bool:
    """A Python/numpy number or a 0-d array of any backend."""
    if isinstance(c, bool):
        return False
    if isinstance(c, numbers.Number):
        return True
    shape = getattr(c, "shape", None)
    return shape is not None and tuple(shape) == () and hasattr(c, "dtype")


def scalar_dtype(c: Any, base: str) -> str:
    """dtype of ``factor * c`` for a factor of dtype ``base``: complex scalars promote real factors."""
    if isinstance(c, complex) or "complex" in str(getattr(c, "dtype", "")):
        return result_dtype(base, "complex64")
    return base


def zeros_like_shape(shape: Sequence[int], like: Any) -> Any:
    ctx = {k: v for k, v in tl.context(like).items() if k != "requires_grad"}
    return tl.zeros(tuple(int(s) for s in shape), **ctx)


def connected(labels: Sequence[str]) -> bool:
    """True when the factors form one component of the bond graph."""
    S = len(labels)
    if S == 1:
        return True
    seen, stack = {0}, [0]
    while stack:
        k = stack.pop()
        for j, lab in enumerate(labels):
            if j not in seen and set(lab) & set(labels[k]):
                seen.add(j)
                stack.append(j)
    return len(seen) == S


def device_of(x: Any) -> str:
    dev = getattr(x, "device", None)
    if dev is not None and not callable(dev):
        return str(dev)
    devices = getattr(x, "devices", None)
    if callable(devices):
        try:
            return ",".join(sorted(str(d) for d in devices()))
        except Exception:  # pragma: no cover - tracers
            return "?"
    return "cpu"


def on_sk_backend(func: Any) -> Any:
    """Decorator: run ``func(sk, ...)`` under the backend of its first argument (the others may be numpy)."""
    import functools

    from .._backend import using

    @functools.wraps(func)
    def wrapper(sk: Any, *args: Any, **kwargs: Any) -> Any:
        with using(sk._backend if isinstance(sk, SeKronTensor) else "numpy"):
            return func(sk, *args, **kwargs)

    return wrapper
