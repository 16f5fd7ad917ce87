"""Numerical kernels that know no sekron types: arrays in, arrays out, on any tensorly backend.

- :mod:`sekron.linalg.svd`: the SVD variants (full, Gram, randomized) and their registry;
  singular values from a Gram matrix.
- :mod:`sekron.linalg.truncation`: rank choice from singular values under caps and an error budget.
- :mod:`sekron.linalg.contraction`: pairwise contraction through batched matmul, its greedy order,
  and the one allocator of internal einsum labels.
- :mod:`sekron.linalg.tt`: tensor-train kernels (TT-SVD, orthogonalisation, the truncating sweep,
  the norm of a TT).
- :mod:`sekron.linalg.als`: the CP-ALS loop, given any MTTKRP.
"""

from .als import cp_als, dense_mttkrp
from .contraction import LabelAllocator, contract, einsum2, greedy_order
from .svd import (
    SVD_FUNCTIONS,
    SVDFunction,
    choose_svd,
    eigh_top,
    gram_eigh,
    gram_eigvalsh,
    gram_top,
    svd_full,
    svd_gram,
    svd_randomized,
)
from .truncation import Budget, branch_mask, choose_ranks
from .tt import parse_tt_rank, sweep, tt_hosvd, tt_norm_sq, tt_round, tt_svd

__all__ = [
    "SVD_FUNCTIONS",
    "Budget",
    "LabelAllocator",
    "SVDFunction",
    "branch_mask",
    "choose_ranks",
    "choose_svd",
    "contract",
    "cp_als",
    "dense_mttkrp",
    "eigh_top",
    "einsum2",
    "gram_eigh",
    "gram_eigvalsh",
    "gram_top",
    "greedy_order",
    "parse_tt_rank",
    "svd_full",
    "svd_gram",
    "svd_randomized",
    "sweep",
    "tt_hosvd",
    "tt_norm_sq",
    "tt_round",
    "tt_svd",
]
