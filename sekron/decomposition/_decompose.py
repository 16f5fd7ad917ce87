"""``decompose``: any tensor to SeKron form, by the pattern's classical algorithm on R(W).

The registry :data:`DECOMPOSITIONS` maps each named bond pattern to its algorithm
(docs/math.md §4); :data:`sekron.linalg.svd.SVD_FUNCTIONS` holds the SVD variants.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorly as tl
from tensorly.cp_tensor import CPTensor

from .._backend import infer_backend, using
from .._validation import check_array, check_choice, check_float_dtype, check_int, check_tol, finite_sq_norm, max_abs
from ..linalg.svd import SVD_FUNCTIONS, frozen_value
from ..linalg.svd import _eps as gram_eps
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

def _n_cuts(st: Structure) -> int:
    return max(st.n_factors - 1, 1)


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
        Floating or complex; any tensorly backend. It is never modified. A
        ``dask.array.Array`` is decomposed out of core (nested, chain, ring, tucker; see
        docs/dask.md): the first cut streams over its chunks, the rest runs in memory.
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
        Algorithm options for cp: ``n_iter_max`` (int >= 0) and ``init`` ("svd",
        "random", or a CP tensor ``(weights, factors)`` to start from).

    Notes
    -----
    Tensors with tiny or huge entries (float64 below 1e-100 or above 1e100, float32
    outside 1e-15..1e15) are decomposed as ``W / 2^e`` and the scale is shared out over
    the factors, so the result and the error are right at any representable magnitude.
    float16 and bfloat16 inputs are computed in float32 and the factors returned in the
    input's dtype. The all-zero tensor gives zero factors at rank 1 and error 0. A
    ``tol`` below four times the dtype's machine epsilon is refused. ``decompose`` runs
    under torch autograd, but not under ``jax.jit``/``jax.grad`` (it picks ranks from the
    data): a traced jax array gets a TypeError.

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
    if type(tensor).__module__.startswith("dask."):  # out of core: the first cut is streamed (sekron._dask)
        from .._dask import decompose_dask

        return decompose_dask(tensor, structure, rank, tol=tol, svd=svd, random_state=random_state,
                              return_error=return_error, **options)
    check_array(tensor, "tensor")
    backend = infer_backend(tensor)  # once: every step below runs under it
    with using(backend):
        return _decompose(tensor, _as_structure(structure), rank, tol, svd, random_state, return_error, options,
                          backend)


def _decompose(tensor: Any, st: Structure, rank: Any, tol: Any, svd: Any, random_state: Any, return_error: Any,
               options: dict[str, Any], backend: str) -> Any:
    """:func:`decompose` under the tensor's backend, already set."""
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
    _check_options(options, random_state, svd)
    _refuse_tracers(tensor)
    tol = _check_reachable_tol(tol, tensor.dtype, svd)
    dtype_in = str(tensor.dtype)
    work = _upcast(tensor) if _is_half(dtype_in) else tensor  # half precision: compute in float32
    peak = frozen_value("max_abs", work, lambda: max_abs(work, "tensor"))  # once per weight within a search
    if peak == 0:  # the zero tensor: exactly rank 1 with zero factors, error 0
        sk0 = _zero_sekron(work, st, caps)
        sk0 = _cast_factors(sk0, tensor) if work is not tensor else sk0
        return (sk0, 0.0) if return_error else sk0
    scale = _power_of_two_scale(peak, str(work.dtype))
    if scale != 1.0:  # tiny or huge entries: decompose W / scale, whose squares neither under- nor overflow
        work = work / scale
        init = options.get("init", "svd")
        if not isinstance(init, str):  # a CP start for W is one for W / scale once its weights are scaled too
            weights, init_factors = init
            options = {**options, "init": CPTensor((weights / scale, list(init_factors)))}
    sq_norm = frozen_value("sq_norm", work, lambda: finite_sq_norm(work, "tensor"))

    norm = math.sqrt(sq_norm)
    budget = Budget.make(tol, norm, _n_cuts(st))
    T = st._rearrange(work)
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
    if scale != 1.0:  # give each factor an equal share of the scale, so no partial product under- or overflows
        share = scale ** (1.0 / len(factors))
        factors = [f * share for f in factors]
    sk = SeKronTensor._trusted(factors, st, backend)
    if work is not tensor and _is_half(dtype_in):
        sk = _cast_factors(sk, tensor)
    if not return_error:
        return sk
    error = math.sqrt(max(budget.spent, 0.0)) / norm if norm > 0 else 0.0
    return sk, error


