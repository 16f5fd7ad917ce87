"""Out-of-core decomposition of dask arrays: the first cut streamed, the rest in memory.

:func:`sekron.decompose` hands a ``dask.array.Array`` to :func:`decompose_dask`. Every
SVD-based pattern (nested, chain, ring, tucker) starts with a truncated SVD of the first
unfolding ``M`` of the rearranged tensor T: ``M`` has one row per entry of factor 1
(``P_1`` rows) and one column per entry of all the other factors (``n = N / P_1``). That
is the only step that touches the whole tensor, and it is done in two streaming passes
over the chunks of ``x``:

1. the Gram matrix ``G = M M^H`` (or, for the precise path, the R factor of a TSQR of
   ``M^H``), summed over column blocks of ``M`` in a tree;
2. after the first factor ``U`` (``P_1 x R_1``) and its rank are chosen from ``G`` with
   sekron's own truncation rule (:func:`sekron.linalg.choose_ranks`), the projection
   ``C = U^H M``, one column block at a time.

``C`` is ``P_1 / R_1`` times smaller than the tensor; it is gathered into memory and the
pattern's in-memory algorithm continues on it unchanged (it is handed the streamed first
cut through :class:`_StreamedContext`).

The rearrangement is folded into the blocks. Write each index of mode ``n`` as
``i_n = h_n L_n + l_n`` with ``h_n < a_n`` (factor 1's size along mode n, the most
significant digit) and ``L_n = d_n / a_n``. Rows of ``M`` are the tuples ``h``, columns
the tuples ``l`` (reordered factor-major). A column block of ``M`` is therefore the set
of all ``h`` for a box of ``l``: along each mode either every chunk lies inside one
``h``-segment with the same pattern of pieces in every segment ("within": the block
stacks ``a_n`` chunks, one per ``h_n``), or every chunk covers whole segments ("across":
the block takes all chunks of that mode). Chunkings that are neither are rechunked, and
so are blocks larger than half of dask's ``array.chunk-size``. One task holds one
column block (``P_1`` times the chunk size along the "within" modes) plus its inputs, so
the peak memory is a few blocks per worker thread plus ``G`` and, at the end, ``C``.

dask is imported lazily here; importing sekron does not import it.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._backend import using
from ._validation import check_float_dtype, check_size, check_tol, max_abs
from .decomposition._decompose import (
    _cast_factors,
    _check_options,
    _check_reachable_tol,
    _is_half,
    _power_of_two_scale,
    _zero_sekron,
)
from .decomposition._svd_based import Context
from .linalg.svd import PARTIAL_EIGH_FRACTION, _eps, choose_svd, eigh_top, svd_gram
from .linalg.truncation import Budget, choose_ranks
from .sekron_tensor import SeKronTensor, _as_structure
from .structure import Structure

#: patterns whose first step is a truncated SVD of the first unfolding (cp runs ALS on all of T)
STREAMED = ("nested", "chain", "ring", "tucker")

#: the SVD choices a streamed first cut can honour exactly
_SVD_CHOICES = ("auto", "gram", "full")

#: an upper bound on the Gram matrix (P_1 x P_1) kept in memory
_MAX_GRAM_BYTES = 4 * 2**30


def is_dask_array(x: Any) -> bool:
    """True for a dask array (checked by its type's module, without importing dask)."""
    return type(x).__module__.startswith("dask.") and hasattr(x, "chunks") and hasattr(x, "dask")


# --- layout: column blocks of the first unfolding ----------------------------------------


class _Mode:
    """How the chunks along one mode map to the (h, l) digits of that mode.

    ``kind == "within"``: ``pieces`` are the (start, stop) ranges of ``l`` that every
    ``h``-segment is split into (chunk ``h * len(pieces) + j`` holds piece ``j`` of
    segment ``h``). ``kind == "across"``: ``spans`` are the (h0, h1) segment ranges of the
    chunks, each covering every ``l``.
    """

    def __init__(self, a: int, L: int, kind: str, ranges: list[tuple[int, int]]) -> None:
        self.a, self.L, self.kind = a, L, kind
        self.pieces = ranges if kind == "within" else [(0, L)]
        self.spans = ranges if kind == "across" else [(h, h + 1) for h in range(a)]

    @property
    def chunks(self) -> tuple[int, ...]:
        if self.kind == "within":
            return tuple(stop - start for _ in range(self.a) for start, stop in self.pieces)
        return tuple((h1 - h0) * self.L for h0, h1 in self.spans)

    @property
    def extent(self) -> int:
        """Largest number of ``l`` values in one column block."""
        return max(stop - start for start, stop in self.pieces)


def _split(total: int, size: int) -> list[tuple[int, int]]:
    size = max(1, min(size, total))
    return [(s, min(s + size, total)) for s in range(0, total, size)]


def _classify(chunks: tuple[int, ...], a: int, L: int) -> _Mode:
    """The mode's layout from the chunks of x along it, proposing a rechunk when they fit neither kind."""
    bounds = np.cumsum((0, *chunks))
    if a > 1 and all(int(b) % L == 0 for b in bounds):
        return _Mode(a, L, "across", [(int(b0) // L, int(b1) // L) for b0, b1 in itertools.pairwise(bounds)])
    first = [(int(b0), int(b1)) for b0, b1 in itertools.pairwise(bounds) if b1 <= L]
    if first and first[-1][1] == L and len(first) * a == len(chunks):
        period = [stop - start for start, stop in first]
        if list(chunks) == period * a:
            return _Mode(a, L, "within", first)
    biggest = max(chunks)
    if a > 1 and biggest >= L:  # big chunks: whole segments, rounded
        per = max(1, round(biggest / L))
        return _Mode(a, L, "across", _split(a, per))
    return _Mode(a, L, "within", _split(L, biggest))


def _shrink(modes: list[_Mode], P1: int, itemsize: int, target: int) -> None:
    """Split the widest ``l`` ranges until one column block (P_1 rows) fits in ``target`` bytes."""
    while P1 * math.prod(m.extent for m in modes) * itemsize > target:
        m = max(modes, key=lambda m: m.extent)
        if m.extent == 1:
            return
        modes[modes.index(m)] = _Mode(m.a, m.L, "within", _split(m.L, -(-m.extent // 2)))


class _Layout:
    """The column blocks of the first unfolding of T = rearrange(x) as groups of chunks of x."""

    def __init__(self, x: Any, st: Structure, target: int) -> None:
        a = st.factor_shapes[0]
        self.st, self.a = st, a
        self.L = tuple(d // an for d, an in zip(st.shape, a))
        itemsize = np.dtype(x.dtype).itemsize
        self.P1 = math.prod(a)
        modes = [_classify(tuple(int(c) for c in ch), an, Ln) for ch, an, Ln in zip(x.chunks, a, self.L)]
        _shrink(modes, self.P1, itemsize, target)
        self.modes = modes
        chunks = tuple(m.chunks for m in modes)
        self.rechunked = chunks != tuple(tuple(int(c) for c in ch) for ch in x.chunks)
        self.x = x.rechunk(chunks) if self.rechunked else x
        self.block_bytes = self.P1 * math.prod(m.extent for m in modes) * itemsize
        # column index of digit (factor k >= 2, mode n) in the factor-major column order of T's unfolding
        rest = st.factor_shapes[1:]
        col_shape = tuple(s[n] for s in rest for n in range(st.order))
        strides = np.cumprod((1, *col_shape[::-1]))[::-1][1:]
        self._strides = [[int(strides[k * st.order + n]) for k in range(len(rest))] for n in range(st.order)]

    def groups(self) -> list[tuple[int, ...]]:
        """One entry per column block: the piece index of every mode (0 for "across" modes)."""
        return list(itertools.product(*(range(len(m.pieces)) for m in self.modes)))

    def members(self, group: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[tuple[int, int], ...]]]:
        """The chunks of one column block: (chunk index of x, (h0, h1) segment range per mode)."""
        per_mode = []
        for m, j in zip(self.modes, group):
            if m.kind == "within":
                per_mode.append([(h * len(m.pieces) + j, (h, h + 1)) for h in range(m.a)])
            else:
                per_mode.append([(i, span) for i, span in enumerate(m.spans)])
        return [(tuple(c[0] for c in combo), tuple(c[1] for c in combo)) for combo in itertools.product(*per_mode)]

    def extents(self, group: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(m.pieces[j][1] - m.pieces[j][0] for m, j in zip(self.modes, group))

    def columns(self, group: tuple[int, ...]) -> np.ndarray:
        """Positions in T's first unfolding of the block's columns (the ``l`` box in C order)."""
        st = self.st
        total = np.zeros((), dtype=np.int64)
        for n, (m, j) in enumerate(zip(self.modes, group)):
            start, stop = m.pieces[j]
            lo = np.arange(start, stop, dtype=np.int64)
            pos = np.zeros_like(lo)
            for k, s in enumerate(st.factor_shapes[1:]):  # l = ravel(digits of factors 2..S), factor 2 first
                below = math.prod(f[n] for f in st.factor_shapes[k + 2:])
                pos += (lo // below) % s[n] * self._strides[n][k]
            shape = [1] * st.order
            shape[n] = stop - start
            total = total + pos.reshape(shape)
        return total.reshape(-1)


# --- the per-block work (runs on the dask workers) ---------------------------------------


def _assemble(a: tuple[int, ...], extents: tuple[int, ...], spans: tuple[tuple[tuple[int, int], ...], ...],
              *blocks: np.ndarray) -> np.ndarray:
    """One column block of M, shape (P_1, prod extents), from its chunks of x."""
    N = len(a)
    dtype = np.result_type(*blocks)
    out = np.empty((*a, *extents), dtype=dtype)
    inter = out.transpose([ax for n in range(N) for ax in (n, N + n)])  # (h_1, l_1, h_2, l_2, ..): a view
    for span, b in zip(spans, blocks):
        dest = inter[tuple(s for (h0, h1) in span for s in (slice(h0, h1), slice(None)))]
        dest[...] = np.reshape(b, dest.shape)
    return out.reshape(math.prod(a), -1)


def _gram_block(a: Any, extents: Any, spans: Any, *blocks: np.ndarray) -> tuple[np.ndarray, float]:
    B = _assemble(a, extents, spans, *blocks)
    G = B @ B.conj().T if np.iscomplexobj(B) else B @ B.T
    return G, float(np.sum(np.abs(np.diagonal(G)), dtype=np.float64))


def _qr_block(a: Any, extents: Any, spans: Any, *blocks: np.ndarray) -> tuple[np.ndarray, float]:
    B = _assemble(a, extents, spans, *blocks)
    R: np.ndarray = np.linalg.qr(B.conj().T, mode="r")  # type: ignore[assignment]
    return R, float(np.sum(np.abs(R).astype(np.float64) ** 2))


def _sum_grams(*parts: tuple[np.ndarray, float]) -> tuple[np.ndarray, float]:
    G = parts[0][0].copy()
    for p in parts[1:]:
        G += p[0]
    return G, math.fsum(p[1] for p in parts)


def _stack_qr(*parts: tuple[np.ndarray, float]) -> tuple[np.ndarray, float]:
    R: np.ndarray = np.linalg.qr(np.concatenate([p[0] for p in parts], axis=0), mode="r")  # type: ignore[assignment]
    return R, math.fsum(p[1] for p in parts)


def _project_block(U: np.ndarray, a: Any, extents: Any, spans: Any, *blocks: np.ndarray) -> np.ndarray:
    B = _assemble(a, extents, spans, *blocks)
    return U.conj().T @ B


# --- driving the passes under the active scheduler ---------------------------------------


def _tree(parts: list[Any], combine: Callable[..., Any], every: int = 8) -> Any:
    from dask import delayed

    while len(parts) > 1:
        parts = [delayed(combine, pure=True)(*parts[i:i + every]) for i in range(0, len(parts), every)]
    return parts[0]


def _block_tasks(layout: _Layout, func: Callable[..., Any], *lead: Any) -> list[Any]:
    """One delayed task per column block: ``func(*lead, a, extents, spans, *chunks)``."""
    from dask import delayed

    chunks = layout.x.to_delayed()
    tasks = []
    for group in layout.groups():
        members = layout.members(group)
        spans = tuple(span for _, span in members)
        tasks.append(delayed(func, pure=True)(*lead, layout.a, layout.extents(group), spans,
                                              *(chunks[idx] for idx, _ in members)))
    return tasks


def _first_pass(layout: _Layout, method: str) -> tuple[np.ndarray, float]:
    """G = M M^H (method "gram") or R with R^H R = M M^H (method "qr"), and ||x||^2 in float64."""
    import dask

    func, combine = (_gram_block, _sum_grams) if method == "gram" else (_qr_block, _stack_qr)
    root = _tree(_block_tasks(layout, func), combine)
    (result,) = dask.compute(root)
    return result


def _second_pass(layout: _Layout, U: np.ndarray, n: int) -> np.ndarray:
    """C = U^H M, gathered in T's column order."""
    import dask

    groups = layout.groups()
    parts = list(dask.compute(*_block_tasks(layout, _project_block, dask.delayed(U, pure=True))))
    C = np.empty((int(U.shape[1]), n), dtype=np.result_type(U.dtype, parts[0].dtype))
    for i, group in enumerate(groups):
        C[:, layout.columns(group)] = parts[i]
        parts[i] = None
    return C


class _StreamedContext(Context):
    """The algorithms' context whose first :meth:`truncated` call returns the streamed first cut."""

    def __init__(self, *args: Any, first: Callable[[Context, str], tuple[Any, Any, np.ndarray]]) -> None:
        super().__init__(*args)
        self._first: Callable[[Context, str], tuple[Any, Any, np.ndarray]] | None = first

    def truncated(self, M: Any, label: str) -> tuple[Any, Any, np.ndarray]:
        first, self._first = self._first, None
        if first is not None:
            return first(self, label)
        return super().truncated(M, label)


def _truncate_first(ctx: Context, label: str, method: str, mat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Left vectors (P_1, R) and ranks of the first cut, by the in-memory rule (``Context._gram_truncated``)."""
    cap = ctx.caps.get(label)
    if method == "qr":
        Us, s, _ = np.linalg.svd(mat.conj().T, full_matrices=False)
        ranks = choose_ranks(s[None], cap, ctx.budget, label)
        return Us, ranks
    allowance = ctx.budget.allowance()
    if cap is not None and cap < PARTIAL_EIGH_FRACTION * k and not math.isfinite(allowance):
        V, _, tail = eigh_top(mat, cap)
        ctx.budget.record(tail)
        return V, np.full(1, cap, dtype=np.int64)
    lam, V = np.linalg.eigh(mat)
    lam_np = np.maximum(np.real(lam[::-1]).astype(np.float64), 0.0)
    ranks = choose_ranks(np.sqrt(lam_np)[None], cap, ctx.budget, label)
    return np.ascontiguousarray(V[:, ::-1]), ranks


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_inputs(x: Any, st: Structure, svd: Any, options: dict[str, Any]) -> None:
    shape = tuple(int(s) if not math.isnan(s) else s for s in x.shape)
    if shape != st.shape:
        raise ValueError(
            f"tensor of shape {shape} does not match the structure: its factor shapes "
            f"{st.factor_shapes} multiply to {st.shape}; choose factor shapes whose per-mode products are {shape}"
        )
    if any(math.isnan(c) for ch in x.chunks for c in ch):
        raise ValueError("the dask array has unknown chunk sizes; call x.compute_chunk_sizes() first")
    check_float_dtype(x, "tensor")
    if st.pattern not in STREAMED:
        what = "custom labels" if st.pattern is None else f"pattern {st.pattern!r}"
        raise ValueError(
            f"a dask array can be decomposed with the patterns {list(STREAMED)}, not {what}: cp runs ALS on the "
            "whole tensor; compute it into memory first (numpy.asarray(x)) or choose one of those patterns"
        )
    if callable(svd) or svd not in _SVD_CHOICES:
        raise ValueError(
            f"svd must be one of {list(_SVD_CHOICES)} for a dask array (the first cut streams a Gram matrix "
            f"or a TSQR of the first unfolding), got {svd!r}"
        )
    if options:
        raise TypeError(f"unknown options {sorted(options)} for decompose of a dask array; it takes none")


def decompose_dask(x: Any, structure: Structure | Sequence[Sequence[int]], rank: Any = None, *,
                   tol: float | None = None, svd: Any = "auto", random_state: Any = None,
                   return_error: bool = False, **options: Any) -> Any:
    """:func:`sekron.decompose` of a ``dask.array.Array``: the first cut streamed, the rest in memory.

    Same arguments and result as :func:`sekron.decompose` (numpy factors), for the
    patterns in :data:`STREAMED`; ``svd`` is "auto", "gram" or "full". The first cut reads
    x twice (Gram or TSQR, then the projection) under the active dask scheduler, after one
    cheap pass for ``max |x|`` that gives the in-memory input hardening (NaN/Inf refused,
    the zero tensor at rank 1, tiny or huge entries scaled by a power of two, half precision
    computed in float32).
    """
    import dask
    import dask.array as da
    from dask.utils import parse_bytes

    from .decomposition import DECOMPOSITIONS

    if not isinstance(x, da.Array):
        raise TypeError(f"a dask tensor must be a dask.array.Array, got {type(x).__name__}; use dask.array")
    st = _as_structure(structure)
    tol = check_tol(tol)
    _check_options(options, random_state, svd)  # the in-memory checks and messages first
    _check_inputs(x, st, svd, options)
    if not isinstance(return_error, bool):
        raise TypeError(f"return_error must be a bool, got {return_error!r}")
    caps = st.parse_rank(rank)
    tol = _check_reachable_tol(tol, x.dtype, svd)
    if st.n_factors == 1:  # the one factor is the whole tensor
        from .decomposition import decompose

        return decompose(np.asarray(x.compute()), st, rank, tol=tol, svd=svd, random_state=random_state,
                         return_error=return_error)

    # the in-memory hardening (sekron.decomposition._decompose), lazily: half precision is computed in
    # float32, the zero tensor is rank 1, tiny or huge entries are decomposed as x / 2^e
    half = _is_half(str(x.dtype))
    work = x.astype("float32") if half else x
    with using("numpy"):
        peak = max_abs(np.asarray(da.abs(work).max().compute()), "tensor")  # one cheap pass; NaN/Inf refused
        if peak == 0:  # exactly rank 1 with zero factors, error 0
            sk0 = _zero_sekron(np.zeros((), dtype=work.dtype), st, caps)
            sk0 = _cast_factors(sk0, x) if half else sk0
            return (sk0, 0.0) if return_error else sk0
    scale = _power_of_two_scale(peak, str(work.dtype))
    if scale != 1.0:  # a power of two: exact, and the squares in the Gram neither under- nor overflow
        work = work / scale

    dtype = np.dtype(work.dtype)
    P1 = st.factor_sizes[0]
    n = math.prod(st.factor_sizes[1:])
    if P1 > n:
        raise ValueError(
            f"streaming needs a wide first unfolding: factor 1 has P_1 = {P1} entries but the others only "
            f"{n}; put a smaller factor first in {st.factor_shapes}, or compute x into memory (numpy.asarray(x))"
        )
    if P1 * P1 * max(dtype.itemsize, 8) > _MAX_GRAM_BYTES:
        raise ValueError(
            f"factor 1 has P_1 = {P1} entries: its {P1} x {P1} Gram matrix would need "
            f"{P1 * P1 * max(dtype.itemsize, 8) / 2**30:.1f} GiB; choose a smaller first factor (P_1 <= "
            f"{math.isqrt(_MAX_GRAM_BYTES // 8)})"
        )
    check_size(P1 * P1, "the first cut's Gram matrix", "choose a smaller first factor")
    n_cuts = max(st.n_factors - 1, 1)
    k = P1
    method = "gram" if choose_svd(svd, (1, P1, n), dtype, tol) is svd_gram else "qr"
    if method == "gram" and svd == "auto" and tol is not None and tol**2 / n_cuts < 100 * k * _eps(dtype):
        method = "qr"  # in memory, the cut's allowance is within 100x of the Gram noise: the full SVD runs

    target = max(parse_bytes(dask.config.get("array.chunk-size")) // 2, P1 * dtype.itemsize)
    layout = _Layout(work, st, target)
    mat, sq_norm = _first_pass(layout, method)
    if not math.isfinite(sq_norm):
        raise ValueError("tensor contains NaN or Inf values (or overflows); clean or rescale it first")
    norm = math.sqrt(sq_norm)
    budget = Budget.make(tol, norm, n_cuts)

    def first(ctx: Context, label: str) -> tuple[Any, Any, np.ndarray]:
        V, ranks = _truncate_first(ctx, label, method, mat, k)
        R = int(ranks.max())
        need = 3 * R * n * dtype.itemsize
        memory = _physical_memory()
        if memory is not None and need > memory:
            raise ValueError(
                f"the first cut keeps rank {R}: the remainder ({R} x {n}) and the in-memory steps after it "
                f"need about {need / 2**30:.1f} GiB, more than this machine's {memory / 2**30:.1f} GiB; "
                "cap the first bond with rank= or raise tol"
            )
        check_size(R * n, f"the remainder after the first cut (rank {R})", "cap the first bond with rank= or raise tol")
        U = V[:, :R]
        C = _second_pass(layout, U, n)
        return U[None], C[None], ranks

    placeholder = np.broadcast_to(np.zeros((), dtype=dtype), st.factor_sizes)  # never read: shape and dtype only
    with using("numpy"):
        ctx = _StreamedContext(st, caps, budget, svd, tol, random_state, {}, first=first)
        factors = DECOMPOSITIONS[str(st.pattern)](placeholder, ctx)
    if budget.clipped:
        text = ", ".join(f"{lab!r} from {req} to {got}" for lab, (req, got) in budget.clipped.items())
        warnings.warn(
            f"requested rank above what the structure allows was clipped: {text} (structure {st.factor_shapes}, "
            f"pattern {st.pattern!r})", UserWarning, stacklevel=4)
    if scale != 1.0:  # each factor an equal share of the scale, as in memory
        share = scale ** (1.0 / len(factors))
        factors = [f * share for f in factors]
    sk = SeKronTensor(factors, st)
    if half:
        sk = _cast_factors(sk, x)
    if not return_error:
        return sk
    return sk, (math.sqrt(max(budget.spent, 0.0)) / norm if norm > 0 else 0.0)


def lazy_low_rank(structure: Structure | Sequence[Sequence[int]], rank: int, *, noise: float = 0.01,
                  chunks: Any = "auto", dtype: Any = "float32", seed: int = 0) -> Any:
    """A lazily generated dask array: a sum of ``rank`` Kronecker products plus noise.

    Entry ``i`` is ``sum_r prod_n g_{r,n}[i_n] + noise * e_i``, where each mode vector
    ``g_{r,n} = kron_k u_{r,k,n}`` is a Kronecker product of random vectors of the factor
    sizes ``structure.factor_shapes[k][n]`` (entries of mean square 1) and ``e`` is
    uniform noise of variance 1, so every unfolding of the rearranged tensor has rank ``rank`` plus
    the noise, of relative size about ``noise / sqrt(rank)``. Every chunk is computed on demand
    from ``seed`` and its position; nothing of the size of the tensor is ever held. Used
    by the tests and ``benchmarks/bench_dask.py``.
    """
    import dask.array as da

    st = _as_structure(structure)
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    vectors = []
    for n in range(st.order):
        g = np.ones((rank, 1))
        for fshape in st.factor_shapes:
            u = rng.standard_normal((rank, fshape[n]))
            u *= math.sqrt(fshape[n]) / np.linalg.norm(u, axis=1, keepdims=True)
            g = (g[:, :, None] * u[:, None, :]).reshape(rank, -1)
        vectors.append(g.astype(dt))

    def block(block_info: Any = None) -> np.ndarray:
        info = block_info[None]
        loc = info["array-location"]
        half = st.order // 2
        sides = []
        for modes in (range(half), range(half, st.order)):  # the rank-r sum as one (m1 x r) @ (r x m2) product
            side = np.ones((rank, 1), dtype=dt)
            for n in modes:
                start, stop = loc[n]
                side = (side[:, :, None] * vectors[n][:, None, start:stop]).reshape(rank, -1)
            sides.append(side)
        out = (sides[0].T @ sides[1]).reshape(tuple(stop - start for start, stop in loc))
        if noise:  # uniform noise of variance noise**2: cheaper to draw than a normal one
            e = np.random.default_rng([seed, *info["chunk-location"]]).random(out.shape, dtype=dt)
            e -= dt.type(0.5)
            e *= dt.type(noise * math.sqrt(12.0))
            out += e
        return out

    normalized = da.core.normalize_chunks(chunks, st.shape, dtype=dt)
    return da.map_blocks(block, chunks=normalized, dtype=dt, meta=np.empty((0,) * st.order, dtype=dt))
