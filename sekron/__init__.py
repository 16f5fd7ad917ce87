"""sekron: SeKron tensor decomposition, a tensor as a sequence of Kronecker products."""

from ._validation import set_max_elements
from .conv import IMPLEMENTATIONS as CONV_IMPLEMENTATIONS
from .conv import ConvCost, PlanCost, clear_conv_cache, conv, conv_cost
from .conversions import (
    convert,
    cp_to_tt,
    from_cp,
    from_tr,
    from_tt,
    from_tucker,
    to_cp,
    to_tr,
    to_tt,
    to_tucker,
    tt_to_tr,
    tt_to_tucker,
    tucker_to_tt,
)
from .conversions import round as round  # sekron.round only: not in __all__, so * never shadows the builtin
from .decomposition import DECOMPOSITIONS, decompose
from .io import load, save
from .plot import draw
from .search import Candidate, search
from .sekron_tensor import SeKronTensor, kron, random_sekron, sekron_to_tensor
from .structure import Structure, pattern_labels, structures

__version__ = "0.1.0"

__all__ = [
    "CONV_IMPLEMENTATIONS",
    "DECOMPOSITIONS",
    "Candidate",
    "ConvCost",
    "PlanCost",
    "SeKronTensor",
    "Structure",
    "__version__",
    "clear_conv_cache",
    "conv",
    "conv_cost",
    "convert",
    "cp_to_tt",
    "decompose",
    "draw",
    "from_cp",
    "from_tr",
    "from_tt",
    "from_tucker",
    "kron",
    "load",
    "pattern_labels",
    "random_sekron",
    "save",
    "search",
    "sekron_to_tensor",
    "set_max_elements",
    "structures",
    "to_cp",
    "to_tr",
    "to_tt",
    "to_tucker",
    "tt_to_tr",
    "tt_to_tucker",
    "tucker_to_tt",
]
