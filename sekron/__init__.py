"""sekron: SeKron tensor decomposition, a tensor as a sequence of Kronecker products."""

from .decomposition import DECOMPOSITIONS, decompose
from .io import load, save
from .sekron_tensor import SeKronTensor, kron, random_sekron, sekron_to_tensor
from .structure import Structure, pattern_labels, structures

__version__ = "0.1.0"

__all__ = [
    "DECOMPOSITIONS",
    "SeKronTensor",
    "Structure",
    "__version__",
    "decompose",
    "kron",
    "load",
    "pattern_labels",
    "random_sekron",
    "save",
    "sekron_to_tensor",
    "structures",
]
