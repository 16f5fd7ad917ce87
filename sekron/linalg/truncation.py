"""Rank selection from singular values: rank caps, error budgets and clipping records."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorly as tl


@dataclass
class Budget:
    """Squared absolute error still allowed, spread over the cuts not yet made.

    Each cut may spend ``left / cuts_left``; what it leaves unspent carries over, so the
    total spent never exceeds ``(tol * norm)**2``.
    """

    left: float
    cuts_left: int
    spent: float = 0.0
    clipped: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def make(cls, tol: float | None, norm: float, n_cuts: int) -> Budget:
        total = math.inf if tol is None else (tol * norm) ** 2
        return cls(left=total, cuts_left=max(n_cuts, 1))

    def allowance(self) -> float:
        return self.left / self.cuts_left

    def record(self, used: float) -> None:
        self.spent += used
        if math.isfinite(self.left):
            self.left = max(self.left - used, 0.0)
        self.cuts_left = max(self.cuts_left - 1, 1)


def choose_ranks(s: Any, cap: int | None, budget: Budget, label: str) -> np.ndarray:
    """Per-branch ranks for singular values ``s`` of shape ``(B, k)``.

    The cap bounds every branch; within it, the smallest last-kept squared singular
    value over all branches is discarded while the total fits in the cut's allowance,
    so every branch drops a suffix. At least one term is kept overall. The spent error is recorded in ``budget``.
    """
    s2 = np.abs(tl.to_numpy(s)).astype(np.float64) ** 2
    B, k = s2.shape
    if cap is not None and cap > k:
        prev = budget.clipped.get(label)
        budget.clipped[label] = (cap, max(k, prev[1] if prev else 0))
    r_max = k if cap is None else min(cap, k)
    ranks = np.full(B, r_max, dtype=np.int64)
    used = float(s2[:, r_max:].sum())
    allowance = budget.allowance() - used
    if math.isfinite(allowance) and allowance > 0 and r_max > 0:
        # k-way merge over the branches: always drop the smallest next-to-last term
        heap = [(float(s2[b, r_max - 1]), b) for b in range(B)]
        heapq.heapify(heap)
        dropped, n_drop = 0.0, 0
        while heap and n_drop < B * r_max - 1:
            value, b = heapq.heappop(heap)
            if dropped + value > allowance:
                break
            dropped += value
            n_drop += 1
            ranks[b] -= 1
            if ranks[b] > 0:
                heapq.heappush(heap, (float(s2[b, ranks[b] - 1]), b))
        used += dropped
    ranks = np.maximum(ranks, 0)
    if ranks.max() == 0:
        ranks[int(np.argmax(s2[:, 0]))] = 1
    budget.record(used)
    return ranks


def smallest_rank(passes: Callable[[int], bool], top: int) -> int | None:
    """Smallest rank ``r`` in 1..top with ``passes(r)`` (assumed monotone): doubling from 1, then bisection.

    Returns None when even ``top`` does not pass. Each rank is tried at most once.

    Examples
    --------
    >>> tried = []
    >>> smallest_rank(lambda r: tried.append(r) or r >= 5, 20), tried
    (5, [1, 2, 4, 8, 6, 5])
    """
    lo, r = 0, 1
    while not passes(r):
        if r >= top:
            return None
        lo, r = r, min(2 * r, top)
    hi = r
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def branch_mask(ranks: np.ndarray, width: int, like: Any) -> Any:
    """0/1 tensor of shape ``(B, width)``: entry (b, r) is 1 when r < ranks[b]."""
    mask = (np.arange(width)[None, :] < ranks[:, None]).astype(np.float64)
    ctx = tl.context(like)
    if "complex" in str(ctx.get("dtype", "")):
        mask = mask.astype(np.complex128)
    return tl.tensor(mask, **{k: v for k, v in ctx.items() if k != "requires_grad"})
