"""SVD variants, batched over leading axes, in a small registry.

Every variant maps a batch of matrices ``M`` of shape ``(B, m, n)`` to ``(U, s, Vh)``
with ``U`` of shape ``(B, m, k)``, ``s`` of shape ``(B, k)`` in decreasing order and
``Vh`` of shape ``(B, k, n)``, ``k = min(m, n)`` (``k = min(m, n, rank + oversampling)``
for the randomized variant). ``U`` has orthonormal columns, so ``U^H M = s Vh`` and the
error of keeping the first ``r`` terms is exactly ``sum_{i > r} s_i^2``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorly as tl

SVDFunction = Callable[..., tuple[Any, Any, Any]]

#: extra sketch columns of the randomized SVD beyond the rank kept (Halko, Martinsson and
#: Tropp: 5 to 10 make the range finder reliable)
OVERSAMPLING = 10
#: a randomized SVD pays off only when its sketch is at most this fraction of the smaller side
SKETCH_FRACTION = 0.5
#: computing only the leading eigenpairs of a Gram matrix (:func:`gram_top`, LAPACK syevr with an index range)
#: pays when they are fewer than this fraction of all; beyond it the full divide-and-conquer syevd is faster
#: (one core, n = 128 to 768: syevr for the top 25% takes 1.6 to 3 times syevd's time, docs/speed.md)
PARTIAL_EIGH_FRACTION = 0.1
#: :func:`shared_eigh` serves only Gram matrices up to this size (beyond it a full eigen-decomposition
#: costs more than the partial ones it replaces)
SHARED_EIGH_MAX = 1536
#: entries of an array that :func:`shared_eigh`'s fingerprint reads (its memo then compares whole contents)
FINGERPRINT_ENTRIES = 4096
#: a quantity within this factor of the rounding noise ``eps`` (per term) counts as noise:
#: an exact conversion drops singular values below ``NOISE_MARGIN * eps * s_max``, and a
#: Gram-based SVD is refused when the error allowance is within it of the Gram's rounding
NOISE_MARGIN = 100.0


def _ct(M: Any) -> Any:
    """Conjugate transpose of the last two axes (no conjugation, so no copy, when real)."""
    nd = len(tuple(M.shape))
    axes = (*tuple(range(nd - 2)), nd - 1, nd - 2)
    Mt = tl.transpose(M, axes)
    return tl.conj(Mt) if "complex" in str(M.dtype) else Mt


def _eps(dtype: Any) -> float:
    single = any(t in str(dtype) for t in ("float32", "complex64", "float16", "bfloat16"))
    return float(np.finfo(np.float32 if single else np.float64).eps)


def within_noise(value: float, scale: float, dtype: Any, terms: int = 1) -> bool:
    """Whether ``value`` is within ``NOISE_MARGIN`` of the rounding noise ``terms * eps * scale`` of ``dtype``."""
    return value < NOISE_MARGIN * terms * _eps(dtype) * scale


def randomized_pays(rank: int | None, m: int, n: int) -> bool:
    """Whether a randomized SVD keeping ``rank`` terms of an ``m x n`` matrix is worth its sketch."""
    return rank is not None and rank + OVERSAMPLING < SKETCH_FRACTION * min(m, n)


def svd_full(M: Any, rank: int | None = None, random_state: Any = None) -> tuple[Any, Any, Any]:
    """The backend's thin SVD (LAPACK gesdd on numpy).

    Within :func:`shared_eigh`, the SVD of a single real numpy matrix of at least its size is
    computed once per content and shared (the same values, bitwise, as a fresh call).
    """
    shared = _shared_svd(M)
    if shared is not None:
        return shared
    U, s, Vh = tl.svd(M, full_matrices=False)
    return U, s, Vh


def svd_gram(M: Any, rank: int | None = None, random_state: Any = None) -> tuple[Any, Any, Any]:
    """SVD from the eigen-decomposition of the small Gram matrix.

    For a wide ``M`` (m <= n) it takes ``eigh(M M^H)``, which costs one ``m x m x n``
    product instead of a full SVD; a tall ``M`` goes through ``M^H``. Squaring halves the
    relative precision of the small singular values (they are accurate to about
    ``sqrt(eps) * s_max``); :func:`choose_svd` falls back to :func:`svd_full` when a
    tolerance asks for more.
    """
    m, n = int(M.shape[-2]), int(M.shape[-1])
    if m > n:
        V, s, Uh = svd_gram(_ct(M))
        return _ct(Uh), s, _ct(V)
    U, _, _ = gram_eigh(M)  # decreasing eigenvalues: s below is then (nearly) decreasing
    C = tl.matmul(_ct(U), M)  # = s Vh, exactly U^H M
    s = tl.sqrt(tl.sum(tl.abs(C) ** 2, axis=-1))
    safe = tl.where(s > 0, s, tl.ones(tuple(s.shape), **tl.context(s)))
    Vh = C / tl.reshape(safe, (*tuple(s.shape), 1))
    return U, s, Vh


def svd_randomized(M: Any, rank: int | None = None, random_state: Any = None, *, oversampling: int = OVERSAMPLING,
                   n_power: int = 2) -> tuple[Any, Any, Any]:
    """Randomized range finder (Halko, Martinsson and Tropp) followed by a small SVD.

    Keeps ``min(m, n, rank + oversampling)`` terms; the first ``rank`` are accurate
    up to the power-iteration gap. Without ``rank`` it is the full SVD.
    """
    m, n = int(M.shape[-2]), int(M.shape[-1])
    if rank is None or rank + oversampling >= min(m, n):
        return svd_full(M)
    k = rank + oversampling
    rng = np.random.default_rng(random_state)
    batch = tuple(int(b) for b in M.shape[:-2])
    omega = tl.tensor(rng.standard_normal((*batch, n, k)), **tl.context(M))
    Y = tl.matmul(M, omega)
    for _ in range(n_power):
        Q, _ = tl.qr(Y)
        Q, _ = tl.qr(tl.matmul(_ct(M), Q))
        Y = tl.matmul(M, Q)
    Q, _ = tl.qr(Y)
    Ub, s, Vh = tl.svd(tl.matmul(_ct(Q), M), full_matrices=False)
    return tl.matmul(Q, Ub), s, Vh


# --- singular values from the Gram matrix: the one place that forms it and solves it ----------
def _gram(M: Any) -> tuple[Any, bool]:
    """The smaller Gram matrix of ``M`` (..., m, n): ``M M^H`` when wide (m <= n), ``M^H M`` when tall."""
    tall = int(M.shape[-2]) > int(M.shape[-1])
    if isinstance(M, np.ndarray):  # numpy callers may run under another tensorly backend (the search)
        Mt = np.swapaxes(M, -1, -2)
        Mh = Mt.conj() if np.iscomplexobj(M) else Mt
    else:
        Mh = _ct(M)
    return (Mh @ M if tall else M @ Mh), tall


def gram_eigh(M: Any) -> tuple[Any, Any, bool]:
    """Eigen-decomposition of the small Gram matrix of the batch ``M`` (B, m, n).

    Returns ``(V, lam, tall)``: for a wide ``M`` (m <= n) the eigenvectors ``V`` (B, m, m)
    of ``M M^H`` (the left singular vectors); for a tall one those of ``M^H M`` (the right
    singular vectors). ``lam`` (B, min(m, n)) holds the eigenvalues, the squared singular
    values, in decreasing order (tiny ones may be slightly negative from rounding).
    """
    G, tall = _gram(M)
    lam, V = tl.eigh(G)
    return tl.flip(V, axis=-1), tl.flip(lam, axis=-1), tall


def gram_top(M: Any, rank: int) -> tuple[Any, Any, bool, float] | None:
    """The ``rank`` leading eigenpairs of the Gram matrix of a single ``M`` (1, m, n), plus the tail energy.

    Like :func:`gram_eigh` but computes only the eigenpairs kept (LAPACK ``syevr`` with an
    index range, through scipy), several times faster than the full eigen-decomposition
    when ``rank`` is small. Returns ``(V, lam, tall, tail)`` where ``tail = trace(G) -
    sum(lam)`` is the discarded squared energy, or None when ``M`` is not a numpy array or
    the batch holds several matrices (then use :func:`gram_eigh`).
    """
    if not isinstance(M, np.ndarray) or int(M.shape[0]) != 1:
        return None
    full = _shared_eigh(M[0])
    if full is not None:  # a shared unfolding: the leading part of its one full eigen-decomposition
        V, lam, tall, trace = full
        V, lam = V[:, :rank].copy(), lam[:rank].copy()  # copies: a caller may not alter the shared one
        return V[None], lam[None], tall, max(trace - float(np.sum(np.maximum(lam, 0))), 0.0)
    G, tall = _gram(M[0])
    V, lam, tail = eigh_top(G, rank, overwrite=True)
    return V[None], lam[None], tall, tail


# --- one eigen-decomposition per unfolding, shared by every truncation of it (the search) --------
_SHARED: contextvars.ContextVar[tuple[int, dict[Any, Any]] | None] = contextvars.ContextVar(
    "sekron_shared_eigh", default=None)


@contextlib.contextmanager
def shared_eigh(min_size: int, frozen: np.ndarray | None = None) -> Iterator[None]:
    """Within this block, :func:`gram_top` of any real numpy matrix with at least ``min_size`` entries
    is the leading part of one full eigen-decomposition of its Gram matrix, computed once per content.

    The structure search truncates the same unfoldings of a weight at many ranks (the rank
    caps of TT, TR and Tucker at every budget, the SVD starts of CP-ALS at every rank): with
    ``min_size = W.size`` each full-size unfolding's Gram matrix is formed and solved once.
    Within the block a rank-capped truncation without ``tol`` also takes the Gram route for
    square-ish real numpy unfoldings (:meth:`sekron.decomposition._svd_based.Context.truncated`),
    where ``svd="auto"`` would otherwise take a full SVD: the cap, not the spectrum's precision,
    decides the rank, and the discarded energy is exact to rounding either way. The
    result of a call never depends on which calls came before it (the stored decomposition is
    always the full one), so a search that skips some calls (a warm cache) returns the same values.

    ``frozen``: an array (the searched weight) that nothing writes to while the block runs. A matrix that
    is a view into its memory is then recognised by where it lies (address, shape, strides, dtype) once it
    has been seen, without comparing its contents again: the same place in unchanged memory holds the same
    values. Every other matrix is matched by content.

    Examples
    --------
    >>> import numpy as np
    >>> M = np.random.default_rng(0).standard_normal((1, 6, 20))
    >>> with shared_eigh(M.size):
    ...     V2, lam2, _, _ = gram_top(M, 2)
    ...     V4, lam4, _, _ = gram_top(M, 4)
    >>> bool(np.array_equal(lam4[0, :2], lam2[0])), bool(np.allclose(lam2, gram_top(M, 2)[1]))
    (True, True)
    """
    store: dict[Any, Any] = {} if frozen is None else {_FROZEN: _owner(frozen)}
    token = _SHARED.set((int(min_size), store))
    try:
        yield
    finally:
        _SHARED.reset(token)


def in_shared_block() -> bool:
    """Whether a :func:`shared_eigh` block is active (the structure search runs in one)."""
    return _SHARED.get() is not None


def shares_eigh(M: Any) -> bool:
    """Whether :func:`gram_top` of the single matrix ``M`` (1, m, n) is served by :func:`shared_eigh` here."""
    active = _SHARED.get()
    return (active is not None and isinstance(M, np.ndarray) and M.ndim == 3 and int(M.shape[0]) == 1
            and M.size >= active[0] and M.dtype.kind == "f"
            and min(int(M.shape[1]), int(M.shape[2])) <= SHARED_EIGH_MAX)


def _shared_eigh(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, float] | None:
    """The full eigen-decomposition of ``M``'s Gram (decreasing), from the active :func:`shared_eigh` memo."""
    active = _SHARED.get()
    if active is None or not shares_eigh(M[None]):
        return None

    def compute(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, float]:
        from scipy.linalg import eigh

        G, tall = _gram(A)
        trace = float(np.trace(G))
        lam, V = eigh(G, overwrite_a=True, check_finite=False)
        return np.ascontiguousarray(V[:, ::-1]), np.ascontiguousarray(lam[::-1]), tall, trace

    return _memoised(active[1], "eigh", M, compute)  # type: ignore[no-any-return]


