"""Backend inference: the caller's framework is used per call, thread-locally, never switched globally."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tensorly as tl

from sekron._backend import backend_name, dispatch, infer_backend, is_array, to_tensor_like, using
from sekron.sekron_tensor import random_sekron
from sekron.structure import Structure


def test_backend_name_and_is_array(backend) -> None:
    x = backend.array(np.zeros(3))
    assert backend_name(x) == backend.name and is_array(x)
    for not_array in (1, 2.0, "x", None, [1.0], (1,)):
        assert backend_name(not_array) is None and not is_array(not_array)


def test_infer_backend_searches_containers(backend) -> None:
    x = backend.array(np.zeros(3))
    assert infer_backend(x) == backend.name
    assert infer_backend(1, [None, (x,)]) == backend.name
    assert infer_backend() == "numpy" and infer_backend(3, "a") == "numpy"
    sk = random_sekron(Structure([(2,), (2,)]), 1, backend=backend.name)
    assert infer_backend(sk) == backend.name


def test_mixed_frameworks_raise() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"several frameworks were mixed: \['numpy', 'pytorch'\]"):
        infer_backend(np.zeros(2), torch.zeros(2))


def test_using_restores_and_is_thread_local() -> None:
    pytest.importorskip("torch")
    assert tl.get_backend() == "numpy"
    seen = {}

    def other_thread() -> None:
        seen["other"] = tl.get_backend()

    with using("pytorch"):
        assert tl.get_backend() == "pytorch"
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        with using("numpy"):
            assert tl.get_backend() == "numpy"
        assert tl.get_backend() == "pytorch"
    assert tl.get_backend() == "numpy" and seen["other"] == "numpy"


def test_using_restores_after_an_exception() -> None:
    pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="boom"), using("pytorch"):
        raise RuntimeError("boom")
    assert tl.get_backend() == "numpy"


def test_dispatch_runs_under_the_argument_backend(backend) -> None:
    @dispatch
    def which(x: object, *, y: object = None) -> str:
        return str(tl.get_backend())

    x = backend.array(np.ones(2))
    assert which(x) == backend.name and which(np.ones(2), y=None) == "numpy"
    assert which(np.ones(2) if backend.name == "numpy" else 0, y=x) == backend.name
    assert tl.get_backend() == "numpy"


def test_to_tensor_like(backend) -> None:
    like = backend.array(np.zeros(2), "float32")
    with using(backend.name):
        out = to_tensor_like(np.arange(3.0), like)
    assert type(out) is type(like) and str(out.dtype).endswith("float32")


def test_numpy_calls_ignore_a_global_pytorch_backend() -> None:
    """A user (or tensorly-torch, on import) may set tensorly's global backend: numpy calls still work."""
    pytest.importorskip("torch")
    import sekron

    W = np.random.default_rng(0).standard_normal((16, 8, 3, 3))
    previous = tl.get_backend()
    tl.set_backend("pytorch")
    try:
        for pattern in ("nested", "chain", "ring", "cp"):
            sk = sekron.decompose(W, Structure([(4, 2, 3, 1), (4, 4, 1, 3)], pattern), rank=3)
            assert isinstance(sk.factors[0], np.ndarray)
        best = sekron.search(W, ratio=4)[0]
        assert isinstance(best.decompose(W).factors[0], np.ndarray)
        y = sekron.conv(np.ones((1, 8, 5, 5)), sk, padding=1)
        assert isinstance(y, np.ndarray)
        assert isinstance(sekron.to_tt(sk).factors[0], np.ndarray)
        assert tl.get_backend() == "pytorch"  # and sekron left it as it was
    finally:
        tl.set_backend(previous)
