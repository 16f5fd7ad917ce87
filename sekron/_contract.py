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


def contract(operands: Sequence[tuple[str, Any]], spec_out: str) -> Any:
    """Contract ``operands`` (spec, array) left to right into ``spec_out``.

    After each step only the labels still needed (by a later operand or the output)
    are kept; the others are summed.
    """
    spec, acc = operands[0]
    for k in range(1, len(operands)):
        spec_k, x = operands[k]
        later = set(spec_out).union(*(s for s, _ in operands[k + 1:]))
        out = "".join(dict.fromkeys(c for c in spec + spec_k if c in later))
        acc = einsum2(spec, acc, spec_k, x, out)
        spec = out
    spec, acc = _sum_out(spec, acc, set(spec_out))
    return _permute(acc, spec, spec_out)
