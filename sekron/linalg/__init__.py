"""Numerical kernels that know no sekron types: arrays in, arrays out, on any tensorly backend.

- :mod:`sekron.linalg.svd`: the SVD variants (full, Gram, randomized) and their registry;
  singular values from a Gram matrix.
- :mod:`sekron.linalg.truncation`: rank choice from singular values under caps and an error budget.
- :mod:`sekron.linalg.contract`: pairwise contraction through batched matmul.
- :mod:`sekron.linalg.tt`: tensor-train kernels (TT-SVD, orthogonalisation, the truncating sweep).
"""

from .contract import contract, einsum2
from .svd import SVD_FUNCTIONS, SVDFunction, choose_svd, gram_eigh, gram_top, svd_full, svd_gram, svd_randomized
from .truncation import Budget, branch_mask, choose_ranks
from .tt import parse_tt_rank, sweep, tt_hosvd, tt_round, tt_svd

__all__ = [
    "SVD_FUNCTIONS",
    "Budget",
    "SVDFunction",
    "branch_mask",
    "choose_ranks",
    "choose_svd",
    "contract",
    "einsum2",
    "gram_eigh",
    "gram_top",
    "parse_tt_rank",
    "svd_full",
    "svd_gram",
    "svd_randomized",
    "sweep",
    "tt_hosvd",
    "tt_round",
    "tt_svd",
]
