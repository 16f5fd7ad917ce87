"""Benchmark: ``to_tt`` of a general SeKronTensor against densify-then-TT-SVD (tensorly).

Input: a random ``nested`` SeKronTensor of shape (64, 64, 64, 64) with S = 3 factors of
digit shape (4, 4, 4, 4) each (every mode split over all three factors: not
axis-aligned) and bond sizes (2, 2). Compared, in one process:

- ``sekron.conversions.to_tt(sk, rank=32)``: from the factors, W never formed;
- ``tensorly.decomposition.tensor_train(sk.to_tensor(), rank=32)``: densify, then TT-SVD;
- ``to_tt(sk)`` (exact, no rank), with ``--exact`` (slow: its middle TT rank is 4096).

Reported: wall time, peak traced memory (``tracemalloc``; numpy allocations are traced)
and relative Frobenius error against W. W is formed before tracing starts, only to
measure errors; the densify baseline forms its own copy inside the traced region.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_convert.py [--exact]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from tensorly.decomposition import tensor_train

import sekron
from sekron.conversions import to_tt


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, elapsed, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exact", action="store_true", help="also time the exact to_tt (minutes)")
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    st = sekron.Structure([(4, 4, 4, 4)] * 3, "nested")
    sk = sekron.random_sekron(st, [2, 2], random_state=0)
    W = sk.to_tensor()
    norm = np.linalg.norm(W)
    print(f"input: nested, shape {sk.shape}, factor shapes {st.factor_shapes}, rank {sk.rank}; "
          f"dense W = {W.nbytes / 2**20:.0f} MiB")
    rows = []
    tt, secs, peak = measure(lambda: to_tt(sk, rank=args.rank))
    rows.append((f"sekron to_tt(rank={args.rank})", secs, peak, np.linalg.norm(tt.to_tensor() - W) / norm, tt.rank))
    dense, secs, peak = measure(lambda: tensor_train(sk.to_tensor(), rank=[1, *[args.rank] * 3, 1]))
    rows.append((f"densify + tensorly tensor_train(rank={args.rank})", secs, peak,
                 np.linalg.norm(dense.to_tensor() - W) / norm, dense.rank))
    if args.exact:
        ex, secs, peak = measure(lambda: to_tt(sk))
        rows.append(("sekron to_tt (exact)", secs, peak, np.linalg.norm(ex.to_tensor() - W) / norm, ex.rank))
    print(f"{'method':48s} {'time s':>8s} {'peak MiB':>9s} {'rel. error':>11s}  TT ranks")
    for name, secs, peak, err, ranks in rows:
        print(f"{name:48s} {secs:8.2f} {peak:9.1f} {err:11.6f}  {ranks}")
    print(f"error ratio sekron / tensorly: {rows[0][3] / rows[1][3]:.5f}")


if __name__ == "__main__":
    main()