# --- input checks and scaling --------------------------------------------------------------------
_CP_INITS = ("svd", "random")


def _check_options(options: dict[str, Any], random_state: Any, svd: Any) -> None:
    unknown = set(options) - {"n_iter_max", "init"}
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)} for decompose; valid: ['init', 'n_iter_max']")
    if "n_iter_max" in options:
        check_int(options["n_iter_max"], "n_iter_max", minimum=0)
    init = options.get("init", "svd")
    if isinstance(init, str):
        check_choice(init, "init", _CP_INITS)
    elif not (isinstance(init, (tuple, list)) or hasattr(init, "factors")):
        raise TypeError(f"init must be one of {list(_CP_INITS)} or a CP tensor (weights, factors), "
                        f"got {type(init).__name__}")
    if random_state is not None and not isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        try:
            check_int(random_state, "random_state", minimum=0)
        except (TypeError, ValueError):
            raise ValueError(f"random_state must be None, an integer >= 0 or a numpy Generator, got "
                             f"{random_state!r}") from None
    if not callable(svd) and (not isinstance(svd, str) or svd not in ("auto", *SVD_FUNCTIONS)):
        raise ValueError(f"svd must be 'auto', a callable, or one of {sorted(SVD_FUNCTIONS)}, got {svd!r}")


def _refuse_tracers(tensor: Any) -> None:
    """jax.jit / jax.grad trace with abstract arrays; decompose picks ranks from concrete spectra."""
    if "jax" in type(tensor).__module__ and "Tracer" in type(tensor).__name__:
        raise TypeError(
            "decompose cannot run inside jax.jit, jax.grad or jax.vmap: it reads the singular values to choose "
            "ranks (data-dependent shapes), which a traced array does not have; call decompose outside the "
            "transformation and differentiate sk.to_tensor() or conv with respect to the factors instead "
            "(torch autograd through decompose is supported)")


def _is_half(dtype: str) -> bool:
    return "float16" in dtype  # float16 and bfloat16: LAPACK has no half precision


def _upcast(tensor: Any) -> Any:
    """The tensor in float32 (same framework and device)."""
    if hasattr(tensor, "float") and "torch" in type(tensor).__module__:
        return tensor.float()
    return tensor.astype("float32")


def _cast_factors(sk: SeKronTensor, like: Any) -> SeKronTensor:
    """``sk``'s factors in the dtype of ``like`` (the caller's half-precision input)."""
    if "torch" in type(like).__module__:
        return SeKronTensor([f.to(like.dtype) for f in sk.factors], sk.structure)
    return SeKronTensor([f.astype(like.dtype) for f in sk.factors], sk.structure)


def _power_of_two_scale(peak: float, dtype: str) -> float:
    """1, or the power of two that brings ``peak`` to about 1 when its square would leave the safe range."""
    single = "float32" in dtype or "complex64" in dtype
    lo, hi = (1e-15, 1e15) if single else (1e-100, 1e100)
    if lo <= peak <= hi:
        return 1.0
    return float(2.0 ** math.floor(math.log2(peak)))


def _zero_sekron(work: Any, st: Structure, caps: dict[str, int | None]) -> SeKronTensor:
    ctx = {k: v for k, v in tl.context(work).items() if k != "requires_grad"}
    factors = [tl.zeros((1,) * len(lab) + fs, **ctx) for lab, fs in zip(st.labels, st.factor_shapes)]
    return SeKronTensor(factors, st)


def _check_reachable_tol(tol: float | None, dtype: Any, svd: Any) -> float | None:
    """A ``tol`` below the dtype's rounding cannot be met: refuse it (the SVD choice is handled in choose_svd)."""
    if tol is None:
        return None
    eps = gram_eps(dtype)
    if tol < 4 * eps:
        raise ValueError(f"tol={tol:g} is below what {dtype} can represent (machine epsilon {eps:.1e}): no "
                         f"factorization stored in {dtype} reaches it; use tol >= {4 * eps:.1e} or convert the "
                         "tensor to float64 first")
    return tol
