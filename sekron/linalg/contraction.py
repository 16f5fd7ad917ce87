"""Pairwise tensor contraction through batched matmul (einsum without its slow paths).

``np.einsum`` without ``optimize`` runs its own loops rather than BLAS, and backends
cap einsum at 52 letters. These helpers contract two operands at a time with
transposes, reshapes and one batched ``tl.matmul``; labels are arbitrary characters.
Internal axes get their labels from :class:`LabelAllocator`, which never hands out a
label that a caller's labels (e.g. a user's bond labels) already use.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import tensorly as tl


def _sizes(spec: str, x: Any) -> dict[str, int]:
    shape = tuple(x.shape)
    if len(spec) != len(shape):
        raise ValueError(f"internal: spec {spec!r} does not match shape {shape}")
    return dict(zip(spec, shape))


def _sum_out(spec: str, x: Any, keep: set[str]) -> tuple[str, Any]:
    drop = tuple(i for i, c in enumerate(spec) if c not in keep)
    if not drop:
        return spec, x
    return "".join(c for c in spec if c in keep), tl.sum(x, axis=drop)


def _permute(x: Any, spec: str, order: str) -> Any:
    if spec == order:
        return x
    return tl.transpose(x, tuple(spec.index(c) for c in order))


def einsum2(spec_a: str, a: Any, spec_b: str, b: Any, spec_out: str) -> Any:
    """``einsum(f"{spec_a},{spec_b}->{spec_out}", a, b)`` through one batched matmul."""
    spec_a, a = _sum_out(spec_a, a, set(spec_b) | set(spec_out))
    spec_b, b = _sum_out(spec_b, b, set(spec_a) | set(spec_out))
    size = {**_sizes(spec_a, a), **_sizes(spec_b, b)}
    batch = "".join(c for c in spec_out if c in spec_a and c in spec_b)
    contr = "".join(c for c in spec_a if c in spec_b and c not in spec_out)
    free_a = "".join(c for c in spec_a if c not in spec_b)
    free_b = "".join(c for c in spec_b if c not in spec_a)

    def n(labels: str) -> int:
        return math.prod(size[c] for c in labels)

    A = tl.reshape(_permute(a, spec_a, batch + free_a + contr), (n(batch), n(free_a), n(contr)))
    B = tl.reshape(_permute(b, spec_b, batch + contr + free_b), (n(batch), n(contr), n(free_b)))
    C = tl.reshape(tl.matmul(A, B), tuple(size[c] for c in batch + free_a + free_b))
    return _permute(C, batch + free_a + free_b, spec_out)


class LabelAllocator:
    """Fresh einsum labels for internal axes: private-use characters that no taken label uses.

    ``new()`` returns a label never returned before; ``alloc(*key)`` returns the same label
    for the same key. Labels run through the private-use area U+E000..U+F8FF, then the
    supplementary private-use planes, skipping every character of ``taken``.

    Examples
    --------
    >>> lab = LabelAllocator(taken=["ab", "\ue000"])
    >>> lab.new() == "\ue001", lab("x", 1) == lab("x", 1), lab("x", 1) != lab("x", 2)
    (True, True, True)
    """

    _RANGES = ((0xE000, 0xF8FF), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD))

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self._taken = set("".join(taken))
        self._codes = (c for lo, hi in self._RANGES for c in range(lo, hi + 1))
        self._named: dict[Any, str] = {}

    def new(self) -> str:
        for code in self._codes:
            c = chr(code)
            if c not in self._taken:
                return c
        raise ValueError("internal: out of private-use characters for contraction labels")

    def many(self, n: int) -> str:
        """``n`` new labels as one string."""
        return "".join(self.new() for _ in range(n))

    def __call__(self, *key: Any) -> str:
        if key not in self._named:
            self._named[key] = self.new()
        return self._named[key]


Step = tuple[int, int, str]  # contract operands i and j (i < j) into spec; the result replaces i


@functools.lru_cache(maxsize=4096)
def greedy_order(specs: tuple[str, ...], spec_out: str, sizes: tuple[tuple[str, int], ...]) -> tuple[Step, ...]:
    """Pairwise contraction order of operands with ``specs`` into ``spec_out``, chosen greedily.

    Each step contracts the pair that shares a label and gives the smallest result (outer
    products only when nothing else is left). A step's result spec keeps the labels that
    another operand or the output still needs; the last step's is ``spec_out``'s labels in
    the order they appear. ``sizes`` maps every label to its size.
    """
    size = dict(sizes)
    ops = list(specs)
    steps: list[Step] = []
    while len(ops) > 1:
        best: tuple[tuple[bool, int], int, int, str] | None = None
        for i in range(len(ops)):
            for j in range(i + 1, len(ops)):
                needed = set(spec_out).union(*(o for t, o in enumerate(ops) if t not in (i, j)))
                out = "".join(dict.fromkeys(c for c in ops[i] + ops[j] if c in needed))
                key = (not set(ops[i]) & set(ops[j]), math.prod(size[c] for c in out))
                if best is None or key < best[0]:
                    best = (key, i, j, out)
        assert best is not None
        _, i, j, out = best
        steps.append((i, j, out))
        ops[i] = out
        del ops[j]
    return tuple(steps)


def contract(operands: Sequence[tuple[str, Any]], spec_out: str) -> Any:
    """Contract ``operands`` (spec, array) into ``spec_out``, greedily pair by pair.

    The order is :func:`greedy_order`'s; labels needed by no other operand and not by the
    output are summed at once. The greedy order keeps the intermediates small, e.g. a
    nested network is contracted from its deep end.
    """
    ops = list(operands)
    size: dict[str, int] = {}
    for spec, x in ops:
        size.update(_sizes(spec, x))
    for i, j, out in greedy_order(tuple(spec for spec, _ in ops), spec_out, tuple(sorted(size.items()))):
        (si, a), (sj, b) = ops[i], ops[j]
        ops[i] = (out, einsum2(si, a, sj, b, out))
        del ops[j]
    spec, acc = ops[0]
    spec, acc = _sum_out(spec, acc, set(spec_out))
    return _permute(acc, spec, spec_out)
