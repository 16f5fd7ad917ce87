"""Shared fixtures: backends (numpy and pytorch always, jax where installed) and dtypes."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "sekron", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("sekron")

BACKENDS = ["numpy", "pytorch", "jax"]


def has_backend(name: str) -> bool:
    module = {"numpy": "numpy", "pytorch": "torch", "jax": "jax"}[name]
    return importlib.util.find_spec(module) is not None


class Backend:
    """Makes arrays of one backend and reads them back as numpy, for the tests."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def array(self, x: Any, dtype: str = "float64") -> Any:
        x = np.asarray(x).astype(dtype)
        if self.name == "numpy":
            return x
        if self.name == "pytorch":
            import torch

            return torch.as_tensor(x)
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return jnp.asarray(x)

    @staticmethod
    def numpy(x: Any) -> np.ndarray:
        if hasattr(x, "detach"):
            x = x.detach().cpu()
        return np.asarray(x)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    if not has_backend(request.param):
        pytest.skip(f"{request.param} is not installed")
    return Backend(request.param)


# relative tolerance per dtype for equality with a dense reference
RTOL = {"float32": 2e-4, "float64": 1e-10, "complex128": 1e-10, "complex64": 2e-4}


@pytest.fixture(params=["float32", "float64", "complex128"])
def dtype(request: pytest.FixtureRequest, backend: Backend) -> str:
    if request.param == "complex128" and backend.name == "jax":
        pytest.skip("complex is tested on numpy and pytorch")
    return str(request.param)
