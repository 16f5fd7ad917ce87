"""The package layout: no public function shares its name with the module beside it.

When a package's ``__init__`` exports a function named like one of its own submodules, the
attribute and the module shadow each other: ``import sekron.x.name`` gives the function,
``unittest.mock.patch("sekron.x.name.CONSTANT")`` and single-file doctest runs fail. Every module is
therefore named for what it holds (``compression``, ``distillation``, ``contraction``, ``als``,
``cross_approximation``), and the functions keep the short names.
"""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import sekron


def packages() -> list[str]:
    names = ["sekron"]
    for info in pkgutil.walk_packages(sekron.__path__, "sekron."):
        if (info.ispkg and not info.name.startswith("sekron.torch")) or info.name == "sekron.torch":
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", packages())
def test_no_export_shadows_a_submodule(name: str) -> None:
    if name.startswith("sekron.torch"):
        pytest.importorskip("torch")
    package = importlib.import_module(name)
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    clashes = sorted(attr for attr in submodules
                     if hasattr(package, attr) and not isinstance(getattr(package, attr), types.ModuleType))
    assert not clashes, f"{name} exports {clashes}, which are also the names of its submodules"


def test_the_renamed_modules_import_as_modules() -> None:
    for module in ("sekron.linalg.als", "sekron.linalg.contraction", "sekron.algebra.cross_approximation"):
        assert isinstance(importlib.import_module(module), types.ModuleType)
    assert callable(sekron.cross) and callable(sekron.linalg.cp_als) and callable(sekron.linalg.contract)