_FROZEN = "\0frozen"


def _owner(a: np.ndarray) -> np.ndarray:
    """The array that owns ``a``'s memory (``a`` itself, or the last array of its ``base`` chain)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def shared_result(kind: str, M: np.ndarray, compute: Callable[[np.ndarray], Any]) -> Any:
    """``compute(M)`` (a function of the contents of the numpy matrix ``M`` only), computed once per content of
    ``M`` within an active :func:`shared_eigh` block (the same value object is handed out again: callers must
    not alter it); outside a block, ``compute(M)`` each time."""
    active = _SHARED.get()
    if active is None:
        return compute(M)
    return _memoised(active[1], kind, M, compute)


def _place(A: np.ndarray, kind: str) -> tuple[Any, ...]:
    return ("place", kind, A.__array_interface__["data"][0], A.shape, A.strides, A.dtype.str)


def frozen_value(kind: str, A: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, a function of the contents of ``A`` only, computed once per place for a view into the
    active :func:`shared_eigh` block's frozen array (the searched weight: the norms that every ``decompose``
    of it checks); outside such a block, or for any other array, ``compute()`` each time."""
    active = _SHARED.get()
    store: dict[Any, Any] = {} if active is None else active[1]
    frozen = store.get(_FROZEN)
    if frozen is None or not isinstance(A, np.ndarray) or _owner(A) is not frozen:
        return compute()
    place = _place(A, kind)
    if place not in store:
        store[place] = compute()
    return store[place]


