"""CP-ALS on a tensor given as a TT: every product with W comes from the TT cores.

For each rank-one term r, ``Z_m[r] = sum_i conj(U_m[i, r]) G_m[:, i, :]`` contracts the
TT core of mode m with the conjugated column; products of the ``Z_m`` give the MTTKRP
``W_(n) conj(K_n)`` and the inner product <W, W_hat>, so W is never formed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorly as tl

from ..linalg.als import MTTKRP, cp_als
from ..linalg.tt import constant, tt_norm_sq


def _z(core: Any, U: Any) -> Any:
    return tl.einsum("aib,ir->rab", core, tl.conj(U))


def _chain(zs: list[Any], R: int, like: Any) -> Any:
    acc = constant(np.ones((R, 1, 1)), like)
    for z in zs:
        acc = tl.matmul(acc, z)
    return acc


def _tt_mttkrp(cores: list[Any], R: int) -> MTTKRP:
    """The MTTKRP ``W_(n) conj(K_n)`` of the TT ``cores``, for :func:`sekron.linalg.als.cp_als`."""
    like = cores[0]

    def mttkrp(U: list[Any], n: int) -> Any:
        zs = [_z(c, u) for c, u in zip(cores, U)]
        left = _chain(zs[:n], R, like)  # (R, 1, r_{n-1})
        right = _chain([tl.transpose(z, (0, 2, 1)) for z in reversed(zs[n + 1:])], R, like)  # (R, 1, r_n)
        return tl.einsum("ra,aib,rb->ir", left[:, 0, :], cores[n], right[:, 0, :])

    return mttkrp


def cp_als_tt(cores: list[Any], R: int, n_iter_max: int, tol: float, random_state: Any) -> tuple[Any, list[Any]]:
    """Rank-R CP of the TT ``cores`` by alternating least squares; returns (weights, factors)."""
    rng = np.random.default_rng(random_state)
    like = cores[0]
    dims = [int(c.shape[1]) for c in cores]
    U = [constant(rng.standard_normal((d, R)), like) for d in dims]
    if "complex" in str(like.dtype):
        U = [u + 1j * constant(rng.standard_normal((d, R)), like) for u, d in zip(U, dims)]
    U = cp_als(_tt_mttkrp(cores, R), U, tt_norm_sq(cores), n_iter_max, tol)
    return constant(np.ones(R), like), U
