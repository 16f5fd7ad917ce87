"""``decompose``: any tensor to SeKron form, by the pattern's classical algorithm on R(W).

The registry :data:`DECOMPOSITIONS` maps each named bond pattern to its algorithm
(MATH.md section 4); :data:`sekron.linalg.svd.SVD_FUNCTIONS` holds the SVD variants.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import tensorly as tl

from .._backend import dispatch
from .._validation import check_array, check_float_dtype, check_tol, finite_sq_norm
from ..linalg.truncation import Budget
from ..sekron_tensor import SeKronTensor, _as_structure
from ..structure import Structure
from . import _cp, _svd_based

Algorithm = Callable[[Any, _svd_based.Context], list[Any]]

DECOMPOSITIONS: dict[str, Algorithm] = {
    "nested": _svd_based.nested,
    "chain": _svd_based.chain,
    "ring": _svd_based.ring,
    "cp": _cp.cp,
    "tucker": _svd_based.tucker,
}

#: patterns whose ``tol`` is guaranteed by the SVD spectra (cp meets it by growing its rank)
GUARANTEED = ("nested", "chain", "ring", "tucker")


def _n_cuts(st: Structure) -> int:
    return max(st.n_factors - 1, 1)


@dispatch
def decompose(tensor: Any, structure: Structure | Sequence[Sequence[int]], rank: Any = None, *,
              tol: float | None = None, svd: str | Callable[..., Any] = "auto", random_state: Any = None,
              return_error: bool = False, **options: Any) -> Any:
    """Decompose ``tensor`` into SeKron form with the given structure.

    The tensor is rearranged to the order-S tensor T (``structure.rearrange``) and the
    pattern's algorithm runs on T: ``nested``, the paper's recursive SVD; ``chain``,
    TT-SVD; ``ring``, TR-SVD; ``cp``, CP-ALS; ``tucker``, sequentially truncated HOSVD.

    Parameters
    ----------
    tensor : array of shape ``structure.shape``
        Floating or complex; any tensorly backend. It is never modified.
    structure : Structure or list of factor shapes
        A plain list means the ``nested`` pattern.
    rank : None, int, sequence of int, or {label: int}
        Cap on the bond sizes (one int for all bonds, one per bond label in
        ``structure.bond_labels`` order, or a mapping). None keeps the maximal ranks,
        which reconstruct W exactly (for ``cp``, the exact rank ``prod P / max P``).
        A cap above what a bond can reach is clipped, with a warning.
    tol : float in (0, 1), optional
        Relative error target: ``||W - W_hat||_F <= tol * ||W||_F``. Guaranteed for
        nested, chain, ring and tucker (the smallest ranks the spectra allow under a
        budget split over the S - 1 cuts); for cp the rank grows until ALS meets it
        (exact at the top rank), unless ``rank`` caps it first.
    svd : str or callable
        "auto", "full", "gram", "randomized" (see ``sekron.linalg.svd``), or a function
        ``f(M, rank, random_state) -> (U, s, Vh)`` on batches ``M`` of shape (B, m, n).
    random_state : None, int or numpy Generator
        Seeds the randomized SVD and the cp initialisation.
    return_error : bool
        Also return the achieved relative error.
    **options
        Algorithm options: ``n_iter_max`` and ``init`` for cp.

    Returns
    -------
    SeKronTensor, or (SeKronTensor, float) with ``return_error``.
        The error is computed from the discarded singular values; for the SVD
        patterns it equals the true error ``||W - W_hat|| / ||W||`` up to rounding:
        ``||W - W_hat||^2 = sum over cuts and branches of the discarded s_i^2``.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> W = np.kron(np.ones((4, 4)), np.arange(9.0).reshape(3, 3))
    >>> sk, err = sekron.decompose(W, [(4, 4), (3, 3)], rank=1, return_error=True)
    >>> sk.rank, err < 1e-12
    ({'a': 1}, True)
    """
    check_array(tensor, "tensor")
    st = _as_structure(structure)
    shape = tuple(int(s) for s in tensor.shape)
    if shape != st.shape:
        raise ValueError(
            f"tensor of shape {shape} does not match the structure: its factor shapes "
            f"{st.factor_shapes} multiply to {st.shape}; choose factor shapes whose per-mode products are {shape}"
        )
    check_float_dtype(tensor, "tensor")
    tol = check_tol(tol)
    if not isinstance(return_error, bool):
        raise TypeError(f"return_error must be a bool, got {return_error!r}")
    if st.pattern not in DECOMPOSITIONS:
        raise ValueError(
            f"no decomposition algorithm for custom labels {st.labels!r}; supported patterns are "
            f"{sorted(DECOMPOSITIONS)} (build the structure with pattern=...)"
        )
    caps = st.parse_rank(rank)
    sq_norm = finite_sq_norm(tensor, "tensor")
    unknown = set(options) - {"n_iter_max", "init"}
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)} for decompose; valid: ['init', 'n_iter_max']")

    norm = math.sqrt(sq_norm)
    budget = Budget.make(tol, norm, _n_cuts(st))
    T = st.rearrange(tensor)
    if st.n_factors == 1:
        factors = [tl.reshape(T, st.factor_shapes[0])]
    else:
        ctx = _svd_based.Context(st, caps, budget, svd, tol, random_state, options)
        factors = DECOMPOSITIONS[st.pattern](T, ctx)
    if budget.clipped:
        text = ", ".join(f"{lab!r} from {req} to {got}" for lab, (req, got) in budget.clipped.items())
        warnings.warn(
            f"requested rank above what the structure allows was clipped: {text} (structure {st.factor_shapes}, "
            f"pattern {st.pattern!r})", UserWarning, stacklevel=3)
    sk = SeKronTensor(factors, st)
    if not return_error:
        return sk
    error = math.sqrt(max(budget.spent, 0.0)) / norm if norm > 0 else 0.0
    return sk, error
