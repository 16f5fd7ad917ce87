"""sekron: SeKron tensor decomposition, a tensor as a sequence of Kronecker products."""

from .decomposition import DECOMPOSITIONS, decompose
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
    "pattern_labels",
    "random_sekron",
    "sekron_to_tensor",
    "structures",
]
