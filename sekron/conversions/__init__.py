"""Conversions: SeKron to and from the classical formats, between bond patterns, and recompression.

- :mod:`sekron.conversions._formats`: ``from_*`` / ``to_*`` for TT, TR, CP and Tucker
  (tensorly containers), and the hub functions between those formats;
- :mod:`sekron.conversions._patterns`: :func:`convert` (change of bond pattern) and
  :func:`round` (recompression);
- :mod:`sekron.conversions._to_tt`: a SeKron tensor to TT cores without forming it;
- :mod:`sekron.conversions._cp_tt`: CP-ALS on a tensor given as TT cores;
- :mod:`sekron.conversions._containers`: reading tensorly containers.
"""

from ._formats import (
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
from ._patterns import convert
from ._patterns import round_ as round

__all__ = [
    "convert",
    "cp_to_tt",
    "from_cp",
    "from_tr",
    "from_tt",
    "from_tucker",
    "round",
    "to_cp",
    "to_tr",
    "to_tt",
    "to_tucker",
    "tt_to_tr",
    "tt_to_tucker",
    "tucker_to_tt",
]
