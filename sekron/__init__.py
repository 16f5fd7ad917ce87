"""sekron: SeKron tensor decomposition, a tensor as a sequence of Kronecker products.

Layout: the core types at the top (:mod:`sekron.structure`, :mod:`sekron.sekron_tensor`);
:mod:`sekron.linalg` (kernels that know no sekron types); :mod:`sekron.decomposition`,
:mod:`sekron.conversions`, :mod:`sekron.convolution` and :mod:`sekron.structure_search`
(each ``__init__`` lists its public names); :mod:`sekron.torch` (PyTorch layers and model
compression, the only place that imports torch); :mod:`sekron.io`, :mod:`sekron.datasets`,
:mod:`sekron.plot` and :mod:`sekron.cli`.

``sekron.conv`` and ``sekron.search`` are the functions :func:`conv` and :func:`search`.
The older import paths ``from sekron.conv import ...`` and ``from sekron.search import ...``
keep working: they resolve to :mod:`sekron.convolution` and :mod:`sekron.structure_search`.
"""

import sys as _sys

from ._validation import set_max_elements
from .algebra import allclose, cross, inner, linear_operator
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
from .conversions import (
    round as round,  # public as sekron.round, kept out of __all__ (it would shadow the builtin)
)
from .convolution import IMPLEMENTATIONS as CONV_IMPLEMENTATIONS
from .convolution import ConvCost, PlanCost, clear_conv_cache, conv, conv_cost
from .decomposition import DECOMPOSITIONS, decompose
from .io import load, save
from .plot import draw
from .sekron_tensor import SeKronTensor, kron, random_sekron, sekron_to_tensor
from .structure import Structure, pattern_labels, structures
from .structure_search import Candidate, search

__version__ = "0.1.0"

# The older module paths `sekron.conv` and `sekron.search` name the subpackages; the attributes
# `sekron.conv` / `sekron.search` stay the functions (registered here, no submodule rebinds them).
_sys.modules[__name__ + ".conv"] = _sys.modules[__name__ + ".convolution"]
_sys.modules[__name__ + ".search"] = _sys.modules[__name__ + ".structure_search"]

__all__ = [
    "CONV_IMPLEMENTATIONS",
    "DECOMPOSITIONS",
    "Candidate",
    "ConvCost",
    "PlanCost",
    "SeKronTensor",
    "Structure",
    "__version__",
    "allclose",
    "clear_conv_cache",
    "conv",
    "conv_cost",
    "convert",
    "cp_to_tt",
    "cross",
    "decompose",
    "draw",
    "from_cp",
    "from_tr",
    "from_tt",
    "from_tucker",
    "inner",
    "kron",
    "linear_operator",
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
