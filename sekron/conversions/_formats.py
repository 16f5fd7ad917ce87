"""Exact mappings between SeKron and the classical formats, and sekron as a hub between them.

docs/math.md §5: with the axis-aligned structure (factor k owns mode k) a TT is the
``chain`` pattern, a TR the ``ring`` pattern, a CP the ``cp`` pattern and a Tucker
decomposition the ``tucker`` pattern with the core as an extra factor whose digit shape
is all ones. ``from_*`` map a tensorly container onto those structures without changing
a single number (factor axes as in :mod:`sekron.sekron_tensor`); ``to_*`` map any
SeKronTensor back, without forming W. Pattern changes (:func:`convert`) and
recompression (:func:`round`) live in :mod:`sekron.conversions._patterns`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorly as tl
from tensorly.cp_tensor import CPTensor
from tensorly.tr_tensor import TRTensor
from tensorly.tt_tensor import TTTensor
from tensorly.tucker_tensor import TuckerTensor

from .._backend import dispatch
from .._validation import check_int, check_size, check_tol
from ..linalg.tt import constant, parse_tt_rank, tt_hosvd
from ..sekron_tensor import SeKronTensor, _scaled, _unscale
from ..structure import Structure
from . import _cp_tt
from ._containers import cores_of, cp_parts, tucker_parts
from ._patterns import convert, round_
from ._to_tt import sekron_to_tt_cores

__all__ = ["convert", "cp_to_tt", "from_cp", "from_tr", "from_tt", "from_tucker", "round", "to_cp", "to_tr",
           "to_tt", "to_tucker", "tt_to_tr", "tt_to_tucker", "tucker_to_tt"]


def _to_factor(M: Any, fshape: tuple[int, ...], n_bonds: int) -> Any:
    return tl.reshape(M, tuple(int(s) for s in M.shape[:n_bonds]) + fshape)


# --- into SeKron -------------------------------------------------------------------
@dispatch
def from_tt(tt: Any) -> SeKronTensor:
    """A TT (``TTTensor`` or list of cores ``(r_{k-1}, d_k, r_k)``) as an axis-aligned ``chain`` SeKronTensor.

    Exact and parameter-preserving: factor k is core k with its axes moved to
    (bonds, digits) (the boundary ranks of 1 are dropped).

    Examples
    --------
    >>> import tensorly as tl, numpy as np
    >>> tt = tl.random.random_tt((3, 4, 5), rank=[1, 2, 2, 1], random_state=0)
    >>> sk = from_tt(tt)
    >>> sk.pattern, sk.n_params == sum(c.size for c in tt)
    ('chain', True)
    >>> bool(np.allclose(sk.to_tensor(), tl.tt_to_tensor(tt)))
    True
    """
    cores = cores_of(tt, "tt", ring=False)
    st = Structure.tt(tuple(int(c.shape[1]) for c in cores))
    N, factors = len(cores), []
    for k, c in enumerate(cores):
        f = tl.transpose(c, (0, 2, 1))
        f = f[0] if k == 0 else f
        f = f[:, 0] if k == N - 1 else f
        factors.append(_to_factor(f, st.factor_shapes[k], len(st.labels[k])))
    return SeKronTensor(factors, st)


@dispatch
def from_tr(tr: Any) -> SeKronTensor:
    """A tensor ring (``TRTensor`` or list of cores) as an axis-aligned ``ring`` SeKronTensor.

    Factor k is core k as (left bond, right bond, digits); the closing bond ``z`` joins
    the first and the last factor. Exact and parameter-preserving.

    Examples
    --------
    >>> import tensorly as tl, numpy as np
    >>> tr = tl.random.random_tr((3, 4, 5), rank=[2, 3, 2, 2], random_state=0)
    >>> sk = from_tr(tr)
    >>> sk.rank
    {'z': 2, 'a': 3, 'b': 2}
    >>> bool(np.allclose(sk.to_tensor(), tl.tr_to_tensor(tr)))
    True
    """
    cores = cores_of(tr, "tr", ring=True)
    st = Structure.tr(tuple(int(c.shape[1]) for c in cores))
    factors = [_to_factor(tl.transpose(c, (0, 2, 1)), st.factor_shapes[k], 2) for k, c in enumerate(cores)]
    return SeKronTensor(factors, st)


@dispatch
def from_cp(cp: Any) -> SeKronTensor:
    """A CP (``CPTensor``, ``(weights, factors)`` or a list of factors) as an axis-aligned ``cp`` SeKronTensor.

    ``factor_k[r]`` is column r of the k-th CP factor; the weights are folded into the
    first factor, so ``n_params`` is the number of entries of the CP factors.

    Examples
    --------
    >>> import tensorly as tl, numpy as np
    >>> cp = tl.random.random_cp((3, 4, 5), 2, random_state=0)
    >>> sk = from_cp(cp)
    >>> sk.rank, sk.n_params
    ({'a': 2}, 24)
    >>> bool(np.allclose(sk.to_tensor(), tl.cp_to_tensor(cp)))
    True
    """
    weights, cols = cp_parts(cp)
    st = Structure.cp(tuple(int(f.shape[0]) for f in cols))
    factors = [tl.transpose(f, (1, 0)) for f in cols]
    if weights is not None:
        factors[0] = factors[0] * tl.reshape(weights, (-1, 1))
    return SeKronTensor([_to_factor(f, st.factor_shapes[k], 1) for k, f in enumerate(factors)], st)


@dispatch
def from_tucker(tucker: Any) -> SeKronTensor:
    """A Tucker decomposition (``TuckerTensor`` or ``(core, factors)``) as an axis-aligned ``tucker`` SeKronTensor.

    Factor k < N holds the columns of U_k (``factor_k[r] = U_k[:, r]``); the last factor is
    the core with digit shape (1, .., 1). Exact and parameter-preserving.

    Examples
    --------
    >>> import tensorly as tl, numpy as np
    >>> tk = tl.random.random_tucker((4, 5), [2, 3], random_state=0)
    >>> sk = from_tucker(tk)
    >>> sk.structure.factor_shapes, sk.n_params
    (((4, 1), (1, 5), (1, 1)), 29)
    >>> bool(np.allclose(sk.to_tensor(), tl.tucker_to_tensor(tk)))
    True
    """
    core, cols = tucker_parts(tucker)
    st = Structure.tucker(tuple(int(f.shape[0]) for f in cols))
    factors = [_to_factor(tl.transpose(f, (1, 0)), st.factor_shapes[k], 1) for k, f in enumerate(cols)]
    factors.append(tl.reshape(core, tuple(int(s) for s in core.shape) + st.factor_shapes[-1]))
    return SeKronTensor(factors, st)


# --- out of SeKron -----------------------------------------------------------------
def _check_sk(sk: Any) -> SeKronTensor:
    if not isinstance(sk, SeKronTensor):
        raise TypeError(f"expected a SeKronTensor, got {type(sk).__name__}; build one with decompose or from_*")
    if sk.structure.order < 2:
        raise ValueError(f"conversions need a tensor of order >= 2, got shape {sk.shape}")
    return sk


def _direct_cores(sk: SeKronTensor) -> list[Any]:
    """The cores of an axis-aligned ring or chain as (left, d, right)."""
    st, out = sk.structure, []
    N = st.order
    for k, f in enumerate(sk.factors):
        f = tl.reshape(f, (*tuple(int(s) for s in f.shape[:len(st.labels[k])]), st.shape[k]))
        if st.pattern == "chain":
            f = f[None] if k == 0 else f
            f = f[:, None] if k == N - 1 else f
        out.append(tl.transpose(f, (0, 2, 1)))
    return out


@dispatch
def to_tt(sk: SeKronTensor, rank: Any = None, tol: float | None = None) -> TTTensor:
    """The tensor train of W, in W's own modes, computed from the factors (W is never formed).

    Every factor is written as a small TT over the modes; the TT of W is their
    mode-by-mode Kronecker product, with bonds carried along the cuts they span (see
    :mod:`sekron.conversions._to_tt`). Axis-aligned structures give their cores directly (a TT, the
    TR closure, the diagonal CP cores, the TT of a Tucker core); general structures go
    through one left-to-right SVD sweep over implicit, right-orthogonal Kronecker cores.

    Parameters
    ----------
    sk : SeKronTensor
    rank : None, int, or N - 1 ints (or N + 1 with 1 at both ends)
        Cap on the TT ranks.
    tol : float in (0, 1), optional
        ``||W - W_hat||_F <= tol ||W||_F``: the discarded squared singular values over the
        N - 1 cuts sum to at most ``(tol ||W||)^2`` (TT-SVD / TT-rounding guarantee). With a
        rank cap alone the result is quasi-optimal: within ``sqrt(N - 1)`` of the best TT of
        those ranks.

    Returns
    -------
    TTTensor
        Exact when ``rank`` and ``tol`` are None. Then axis-aligned structures keep their
        own ranks (the round trip ``to_tt(from_tt(tt))`` returns tt's cores); general
        structures get the ranks of dense TT-SVD: the numerical ranks of W's unfoldings
        (singular values below ``100 eps ||W||`` are dropped).

    Examples
    --------
    >>> import numpy as np, sekron
    >>> sk = sekron.random_sekron(sekron.Structure([(2, 3, 2), (3, 2, 2)]), 2)
    >>> tt = to_tt(sk)
    >>> tt.rank
    (1, 6, 4, 1)
    >>> bool(np.allclose(tt.to_tensor(), sk.to_tensor()))
    True
    """
    sk = _check_sk(sk)
    caps = parse_tt_rank(rank, sk.structure.order)
    scaled, log_scale = _scaled(sk)  # tiny or huge factors: work at unit scale, so no singular value underflows
    cores, _ = sekron_to_tt_cores(scaled, caps, check_tol(tol))
    return TTTensor(_unscale(cores, log_scale))


@dispatch
def to_tr(sk: SeKronTensor, rank: Any = None, tol: float | None = None) -> TRTensor:
    """A tensor ring of W. An axis-aligned ``ring`` returns its own cores; anything else is
    :func:`to_tt` (with ``rank`` and ``tol`` as there) read as a ring with closing rank 1.

    Examples
    --------
    >>> import tensorly as tl, numpy as np
    >>> tr = tl.random.random_tr((3, 4, 5), rank=[2, 3, 2, 2], random_state=0)
    >>> back = to_tr(from_tr(tr))
    >>> all(np.allclose(a, b) for a, b in zip(back, tr))
    True
    """
    sk = _check_sk(sk)
    if sk.structure == Structure.tr(sk.shape) and rank is None and tol is None:
        return TRTensor(_direct_cores(sk))
    return TRTensor(list(to_tt(sk, rank, tol)))


def _parse_tucker_rank(rank: Any, N: int) -> list[int | None]:
    if rank is None:
        return [None] * N
    if isinstance(rank, (list, tuple)):
        if len(rank) != N:
            raise ValueError(f"a Tucker rank needs one entry per mode ({N}), got {list(rank)}")
        return [check_int(r, f"rank[{i}]") for i, r in enumerate(rank)]
    return [check_int(rank, "rank")] * N


@dispatch
def to_tucker(sk: SeKronTensor, rank: Any = None, tol: float | None = None) -> TuckerTensor:
    """Tucker decomposition of W by HOSVD, with the mode unfoldings taken from the TT of W.

    An axis-aligned ``tucker`` with ``rank`` and ``tol`` None returns its own core and
    factors. Otherwise the exact :func:`to_tt` is swept once: with the orthogonality
    centre on core n, that core's mode-2 unfolding has the singular values and left
    vectors of W's mode-n unfolding, which give U_n; the core is W projected on the U_n,
    contracted from the projected TT cores. Exact when ``rank`` and ``tol`` are None
    (ranks = the numerical ranks of the unfoldings). ``tol`` uses the HOSVD bound
    ``||W - W_hat||^2 <= sum_n (discarded s_n)^2 <= (tol ||W||)^2``.

    Examples
    --------
    >>> import tensorly as tl, numpy as np
    >>> tk = tl.random.random_tucker((4, 5, 3), [2, 3, 2], random_state=0)
    >>> back = to_tucker(convert(from_tucker(tk), "chain"))
    >>> back.rank, bool(np.allclose(back.to_tensor(), tk.to_tensor()))
    ((2, 3, 2), True)
    """
    sk = _check_sk(sk)
    st = sk.structure
    caps = _parse_tucker_rank(rank, st.order)
    tol = check_tol(tol)
    if st == Structure.tucker(sk.shape) and rank is None and tol is None:
        factors = [tl.transpose(tl.reshape(f, (int(f.shape[0]), -1)), (1, 0)) for f in sk.factors[:-1]]
        core = tl.reshape(sk.factors[-1], tuple(int(s) for s in sk.factors[-1].shape[: st.order]))
        return TuckerTensor((core, factors))
    cores, _ = sekron_to_tt_cores(sk, [None] * (st.order - 1), None)
    return TuckerTensor(tt_hosvd(cores, caps, tol))


@dispatch
def to_cp(sk: SeKronTensor, rank: int | None = None, *, n_iter_max: int = 200, tol: float = 1e-10,
          random_state: Any = 0) -> CPTensor:
    """A CP of W. Exact and parameter-preserving for an axis-aligned ``cp`` (e.g. from
    :func:`from_cp`): weights are ones, the first factor holds the folded weights.

    Otherwise ``rank`` is required and CP-ALS runs on the exact TT of W (MTTKRP and the
    Gram matrices come from the TT cores, W is never formed). ALS has no error
    guarantee; ``tol`` is its stopping threshold on the change of the relative error.

    Examples
    --------
    >>> import tensorly as tl, numpy as np
    >>> cp = tl.random.random_cp((3, 4, 5), 2, random_state=0)
    >>> back = to_cp(from_cp(cp))
    >>> bool(np.allclose(back.to_tensor(), cp.to_tensor()))
    True
    """
    sk = _check_sk(sk)
    st = sk.structure
    if st == Structure.cp(sk.shape) and (rank is None or rank == sk.rank["a"]):
        R = sk.rank["a"]
        factors = [tl.transpose(tl.reshape(f, (R, -1)), (1, 0)) for f in sk.factors]
        return CPTensor((constant(np.ones(R), sk.factors[0]), factors))
    if rank is None:
        raise ValueError(f"to_cp needs a rank for a {st.pattern!r} SeKronTensor of shape {sk.shape}; only an "
                         "axis-aligned cp structure (from_cp) converts without one")
    R = check_int(rank, "rank")
    check_size(R * max(R, sum(sk.shape)), f"to_cp's rank-{R} factors and Gram matrices", "lower the rank")
    cores, _ = sekron_to_tt_cores(sk, [None] * (st.order - 1), None)
    weights, factors = _cp_tt.cp_als_tt(cores, R, check_int(n_iter_max, "n_iter_max"), float(tol), random_state)
    return CPTensor((weights, factors))


# --- sekron as a hub between formats -------------------------------------------------
def cp_to_tt(cp: Any, rank: Any = None, tol: float | None = None) -> TTTensor:
    """CP to TT through SeKron: ``to_tt(from_cp(cp), rank, tol)``. Exact without rank and tol.

    Examples
    --------
    >>> import tensorly as tl, numpy as np
    >>> cp = tl.random.random_cp((3, 4, 5), 2, random_state=0)
    >>> tt = cp_to_tt(cp)
    >>> tt.rank, bool(np.allclose(tt.to_tensor(), cp.to_tensor()))
    ((1, 2, 2, 1), True)
    """
    return to_tt(from_cp(cp), rank, tol)


def tucker_to_tt(tucker: Any, rank: Any = None, tol: float | None = None) -> TTTensor:
    """Tucker to TT through SeKron: ``to_tt(from_tucker(tucker), rank, tol)``. Exact without rank and tol.

    Examples
    --------
    >>> import tensorly as tl, numpy as np
    >>> tk = tl.random.random_tucker((4, 5, 3), [2, 3, 2], random_state=0)
    >>> bool(np.allclose(tucker_to_tt(tk).to_tensor(), tk.to_tensor()))
    True
    """
    return to_tt(from_tucker(tucker), rank, tol)


def tt_to_tr(tt: Any) -> TRTensor:
    """TT to TR: the same cores read as a ring with closing rank 1 (``to_tr(from_tt(tt))``). Exact.

    Examples
    --------
    >>> import tensorly as tl
    >>> tt_to_tr(tl.random.random_tt((3, 4), rank=[1, 2, 1], random_state=0)).rank
    (1, 2, 1)
    """
    return to_tr(from_tt(tt))


def tt_to_tucker(tt: Any, rank: Any = None, tol: float | None = None) -> TuckerTensor:
    """TT to Tucker through SeKron (HOSVD from the TT): ``to_tucker(from_tt(tt), rank, tol)``.

    Examples
    --------
    >>> import tensorly as tl, numpy as np
    >>> tt = tl.random.random_tt((3, 4, 5), rank=[1, 2, 2, 1], random_state=0)
    >>> tk = tt_to_tucker(tt)
    >>> tk.rank, bool(np.allclose(tk.to_tensor(), tt.to_tensor()))
    ((2, 4, 2), True)
    """
    return to_tucker(from_tt(tt), rank, tol)


round = round_  # the public name; this module never calls the builtin round
