"""Benchmark: computing in SeKron form, side by side with the reference libraries.

1. ``sekron.cross`` against ``teneva.cross`` (ALS-cross with rectangular maxvol) and
   ``tntorch.cross`` (DMRG-style cross) on the same functions and the same TT structure:
   a 1024^3 grid (2^30 entries) as 10 factors of digit shape (2, 2, 2), i.e. a TT of 10
   cores of size 8 over the rearranged index space. All three receive the same function
   of T's multi-indices (sekron's own index map) and are asked for 1e-6. Reported:
   distinct function evaluations, wall time, relative error on 10^4 held-out random
   entries (the same for all), and TT ranks. teneva runs without its cache (with it, it
   counts fewer evaluations but ran far slower here), so its count includes repeats.
2. ``a @ x`` of a Kronecker-rank-2 operator (``cp`` pattern, W = A1 kron .. kron AS +
   B1 kron .. kron BS) against dense matmul (numpy, W formed beforehand) and PyKronecker
   (a sum of two ``KroneckerProduct`` operators), for n = 4096 and 8192 and two factor
   grids (S factors of 2 x 2, and 2 factors of sqrt(n) x sqrt(n)). Median of repeated calls.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_algebra.py [--quick] [--no-teneva] [--no-tntorch]

``--quick`` runs the cross on a 64^3 grid only and the product at n = 4096 (smoke test).
Threads are pinned to one (``threadpoolctl``) so that the ratios compare algorithms, not cores.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

import sekron
from sekron import SeKronTensor, Structure
from sekron.algebra.cross_approximation import _Sampler, _tt_at

FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "1/(1+|x|^2)": lambda x: 1.0 / (1.0 + np.sum(x ** 2, axis=1)),
    "exp(-|x|)cos(xyz)": lambda x: np.exp(-np.sqrt(np.sum(x ** 2, axis=1))) * np.cos(x[:, 0] * x[:, 1] * x[:, 2]),
}


def _rel(y: np.ndarray, yhat: np.ndarray) -> float:
    return float(np.linalg.norm(y - yhat) / np.linalg.norm(y))


def bench_cross(levels: int, tol: float, use_teneva: bool, use_tntorch: bool) -> Iterator[tuple[Any, ...]]:
    n = 2 ** levels
    st = Structure([(2, 2, 2)] * levels, "chain")
    h = 1.0 / (n - 1)
    rng = np.random.default_rng(123)
    sampler = _Sampler(lambda i: i, st, None)
    T_test = np.stack([rng.integers(0, 8, size=10_000) for _ in range(levels)], axis=1)
    for name, f in FUNCTIONS.items():
        def on_w(idx: np.ndarray, f: Callable[[np.ndarray], np.ndarray] = f) -> np.ndarray:
            return f(idx * h)

        def on_t(T: np.ndarray, on_w: Callable[[np.ndarray], np.ndarray] = on_w) -> np.ndarray:
            return on_w(sampler.to_w(np.asarray(T, dtype=np.int64)))

        y_test = on_t(T_test)
        start = time.perf_counter()
        sk, info = sekron.cross(on_w, st, tol=tol, random_state=0, return_info=True)
        secs = time.perf_counter() - start
        cores = [np.asarray(f)[None] if k == 0 else np.asarray(f) for k, f in enumerate(sk.factors)]
        cores = [np.transpose(c.reshape(c.shape[0], c.shape[1] if k < levels - 1 else 1, -1)
                              if k < levels - 1 else c.reshape(c.shape[0], 1, -1), (0, 2, 1))
                 for k, c in enumerate(cores)]
        yield ((name, "sekron.cross", info["evals"], secs, _rel(y_test, _tt_at(cores, T_test)),
                     max(sk.rank.values())))
        if use_teneva:
            import teneva

            t_info: dict[str, Any] = {}
            start = time.perf_counter()
            Y = teneva.cross(on_t, teneva.rand([8] * levels, 1, seed=0), m=int(2e6), e=tol, dr_max=2, info=t_info)
            Y = teneva.truncate(Y, tol)
            secs = time.perf_counter() - start
            yield ((name, "teneva.cross (dr_max=2)", t_info["m"], secs,
                         _rel(y_test, teneva.get_many(Y, T_test)), max(teneva.props.ranks(Y))))
        if use_tntorch:
            import tntorch
            import torch

            count = [0]

            def on_t_torch(T: Any, on_t: Callable[[np.ndarray], np.ndarray] = on_t, count: list[int] = count) -> Any:
                count[0] += len(T)
                return torch.as_tensor(on_t(T.numpy().astype(np.int64)))

            domain = [torch.arange(8) for _ in range(levels)]
            start = time.perf_counter()
            t = tntorch.cross(on_t_torch, domain, function_arg="matrix", eps=tol, verbose=False, max_iter=25,
                              val_size=0)
            secs = time.perf_counter() - start
            tt_cores = [c.detach().numpy() for c in t.cores]
            yield ((name, "tntorch.cross", count[0], secs, _rel(y_test, _tt_at(tt_cores, T_test)),
                         max(max(c.shape[0], c.shape[2]) for c in tt_cores)))


def _median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_matmul(sizes: list[int], use_pykronecker: bool) -> list[tuple[Any, ...]]:
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        levels = n.bit_length() - 1
        half = 2 ** (levels // 2)
        for grid in ([(2, 2)] * levels, [(half, half), (n // half, n // half)]):
            st = Structure(grid, "cp")
            sk = SeKronTensor([rng.standard_normal((2, a, b)) for a, b in grid], st)
            x = rng.standard_normal(n)
            W = sk.to_tensor()
            assert np.allclose(sk @ x, W @ x)
            t_sk = _median_time(lambda sk=sk, x=x: sk @ x, 20)
            t_dense = _median_time(lambda W=W, x=x: W @ x, 5)
            t_pk = float("nan")
            if use_pykronecker:
                import jax

                jax.config.update("jax_enable_x64", True)
                from pykronecker import KroneckerProduct

                ops = [KroneckerProduct([np.asarray(f[r]) for f in sk.factors]) for r in range(2)]
                op = ops[0] + ops[1]
                assert np.linalg.norm(np.asarray(op @ x) - W @ x) <= 1e-8 * np.linalg.norm(W @ x)
                t_pk = _median_time(lambda op=op, x=x: op @ x, 20)
            same = len(set(grid)) == 1
            label = f"{len(grid)} x ({grid[0][0]}x{grid[0][1]})" if same else " . ".join(f"{a}x{b}" for a, b in grid)
            rows.append((n, label, t_sk, t_dense, t_pk, t_dense / t_sk, t_pk / t_sk))
            del W
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-teneva", action="store_true")
    parser.add_argument("--no-tntorch", action="store_true")
    parser.add_argument("--no-pykronecker", action="store_true")
    args = parser.parse_args()
    with threadpool_limits(1):
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:  # pragma: no cover
            pass
        levels = 6 if args.quick else 10
        print(f"cross on a {2 ** levels}^3 grid, structure: {levels} factors of (2, 2, 2) (chain), tol 1e-6")
        print(f"{'function':<20} {'method':<32} {'evals':>9} {'seconds':>8} {'held-out err':>13} {'max rank':>8}")
        for r in bench_cross(levels, 1e-6, not args.no_teneva, not args.no_tntorch):
            print(f"{r[0]:<20} {r[1]:<32} {r[2]:>9} {r[3]:>8.2f} {r[4]:>13.2e} {r[5]:>8}", flush=True)
        sizes = [4096] if args.quick else [4096, 8192]
        print("\na @ x, Kronecker-rank-2 operator (cp pattern), float64, median seconds")
        print(f"{'n':>6} {'grid':<22} {'sekron':>10} {'dense':>10} {'pykronecker':>12} {'dense/sekron':>13} "
              f"{'pykron/sekron':>14}")
        for r in bench_matmul(sizes, not args.no_pykronecker):
            print(f"{r[0]:>6} {r[1]:<22} {r[2]:>10.2e} {r[3]:>10.2e} {r[4]:>12.2e} {r[5]:>13.1f} {r[6]:>14.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
