"""CP-ALS on a tensor given as a TT: every product with W comes from the TT cores.

For each rank-one term r, ``Z_m[r] = sum_i conj(U_m[i, r]) G_m[:, i, :]`` contracts the
TT core of mode m with the conjugated column; products of the ``Z_m`` give the MTTKRP
``W_(n) conj(K_n)`` and the inner product <W, W_hat>, so W is never formed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorly as tl

from ..linalg.tt import constant


def _z(core: Any, U: Any) -> Any:
    return tl.einsum("aib,ir->rab", core, tl.conj(U))


def _chain(zs: list[Any], R: int, like: Any) -> Any:
    acc = constant(np.ones((R, 1, 1)), like)
    for z in zs:
        acc = tl.matmul(acc, z)
    return acc


def _gram(U: Any) -> Any:
    return tl.matmul(tl.transpose(U, (1, 0)), tl.conj(U))


def _hadamard(grams: list[Any], R: int, like: Any) -> Any:
    out = constant(np.ones((R, R)), like)
    for g in grams:
        out = out * g
    return out


def cp_als_tt(cores: list[Any], R: int, n_iter_max: int, tol: float, random_state: Any) -> tuple[Any, list[Any]]:
    """Rank-R CP of the TT ``cores`` by alternating least squares; returns (weights, factors)."""
    rng = np.random.default_rng(random_state)
    like = cores[0]
    N = len(cores)
    dims = [int(c.shape[1]) for c in cores]
    U = [constant(rng.standard_normal((d, R)), like) for d in dims]
    if "complex" in str(like.dtype):
        U = [u + 1j * constant(rng.standard_normal((d, R)), like) for u, d in zip(U, dims)]
    norm_sq = _tt_norm_sq(cores)
    previous = math.inf
    ridge = 1e-12
    for _ in range(n_iter_max):
        for n in range(N):
            zs = [_z(c, u) for c, u in zip(cores, U)]
            left = _chain(zs[:n], R, like)  # (R, 1, r_{n-1})
            right = _chain([tl.transpose(z, (0, 2, 1)) for z in reversed(zs[n + 1:])], R, like)  # (R, 1, r_n)
            M = tl.einsum("ra,aib,rb->ir", left[:, 0, :], cores[n], right[:, 0, :])
            V = _hadamard([_gram(U[m]) for m in range(N) if m != n], R, like)
            V = V + ridge * tl.trace(tl.abs(V)) * constant(np.eye(R), like)
            U[n] = tl.transpose(tl.solve(tl.transpose(V, (1, 0)), tl.transpose(M, (1, 0))), (1, 0))
        zs = [_z(c, u) for c, u in zip(cores, U)]
        inner = float(np.real(tl.to_numpy(tl.sum(_chain(zs, R, like)))))
        approx_sq = float(np.real(tl.to_numpy(tl.sum(_hadamard([_gram(u) for u in U], R, like)))))
        err = math.sqrt(max(norm_sq - 2 * inner + approx_sq, 0.0) / max(norm_sq, 1e-300))
        if abs(previous - err) < tol:
            break
        previous = err
    return constant(np.ones(R), like), U


def _tt_norm_sq(cores: list[Any]) -> float:
    acc: Any = None
    for c in cores:
        step = tl.einsum("aib,cid->acbd", c, tl.conj(c))
        r0, r1 = int(c.shape[0]), int(c.shape[2])
        step = tl.reshape(step, (r0 * r0, r1 * r1))
        acc = step if acc is None else tl.matmul(acc, step)
    return float(np.real(tl.to_numpy(tl.sum(acc))))
