"""Backend inference: run tensorly code on the caller's framework without global state.

Every public entry point of sekron infers the backend from its array arguments
(numpy, pytorch, jax, ...) and runs its body under :func:`using`, which sets the
tensorly backend for the current thread only and restores it afterwards. The
process-wide default backend is never changed. :func:`single_blas_thread` limits
BLAS to one thread for code made of many small LAPACK calls.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import tensorly as tl
from tensorly.backend import BackendManager

F = TypeVar("F", bound=Callable[..., Any])

# module prefix of an array type -> tensorly backend name
_MODULE_TO_BACKEND = {
    "numpy": "numpy",
    "torch": "pytorch",
    "jax": "jax",
    "jaxlib": "jax",
    "tensorflow": "tensorflow",
    "cupy": "cupy",
    "paddle": "paddle",
}


def backend_name(array: Any) -> str | None:
    """Return the tensorly backend name of ``array``, or None for a non-array."""
    if isinstance(array, np.ndarray):
        return "numpy"
    if isinstance(array, (int, float, complex, bool, str, bytes, type(None))):
        return None
    root = type(array).__module__.split(".", 1)[0]
    name = _MODULE_TO_BACKEND.get(root)
    if name is None or not hasattr(array, "shape"):
        return None
    return name


def _is_scalar(item: Any) -> bool:
    """A 0-d array: a number (a rank given as ``torch.tensor(2)``), never data to compute on."""
    try:
        return tuple(item.shape) == ()
    except (AttributeError, TypeError):
        return False


def infer_backend(*arrays: Any) -> str:
    """Tensorly backend name shared by ``arrays`` (nested tuples and lists searched).

    Raises
    ------
    TypeError
        If the arrays come from two different frameworks.
    """
    found: set[str] = set()
    stack = list(arrays)
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
            continue
        name = backend_name(item)
        if name is None:
            known = getattr(item, "_backend", None)  # a SeKronTensor knows its factors' backend
            if isinstance(known, str):
                found.add(known)
                continue
            # containers: SeKronTensor, tensorly's CP/TT/TR/Tucker tensors
            for attr in ("factors", "core", "weights"):
                part = getattr(item, attr, None)
                if part is not None and not callable(part):
                    stack.append(part)
            continue
        if _is_scalar(item):  # a rank or size given as torch.tensor(2) / numpy.int64(2): not data
            continue
        found.add(name)
    if len(found) > 1:
        raise TypeError(
            f"arrays from several frameworks were mixed: {sorted(found)}; "
            "pass arrays of one framework (convert them first, e.g. with torch.as_tensor)"
        )
    return found.pop() if found else "numpy"


@contextmanager
def using(name: str) -> Iterator[None]:
    """Run the block with tensorly's backend ``name`` for this thread only."""
    local = BackendManager._THREAD_LOCAL_DATA
    had = "backend" in local.__dict__
    old = local.__dict__.get("backend")
    BackendManager.set_backend(name, local_threadsafe=True)
    try:
        yield
    finally:
        if had:
            local.backend = old
        else:
            del local.backend


def dispatch(func: F) -> F:
    """Decorator: run ``func`` under the backend of its array arguments."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        name = infer_backend(*args, *kwargs.values())
        with using(name):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def is_array(x: Any) -> bool:
    """True for an array of any backend that sekron knows."""
    return backend_name(x) is not None


def to_tensor_like(data: Any, like: Any) -> Any:
    """Convert ``data`` to the backend, dtype and device of ``like``."""
    return tl.tensor(data, **tl.context(like))


def single_blas_thread() -> Any:
    """Limit BLAS/LAPACK to one thread (threadpoolctl, when installed) for the search's many small eigh/QR calls.

    OpenBLAS's threaded symmetric eigensolvers synchronise per column: on a busy machine a
    512 x 512 ``eigh`` costs ~100x more CPU with two threads than with one.

    Examples
    --------
    >>> import numpy as np
    >>> with single_blas_thread():
    ...     w = np.linalg.eigvalsh(np.eye(3))
    >>> w.tolist()
    [1.0, 1.0, 1.0]
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