def _memoised(store: dict[Any, Any], kind: str, M: np.ndarray, compute: Callable[[np.ndarray], Any]) -> Any:
    """``compute(A)`` for ``A``, the contiguous ``M``, once per content within the :func:`shared_eigh` block.

    Matched by :func:`_fingerprint`, then by whole contents; a view into the block's frozen array is also
    matched by its place in that memory (no comparison), once it has been seen.
    """
    A = np.ascontiguousarray(M)
    frozen = store.get(_FROZEN)
    place = None
    if frozen is not None and _owner(A) is frozen:
        place = _place(A, kind)
        got = store.get(place)
        if got is not None:
            return got
    key = (kind, *_fingerprint(A, store))  # equality is checked below
    found = [v for stored, v in store.get(key, []) if np.array_equal(stored, A)][:1]
    if found:
        value = found[0]
    else:
        value = compute(A)
        # kept for the comparison: a copy, unless A lies in the frozen array (then it cannot change)
        store.setdefault(key, []).append((A.copy() if A is M and place is None else A, value))
    if place is not None:
        store[place] = value
    return value


def shared_projection(M: Any, rank: int) -> np.ndarray | None:
    """``V_r^T M`` (1, r, n) for a wide single real matrix ``M`` (1, m, n) served by :func:`shared_eigh`, where
    ``V_r`` are the ``r`` leading eigenvectors of its shared Gram decomposition (what :func:`gram_top` returns):
    the full product ``V^T M`` is formed once per content and its leading rows handed out (a copy).

    The rank-capped cuts of one unfolding at many ranks (the TT, TR and Tucker caps of the search all start by
    cutting ``(d_1 | rest)``) then cost one product instead of one each. None when ``M`` is not served or tall.
    """
    active = _SHARED.get()
    if active is None or not shares_eigh(M) or int(M.shape[1]) > int(M.shape[2]):
        return None
    full = _shared_eigh(M[0])
    if full is None:
        return None
    P = _memoised(active[1], "proj", M[0], lambda A: full[0].T @ A)
    return P[None, :rank].copy()  # type: ignore[no-any-return]


