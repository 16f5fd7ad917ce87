"""Reading tensorly containers (or the equivalent plain tuples and lists) with clear errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tensorly.cp_tensor import CPTensor
from tensorly.tr_tensor import TRTensor
from tensorly.tt_tensor import TTTensor
from tensorly.tucker_tensor import TuckerTensor

from .._validation import check_array


def _arrays(items: Any, name: str, ndim: int) -> list[Any]:
    if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, TTTensor, TRTensor)):
        raise TypeError(f"{name} must be a tensorly container or a list of arrays, got {type(items).__name__}")
    out = list(items)
    if len(out) < 2:
        raise ValueError(f"{name} must describe a tensor of order >= 2, got {len(out)} part(s)")
    for i, x in enumerate(out):
        check_array(x, f"{name}[{i}]", ndim=ndim)
    return out


def cores_of(obj: Any, name: str, ring: bool) -> list[Any]:
    cores = _arrays(obj, name, 3)
    ranks = [int(c.shape[0]) for c in cores] + [int(cores[-1].shape[2])]
    for k in range(len(cores) - 1):
        if int(cores[k].shape[2]) != int(cores[k + 1].shape[0]):
            raise ValueError(f"{name}: core {k} has right rank {int(cores[k].shape[2])} but core {k + 1} has left "
                             f"rank {int(cores[k + 1].shape[0])}; consecutive cores must share their rank")
    if ring and ranks[0] != ranks[-1]:
        raise ValueError(f"{name}: a tensor ring must close, but the first core's left rank {ranks[0]} differs from "
                         f"the last core's right rank {ranks[-1]}")
    if not ring and (ranks[0] != 1 or ranks[-1] != 1):
        raise ValueError(f"{name}: a tensor train has boundary ranks 1, got ranks {ranks}; "
                         "use from_tr for a ring")
    return cores


def cp_parts(cp: Any) -> tuple[Any, list[Any]]:
    if isinstance(cp, CPTensor):
        weights, factors = cp
    elif isinstance(cp, (tuple, list)) and len(cp) == 2 and isinstance(cp[1], (tuple, list)):
        weights, factors = cp
    else:
        weights, factors = None, cp
    factors = _arrays(factors, "cp factors", 2)
    R = {int(f.shape[1]) for f in factors}
    if len(R) != 1:
        raise ValueError(f"cp factors must all have R columns, got {[tuple(f.shape) for f in factors]}")
    if weights is not None:
        check_array(weights, "cp weights", ndim=1)
        if int(weights.shape[0]) != R.pop():
            raise ValueError(f"cp weights must have one entry per rank-one term ({int(factors[0].shape[1])}), "
                             f"got {int(weights.shape[0])}")
    return weights, factors


def tucker_parts(tucker: Any) -> tuple[Any, list[Any]]:
    if not isinstance(tucker, (TuckerTensor, tuple, list)) or len(tucker) != 2:
        raise TypeError(f"tucker must be a TuckerTensor or a (core, factors) pair, got {type(tucker).__name__}")
    core, factors = tucker
    check_array(core, "tucker core")
    factors = _arrays(factors, "tucker factors", 2)
    ranks = tuple(int(f.shape[1]) for f in factors)
    if tuple(int(s) for s in core.shape) != ranks:
        raise ValueError(f"tucker core of shape {tuple(core.shape)} does not match the factors' ranks {ranks}; "
                         "core axis n must have the size of factor n's second axis")
    return core, factors
