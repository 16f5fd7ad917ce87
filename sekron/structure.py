"""The factorization structure of a SeKron tensor: factor-shape grid and bond pattern.

A structure of a tensor of shape ``(d_1, .., d_N)`` is a grid of ``S`` factor shapes
``a^(k) = (a_1^(k), .., a_N^(k))`` with ``prod_k a_n^(k) = d_n`` for every mode, plus
a bond pattern: for every factor, the string of bond labels it carries (one
character per bond). See docs/math.md §2 and §3.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorly as tl

from ._validation import check_choice, check_int, check_shape

Shape = tuple[int, ...]
FactorShapes = tuple[Shape, ...]
Labels = tuple[str, ...]

_CHAIN_LETTERS = "abcdefghijklmnopqrstuvwxy"
_RING_CLOSURE = "z"


def _nested(S: int) -> Labels:
    return (*tuple(_CHAIN_LETTERS[:k + 1] for k in range(S - 1)), _CHAIN_LETTERS[:S - 1])


def _chain(S: int) -> Labels:
    L = _CHAIN_LETTERS
    return ("a", *tuple(L[k - 1] + L[k] for k in range(1, S - 1)), L[S - 2])


def _ring(S: int) -> Labels:
    """The chain closed by the bond z between the last and the first factor."""
    chain = _chain(S)
    return (_RING_CLOSURE + chain[0], *chain[1:-1], chain[-1] + _RING_CLOSURE)


def _cp(S: int) -> Labels:
    return ("a",) * S


def _tucker(S: int) -> Labels:
    return (*tuple(_CHAIN_LETTERS[k] for k in range(S - 1)), _CHAIN_LETTERS[:S - 1])


#: the named bond patterns: name -> the labels of S >= 2 factors
PATTERN_LABELS: dict[str, Callable[[int], Labels]] = {
    "nested": _nested, "chain": _chain, "ring": _ring, "cp": _cp, "tucker": _tucker}
PATTERNS: tuple[str, ...] = tuple(PATTERN_LABELS)


def pattern_labels(pattern: str, n_factors: int) -> Labels:
    """Bond labels of a named pattern with ``n_factors`` factors.

    Examples
    --------
    >>> pattern_labels("nested", 4)
    ('a', 'ab', 'abc', 'abc')
    >>> pattern_labels("ring", 3)
    ('za', 'ab', 'bz')
    """
    check_choice(pattern, "pattern", PATTERNS)
    S = check_int(n_factors, "n_factors")
    if S > len(_CHAIN_LETTERS):
        raise ValueError(f"named patterns support at most {len(_CHAIN_LETTERS)} factors, got {S}")
    if S == 1:
        return ("",)
    return PATTERN_LABELS[pattern](S)


def count_params(labels: Sequence[str], factor_sizes: Sequence[int], size: Mapping[str, int]) -> int:
    """Stored entries of factors with bond ``labels`` and ``factor_sizes`` digits, at bond sizes ``size``.

    Factor k holds ``prod_{c in labels[k]} size[c] * factor_sizes[k]`` entries
    (:meth:`Structure.n_params` for a structure).
    """
    return sum(math.prod(size[c] for c in lab) * P for lab, P in zip(labels, factor_sizes))


def _check_labels(labels: Any, n_factors: int) -> Labels:
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"labels must be a sequence of strings, one per factor, got {labels!r}")
    labels = tuple(labels)
    if len(labels) != n_factors:
        raise ValueError(f"labels must have one entry per factor ({n_factors}), got {len(labels)}: {labels!r}")
    for k, lab in enumerate(labels):
        if not isinstance(lab, str):
            raise TypeError(f"labels[{k}] must be a string of bond labels, got {lab!r}")
        if len(set(lab)) != len(lab):
            raise ValueError(f"labels[{k}] = {lab!r} repeats a bond label; a factor carries each bond once")
        if any(c.isspace() for c in lab):
            raise ValueError(f"labels[{k}] = {lab!r} contains white space; use one character per bond")
    for c in sorted(set("".join(labels))):
        users = [k for k, lab in enumerate(labels) if c in lab]
        if len(users) < 2:
            raise ValueError(
                f"bond label {c!r} is used by only one factor (factor {users[0]}) in labels {labels!r}; "
                "every bond must join at least two factors"
            )
    return labels


def _check_grid(factor_shapes: Any) -> FactorShapes:
    if isinstance(factor_shapes, (str, bytes)) or not isinstance(factor_shapes, Sequence):
        raise TypeError(f"factor_shapes must be a sequence of shapes, one per factor, got {factor_shapes!r}")
    if len(factor_shapes) == 0:
        raise ValueError("factor_shapes must hold at least one factor shape, got an empty sequence")
    grid = tuple(check_shape(s, f"factor_shapes[{k}]") for k, s in enumerate(factor_shapes))
    orders = {len(s) for s in grid}
    if len(orders) != 1 or 0 in orders:
        raise ValueError(
            f"every factor shape must have the same number N >= 1 of modes, got {[len(s) for s in grid]} "
            f"in {grid}"
        )
    return grid


class Structure:
    """Factor-shape grid plus bond pattern of a SeKron tensor.

    Parameters
    ----------
    factor_shapes : sequence of S shapes of length N
        ``factor_shapes[k][n]`` is the size of factor ``k`` along mode ``n``; the tensor's
        mode ``n`` has size ``prod_k factor_shapes[k][n]``. Sizes of 1 are allowed.
    pattern : {"nested", "chain", "ring", "cp", "tucker"}, optional
        Named bond pattern; "nested" (the paper's SeKron) when neither ``pattern`` nor
        ``labels`` is given.
    labels : sequence of S strings, optional
        Custom bond graph: ``labels[k]`` lists the bonds of factor ``k``, one character
        each. Every bond must join at least two factors. Labels equal to a named
        pattern's labels give that pattern; otherwise ``pattern`` is None.

    Examples
    --------
    >>> st = Structure([(16, 16, 3, 1), (16, 16, 1, 3)], pattern="nested")
    >>> st.shape
    (256, 256, 3, 3)
    >>> st.labels
    ('a', 'a')
    >>> Structure([(2, 3), (2, 1), (1, 2)], labels=["ab", "a", "b"]).pattern is None
    True
    """

    __slots__ = ("_factor_shapes", "_labels", "_pattern")

    def __init__(self, factor_shapes: Sequence[Sequence[int]], pattern: str | None = None, *,
                 labels: Sequence[str] | None = None) -> None:
        grid = _check_grid(factor_shapes)
        S = len(grid)
        if labels is None:
            pattern = "nested" if pattern is None else check_choice(pattern, "pattern", PATTERNS)
            checked = pattern_labels(pattern, S)
        else:
            checked = _check_labels(labels, S)
            if pattern is not None:
                check_choice(pattern, "pattern", PATTERNS)
                if pattern_labels(pattern, S) != checked:
                    raise ValueError(
                        f"labels {checked!r} are not those of pattern {pattern!r} "
                        f"({pattern_labels(pattern, S)!r}); pass one of pattern or labels"
                    )
            else:
                named = [p for p in PATTERNS if S <= len(_CHAIN_LETTERS) and pattern_labels(p, S) == checked]
                pattern = named[0] if named else None
        self._factor_shapes: FactorShapes = grid
        self._labels: Labels = checked
        self._pattern: str | None = pattern

    # --- constructors of the classical formats (docs/math.md §5) -------------------
    @staticmethod
    def _axis_aligned(shape: Sequence[int]) -> FactorShapes:
        shape = check_shape(shape, "shape")
        N = len(shape)
        return tuple(tuple(shape[n] if n == k else 1 for n in range(N)) for k in range(N))

    @classmethod
    def tt(cls, shape: Sequence[int]) -> Structure:
        """Axis-aligned structure (factor k owns mode k) with the ``chain`` pattern: a TT.

        Examples
        --------
        >>> Structure.tt((4, 5, 6)).factor_shapes
        ((4, 1, 1), (1, 5, 1), (1, 1, 6))
        """
        return cls(cls._axis_aligned(shape), "chain")

    @classmethod
    def tr(cls, shape: Sequence[int]) -> Structure:
        """Axis-aligned structure with the ``ring`` pattern: a tensor ring.

        Examples
        --------
        >>> Structure.tr((4, 5, 6)).labels
        ('za', 'ab', 'bz')
        """
        return cls(cls._axis_aligned(shape), "ring")

    @classmethod
    def cp(cls, shape: Sequence[int]) -> Structure:
        """Axis-aligned structure with the ``cp`` pattern: a CP decomposition.

        Examples
        --------
        >>> Structure.cp((4, 5)).labels
        ('a', 'a')
        """
        return cls(cls._axis_aligned(shape), "cp")

    @classmethod
    def tucker(cls, shape: Sequence[int]) -> Structure:
        """N axis-aligned factors plus a core factor of digit shape (1, .., 1), ``tucker``.

        Examples
        --------
        >>> st = Structure.tucker((4, 5))
        >>> st.factor_shapes, st.labels
        (((4, 1), (1, 5), (1, 1)), ('a', 'b', 'ab'))
        """
        grid = cls._axis_aligned(shape)
        return cls((*grid, (1,) * len(grid)), "tucker")

    # --- properties ---------------------------------------------------------------
    @property
    def factor_shapes(self) -> FactorShapes:
        """One shape tuple per factor: S tuples of length N."""
        return self._factor_shapes

    @property
    def labels(self) -> Labels:
        """Per-factor bond labels, one string per factor."""
        return self._labels

    @property
    def pattern(self) -> str | None:
        """The named bond pattern, or None for custom labels."""
        return self._pattern

    @property
    def n_factors(self) -> int:
        """S, the number of factors."""
        return len(self._factor_shapes)

    @property
    def order(self) -> int:
        """N, the order of the tensor."""
        return len(self._factor_shapes[0])

    @property
    def shape(self) -> Shape:
        """Shape of the full tensor: the per-mode product of the factor shapes."""
        return tuple(math.prod(col) for col in zip(*self._factor_shapes))

    @property
    def factor_sizes(self) -> Shape:
        """P_k, the number of entries of factor k's digit block."""
        return tuple(math.prod(s) for s in self._factor_shapes)

    @property
    def bond_labels(self) -> tuple[str, ...]:
        """Distinct bond labels in order of first appearance (the 'pattern order')."""
        seen: dict[str, None] = {}
        for lab in self._labels:
            for c in lab:
                seen.setdefault(c, None)
        return tuple(seen)

    @property
    def is_axis_aligned(self) -> bool:
        """True when every factor owns at most one mode (a classical TT/TR/CP/Tucker layout)."""
        return all(sum(a > 1 for a in s) <= 1 for s in self._factor_shapes)

    def with_pattern(self, pattern: str) -> Structure:
        """The same factor-shape grid with another named pattern.

        Examples
        --------
        >>> Structure([(2, 2), (3, 3), (1, 2)]).with_pattern("chain").labels
        ('a', 'ab', 'b')
        """
        return Structure(self._factor_shapes, pattern)

    def parse_rank(self, rank: Any, name: str = "rank") -> dict[str, int | None]:
        """Read a rank specification as ``{bond label: cap or None}``.

        ``rank`` is None (no cap), an int (the same cap on every bond), a sequence with
        one int per bond label in :attr:`bond_labels` order, or a mapping
        ``{label: size}`` (missing labels are uncapped).

        Examples
        --------
        >>> Structure([(2, 2), (2, 2), (2, 2)], "chain").parse_rank([3, 2])
        {'a': 3, 'b': 2}
        """
        bonds = self.bond_labels
        if rank is None:
            return {c: None for c in bonds}
        if isinstance(rank, Mapping):
            unknown = [k for k in rank if k not in bonds]
            if unknown:
                raise ValueError(f"{name} names bond labels {unknown} that {self.labels!r} does not have; "
                                 f"valid labels: {list(bonds)}")
            return {c: (None if rank.get(c) is None else check_int(rank[c], f"{name}[{c!r}]")) for c in bonds}
        if isinstance(rank, Sequence) and not isinstance(rank, (str, bytes)):
            if len(rank) != len(bonds):
                raise ValueError(f"{name} must have one entry per bond label {list(bonds)} "
                                 f"({len(bonds)}), got {len(rank)}: {list(rank)!r}")
            return {c: check_int(r, f"{name}[{i}]") for i, (c, r) in enumerate(zip(bonds, rank))}
        return {c: check_int(rank, name) for c in bonds}

    def n_params(self, rank: Any) -> int:
        """Parameters (stored entries of all factors) at the bond sizes ``rank``.

        ``rank`` gives every bond a size, in any form that :meth:`parse_rank` reads.

        Examples
        --------
        >>> Structure([(4, 4), (3, 3)]).n_params(2)  # 2 * 16 + 2 * 9
        50
        """
        return count_params(self._labels, self.factor_sizes, self._bond_sizes(rank))

    def _bond_sizes(self, rank: Any) -> dict[str, int]:
        """:meth:`parse_rank` where every bond must get a size."""
        caps = self.parse_rank(rank)
        missing = [c for c, r in caps.items() if r is None]
        if missing:
            raise ValueError(f"rank must give a size for every bond; bonds {missing} have none (got rank={rank!r})")
        return {c: int(r) for c, r in caps.items() if r is not None}

    # --- rearrangement (docs/math.md §2) -------------------------------------------
    def _digit_shape(self) -> Shape:
        # mode-major digits: (a_1^(1)..a_1^(S), a_2^(1)..a_2^(S), ..)
        return tuple(s[n] for n in range(self.order) for s in self._factor_shapes)

    def _to_factor_major(self) -> tuple[int, ...]:
        S, N = self.n_factors, self.order
        return tuple(n * S + k for k in range(S) for n in range(N))

    def rearrange(self, tensor: Any) -> Any:
        """W of shape ``self.shape`` to the order-S tensor T of shape ``factor_sizes``.

        A permutation of entries: it preserves the Frobenius norm and is undone by
        :meth:`unrearrange`.

        Examples
        --------
        >>> import numpy as np
        >>> st = Structure([(2, 3), (2, 1)])
        >>> T = st.rearrange(np.arange(12.0).reshape(4, 3))
        >>> T.shape
        (6, 2)
        >>> bool((st.unrearrange(T) == np.arange(12.0).reshape(4, 3)).all())
        True
        """
        if isinstance(tensor, np.ndarray):  # the same reshape / transpose, without a backend switch
            if tuple(tensor.shape) != self.shape:
                return self._rearrange(tensor)  # raises
            return tensor.reshape(self._digit_shape()).transpose(self._to_factor_major()).reshape(self.factor_sizes)
        from ._backend import infer_backend, using

        with using(infer_backend(tensor)):
            return self._rearrange(tensor)

    def _rearrange(self, tensor: Any) -> Any:
        """:meth:`rearrange` under the tensorly backend already set (the caller inferred it once)."""
        shape = tuple(tensor.shape)
        if shape != self.shape:
            raise ValueError(f"tensor of shape {shape} does not match structure shape {self.shape} of {self!r}")
        digits = tl.reshape(tensor, self._digit_shape())
        digits = tl.transpose(digits, self._to_factor_major())
        return tl.reshape(digits, self.factor_sizes)

    def unrearrange(self, tensor: Any) -> Any:
        """The inverse of :meth:`rearrange`: T of shape ``factor_sizes`` back to W.

        Examples
        --------
        >>> import numpy as np
        >>> Structure([(2, 3), (2, 1)]).unrearrange(np.zeros((6, 2))).shape
        (4, 3)
        """
        from ._backend import infer_backend, using

        with using(infer_backend(tensor)):
            return self._unrearrange(tensor)

    def _unrearrange(self, tensor: Any) -> Any:
        """:meth:`unrearrange` under the tensorly backend already set (the caller inferred it once)."""
        shape = tuple(tensor.shape)
        if math.prod(shape) != math.prod(self.factor_sizes) or (
            len(shape) == self.n_factors and shape != self.factor_sizes
        ):
            raise ValueError(
                f"tensor of shape {shape} does not match the rearranged shape {self.factor_sizes} of {self!r}"
            )
        factor_major = tuple(s[n] for s in self._factor_shapes for n in range(self.order))
        inverse = tuple(sorted(range(len(factor_major)), key=self._to_factor_major().__getitem__))
        digits = tl.reshape(tensor, factor_major)
        digits = tl.transpose(digits, inverse)
        return tl.reshape(digits, self.shape)

    # --- serialisation, comparison, display ------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, inverse of :meth:`from_dict`."""
        return {"factor_shapes": [list(s) for s in self._factor_shapes], "labels": list(self._labels),
                "pattern": self._pattern}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Structure:
        """Rebuild a structure from :meth:`to_dict` output."""
        if not isinstance(data, Mapping) or "factor_shapes" not in data or "labels" not in data:
            raise ValueError(f"a structure description needs 'factor_shapes' and 'labels', got {data!r}")
        return cls(data["factor_shapes"], data.get("pattern"), labels=data["labels"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Structure):
            return NotImplemented
        return self._factor_shapes == other._factor_shapes and self._labels == other._labels

    def __hash__(self) -> int:
        return hash((self._factor_shapes, self._labels))

    def __repr__(self) -> str:
        head = f"Structure(shape={self.shape}, pattern={self._pattern!r}, S={self.n_factors}"
        width = max(len(str(s)) for s in self._factor_shapes)
        rows = [
            f"  factor {k}: {str(s).ljust(width)}  bonds {lab!r}"
            for k, (s, lab) in enumerate(zip(self._factor_shapes, self._labels))
        ]
        return "\n".join([head, *rows]) + ")"


#: the most grids :func:`structures` lists; more raise a ValueError that gives the count
MAX_STRUCTURES = 1_000_000


def _divisors(d: int) -> list[int]:
    """The divisors of ``d`` in increasing order, in O(sqrt(d)) steps."""
    small, large = [], []
    i = 1
    while i * i <= d:
        if d % i == 0:
            small.append(i)
            if i * i != d:
                large.append(d // i)
        i += 1
    return small + large[::-1]


def _prime_exponents(d: int) -> list[int]:
    exps, p = [], 2
    while p * p <= d:
        e = 0
        while d % p == 0:
            d //= p
            e += 1
        if e:
            exps.append(e)
        p += 1
    if d > 1:
        exps.append(1)
    return exps


def _count_factorizations(d: int, parts: int) -> int:
    """``c_S(d) = prod_p binom(e_p + S - 1, S - 1)``: ordered factorizations of ``d`` into ``parts`` factors."""
    return math.prod(math.comb(e + parts - 1, parts - 1) for e in _prime_exponents(d))


def _ordered_factorizations(d: int, parts: int) -> Iterator[tuple[int, ...]]:
    """All ordered tuples of ``parts`` positive integers whose product is ``d``, lexicographic."""
    if parts == 1:
        yield (d,)
        return
    for first in _divisors(d):
        for rest in _ordered_factorizations(d // first, parts - 1):
            yield (first, *rest)


def structures(shape: Sequence[int], n_factors: int, pattern: str = "nested", *,
               exclude_trivial: bool = False) -> list[Structure]:
    """Every factor-shape grid of ``shape`` with ``n_factors`` factors.

    For each mode ``n`` the sizes ``(a_n^(1), .., a_n^(S))`` run over all ordered
    factorizations of ``d_n`` into S positive integers (sizes of 1 allowed). The grids are
    the Cartesian product over modes, so there are ``prod_n c_S(d_n)`` of them, where
    ``c_S(d) = prod_p binom(e_p + S - 1, S - 1)`` for ``d = prod_p p^e_p``. They are listed
    in lexicographic order of ``(mode 1 sizes, mode 2 sizes, ..)``, each mode's sizes in
    factor order.

    Parameters
    ----------
    shape : sequence of int
        Shape of the tensor.
    n_factors : int
        S, the number of factors.
    pattern : str
        Named bond pattern given to every structure.
    exclude_trivial : bool
        Drop grids in which some factor has all sizes 1 (such a factor only scales).

    Raises
    ------
    ValueError
        When there are more than ``MAX_STRUCTURES`` grids (counted first, with the
        formula above, before any is built).

    Examples
    --------
    >>> len(structures((4, 3), 2))
    6
    >>> structures((4, 3), 2)[0].factor_shapes
    ((1, 1), (4, 3))
    """
    shape = check_shape(shape, "shape")
    S = check_int(n_factors, "n_factors")
    check_choice(pattern, "pattern", PATTERNS)
    count = math.prod(_count_factorizations(d, S) for d in shape)
    if count > MAX_STRUCTURES:
        raise ValueError(
            f"shape {shape} has {count:,} grids of {S} factors, more than structures() lists "
            f"(MAX_STRUCTURES = {MAX_STRUCTURES:,}); use fewer factors, or sekron.search, which scores "
            "structures without listing them all")
    per_mode = [list(_ordered_factorizations(d, S)) for d in shape]
    out = []
    for combo in itertools.product(*per_mode):
        grid = tuple(tuple(combo[n][k] for n in range(len(shape))) for k in range(S))
        if exclude_trivial and any(math.prod(s) == 1 for s in grid):
            continue
        out.append(Structure(grid, pattern))
    return out