def _shared_svd(M: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The thin SVD of the single matrix ``M`` (1, m, n) from the active :func:`shared_eigh` memo (copies of
    the stored arrays, so a caller may alter them), or None when the memo does not serve ``M``."""
    active = _SHARED.get()
    if active is None or not isinstance(M, np.ndarray) or M.ndim != 3 or int(M.shape[0]) != 1 \
            or M.size < active[0] or M.dtype.kind != "f":
        return None
    U, s, Vh = _memoised(active[1], "svd", M[0], lambda A: tuple(np.linalg.svd(A[None], full_matrices=False)))
    return U.copy(), s.copy(), Vh.copy()


def _fingerprint(A: np.ndarray, store: dict[Any, Any]) -> tuple[Any, ...]:
    """A cheap content fingerprint of a contiguous ``A`` (shape, dtype, a fixed random projection of at most
    :data:`FINGERPRINT_ENTRIES` evenly spaced entries); equality of the contents is still checked by the caller."""
    flat = A.reshape(-1)[:: max(1, A.size // FINGERPRINT_ENTRIES)]
    probes = store.get(("probe", flat.size))
    if probes is None:
        probes = store[("probe", flat.size)] = np.random.default_rng(flat.size).standard_normal(flat.size)
    return A.shape, A.dtype.str, float(flat @ probes)


def eigh_top(G: np.ndarray, rank: int, *, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """The ``rank`` leading eigenpairs of a Hermitian numpy ``G`` (decreasing) and the discarded energy.

    The discarded energy is ``trace(G) - sum(max(lam, 0))``: for a Gram matrix, the squared error
    of keeping those ``rank`` directions. ``overwrite`` lets LAPACK use ``G`` as scratch.

    Examples
    --------
    >>> import numpy as np
    >>> V, lam, tail = eigh_top(np.diag([1.0, 4.0, 2.0]), 2)
    >>> lam.tolist(), tail
    ([4.0, 2.0], 1.0)
    """
    from scipy.linalg import eigh

    k = int(G.shape[0])
    trace = float(np.real(np.trace(G)))
    lam, V = eigh(G, subset_by_index=[k - rank, k - 1], overwrite_a=overwrite, check_finite=False)
    lam, V = np.ascontiguousarray(lam[::-1]), np.ascontiguousarray(V[:, ::-1])
    return V, lam, max(trace - float(np.sum(np.maximum(lam, 0))), 0.0)


def gram_eigvalsh(M: np.ndarray, dtype: Any = None) -> np.ndarray:
    """Squared singular values of a numpy ``M`` (..., m, n), decreasing and clipped at 0 (eigenvalues only).

    ``dtype`` is the precision of the eigenvalue solve (default: ``M``'s).

    Examples
    --------
    >>> import numpy as np
    >>> M = np.diag([3.0, 1.0]) @ np.eye(2, 5)
    >>> gram_eigvalsh(M).tolist()
    [9.0, 1.0]
    """
    G, _ = _gram(M)
    if dtype is not None:
        G = G.astype(dtype)
    return np.clip(np.linalg.eigvalsh(G)[..., ::-1].real, 0.0, None)


SVD_FUNCTIONS: dict[str, SVDFunction] = {
    "full": svd_full,
    "gram": svd_gram,
    "randomized": svd_randomized,
}


def choose_svd(svd: str | SVDFunction, shape: tuple[int, ...], dtype: Any, tol: float | None) -> SVDFunction:
    """Resolve ``svd`` (a registry name, "auto", or a callable) for matrices of ``shape``.

    ``"auto"`` takes :func:`svd_gram` for unfoldings at least twice as wide as tall (or
    tall as wide) unless ``tol`` is so small that squaring would lose the singular values
    that decide the truncation (:func:`within_noise` of ``tol**2`` over ``min(m, n)`` terms); else
    :func:`svd_full`.
    """
    if callable(svd):
        return svd if svd in SVD_FUNCTIONS.values() else _checked(svd)
    m, n = shape[-2], shape[-1]
    precise = tol is not None and within_noise(tol**2, 1.0, dtype, min(m, n))
    if svd == "auto":
        return svd_gram if max(m, n) >= 2 * min(m, n) and not precise else svd_full
    if svd not in SVD_FUNCTIONS:
        raise ValueError(f"svd must be 'auto', a callable, or one of {sorted(SVD_FUNCTIONS)}, got {svd!r}")
    if svd == "gram" and precise:
        warnings.warn(f"svd='gram' squares the singular values, so it resolves them only to about "
                      f"sqrt(eps) = {math.sqrt(_eps(dtype)):.1e} of the largest; tol={tol:g} needs more: using "
                      "svd='full' for this unfolding", UserWarning, stacklevel=2)
        return svd_full
    return SVD_FUNCTIONS[svd]


def _checked(fn: SVDFunction) -> SVDFunction:
    """A user's SVD callable, whose answer is checked to be ``(U, s, Vh)`` of consistent shapes."""

    def run(M: Any, rank: int | None = None, random_state: Any = None) -> tuple[Any, Any, Any]:
        out = fn(M, rank, random_state)
        name = getattr(fn, "__name__", type(fn).__name__)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise TypeError(f"the svd callable {name!r} must return a tuple (U, s, Vh) for a batch M of shape "
                            f"{tuple(M.shape)}, got {type(out).__name__}")
        U, s, Vh = out
        B, m, n = (int(d) for d in M.shape)
        try:
            k = int(s.shape[-1])
            ok = (tuple(U.shape) == (B, m, k) and tuple(s.shape) == (B, k) and tuple(Vh.shape) == (B, k, n))
        except (AttributeError, TypeError, IndexError):
            ok = False
        if not ok:
            shapes = [tuple(getattr(x, "shape", ())) if hasattr(x, "shape") else type(x).__name__ for x in out]
            raise TypeError(f"the svd callable {name!r} must return U (B, m, k), s (B, k), Vh (B, k, n) for M of "
                            f"shape {(B, m, n)}, got shapes {shapes}")
        return U, s, Vh

    run.__wrapped__ = fn  # type: ignore[attr-defined]
    return run
