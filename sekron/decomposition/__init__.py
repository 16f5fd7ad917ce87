"""Decomposition of a dense tensor into SeKron form, one classical algorithm per bond pattern.

- :mod:`sekron.decomposition._decompose`: the entry point :func:`decompose` and the registry
  :data:`DECOMPOSITIONS`;
- :mod:`sekron.decomposition._svd_based`: nested, chain (TT-SVD), ring (TR-SVD) and tucker (HOSVD) on the
  rearranged tensor;
- :mod:`sekron.decomposition._cp`: cp by ALS, with the rank grown until ``tol`` holds.
"""

from ._decompose import DECOMPOSITIONS, decompose

__all__ = ["DECOMPOSITIONS", "decompose"]
