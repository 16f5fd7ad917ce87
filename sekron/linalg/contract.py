"""Pairwise tensor contraction through batched matmul (einsum without its slow paths).

``np.einsum`` without ``optimize`` runs its own loops rather than BLAS, and backends
cap einsum at 52 letters. These helpers contract two operands at a time with
transposes, reshapes and one batched ``tl.matmul``; labels are arbitrary characters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def _pair_key(ops: list[tuple[str, Any]], i: int, j: int, spec_out: str,
              size: dict[str, int]) -> tuple[bool, int, str]:
    """Greedy cost of contracting operands i and j: (outer product?, result size) and the result spec."""
    needed = set(spec_out).union(*(s for t, (s, _) in enumerate(ops) if t not in (i, j)))
    si, sj = ops[i][0], ops[j][0]
    out = "".join(dict.fromkeys(c for c in si + sj if c in needed))
    return not (set(si) & set(sj)), math.prod(size[c] for c in out), out


def contract(operands: Sequence[tuple[str, Any]], spec_out: str) -> Any:
    """Contract ``operands`` (spec, array) into ``spec_out``, greedily pair by pair.

    Each step contracts the pair of operands that share a label and give the smallest
    result (outer products only when nothing else is left); labels needed by no other
    operand and not by the output are summed at once. The greedy order keeps the
    intermediates small, e.g. a nested network is contracted from its deep end.
    """
    ops = list(operands)
    size: dict[str, int] = {}
    for spec, x in ops:
        size.update(_sizes(spec, x))
    while len(ops) > 1:
        best = None
        for i in range(len(ops)):
            for j in range(i + 1, len(ops)):
                outer, cells, out = _pair_key(ops, i, j, spec_out, size)
                if best is None or (outer, cells) < best[0]:
                    best = ((outer, cells), i, j, out)
        assert best is not None
        _, i, j, out = best
        (si, a), (sj, b) = ops[i], ops[j]
        ops[i] = (out, einsum2(si, a, sj, b, out))
        del ops[j]
    spec, acc = ops[0]
    spec, acc = _sum_out(spec, acc, set(spec_out))
    return _permute(acc, spec, spec_out)
