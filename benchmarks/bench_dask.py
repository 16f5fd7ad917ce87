"""Benchmark of ``sekron.decompose`` on dask arrays: throughput against numpy, and peak memory out of core.

Run from the repository root::

    python benchmarks/bench_dask.py                  # throughput on 1 GiB, lazy 2 GiB run
    python benchmarks/bench_dask.py --lazy 2GiB 16GiB  # also the 16 GiB (16,)^8 float32 run (minutes)
    python benchmarks/bench_dask.py --quick          # small smoke run

Throughput: one float32 tensor held in memory, decomposed by ``decompose(W)`` (numpy,
BLAS on ``THREADS`` threads) and by ``decompose(da.from_array(W))`` (dask's threaded
scheduler with ``THREADS`` workers, BLAS on one thread each), side by side in one
process, best of ``--repeat``. Ratio = in-memory time / dask time (1.0 = as fast).

Out of core: a tensor generated lazily chunk by chunk (:func:`sekron._dask.lazy_low_rank`,
rank 3 plus 1% noise, ``tol=0.05``) is decomposed in a fresh subprocess; its peak RSS
(``VmHWM`` of ``/proc/self/status``, Linux) is reported with its growth over the peak before the call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

THREADS = int(os.environ.get("SEKRON_BENCH_THREADS", "2"))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sekron  # noqa: E402
from sekron._dask import lazy_low_rank  # noqa: E402

# name -> (factor shapes, chunks, dask array.chunk-size); every chunk lies inside one digit of factor 1
LAZY = {
    "256MiB": ([(2,) * 6, (16, 16, 16, 16, 4, 4)], (1, 1, 16, 16, 8, 8), "128MiB"),
    "2GiB": ([(2,) * 7, (16, 8, 8, 8, 8, 8, 8)], (1, 1, 1, 8, 16, 16, 16), "128MiB"),
    "16GiB": ([(2,) * 8, (8,) * 8], (1, 1, 1, 8, 16, 16, 16, 16), "256MiB"),
}
THROUGHPUT = {  # name -> (factor shapes, chunks)
    "16MiB": ([(2,) * 6, (4, 4, 8, 8, 8, 8)], (1, 1, 4, 16, 16, 16)),
    "1GiB": ([(2,) * 7, (8,) * 7], (1, 1, 1, 16, 16, 16, 16)),
}


def throughput(name: str, repeat: int) -> dict[str, object]:
    import dask
    import dask.array as da
    from threadpoolctl import threadpool_limits

    fs, chunks = THROUGHPUT[name]
    st = sekron.Structure(fs)
    W = lazy_low_rank(st, 3, noise=0.01, chunks=chunks, dtype="float32").compute(scheduler="threads")
    x = da.from_array(W, chunks=chunks)
    times: dict[str, float] = {"numpy": np.inf, "dask": np.inf}
    out = {}
    for _ in range(repeat):
        with threadpool_limits(THREADS):
            t = time.perf_counter()
            a, ea = sekron.decompose(W, st, tol=0.05, return_error=True)
            times["numpy"] = min(times["numpy"], time.perf_counter() - t)
        with threadpool_limits(1), dask.config.set(scheduler="threads", num_workers=THREADS):
            t = time.perf_counter()
            b, eb = sekron.decompose(x, st, tol=0.05, return_error=True)
            times["dask"] = min(times["dask"], time.perf_counter() - t)
        # same ranks; the errors agree up to the float32 Gram rounding (k * eps in the squared error)
        assert a.rank == b.rank and abs(ea**2 - eb**2) < 10 * st.factor_sizes[0] * 1.2e-7, (a.rank, b.rank, ea, eb)
        out = {"rank": b.rank["a"], "error": eb}
    return {"shape": st.shape, "GiB": W.nbytes / 2**30, "chunks": chunks, **times,
            "ratio": times["numpy"] / times["dask"], **out}


LAZY_RUN = """
import json, sys, time
import dask, sekron
from sekron._dask import lazy_low_rank

def peak_rss():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

fs, chunks, chunk_size, threads = json.loads(sys.argv[1])
st = sekron.Structure(fs)
x = lazy_low_rank(st, 3, noise=0.01, chunks=tuple(chunks), dtype="float32")
base = peak_rss()
t = time.perf_counter()
with dask.config.set({"scheduler": "threads", "num_workers": threads, "array.chunk-size": chunk_size}):
    sk, err = sekron.decompose(x, st, tol=0.05, return_error=True)
t = time.perf_counter() - t
peak = peak_rss()
print(json.dumps({"shape": st.shape, "GiB": x.nbytes / 2**30, "chunks": x.chunksize, "n_chunks": x.npartitions,
                  "seconds": t, "peak_GiB": peak / 2**30, "growth_GiB": (peak - base) / 2**30,
                  "rank": sk.rank["a"], "error": err}))
"""


def lazy(name: str, timeout: float) -> dict[str, object]:
    fs, chunks, chunk_size = LAZY[name]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(LAZY_RUN), json.dumps([fs, chunks, chunk_size,
                                                                                         THREADS])],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--throughput", nargs="*", default=None, help=f"sizes among {list(THROUGHPUT)}")
    parser.add_argument("--lazy", nargs="*", default=None, help=f"sizes among {list(LAZY)}")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per lazy run")
    args = parser.parse_args()
    tp = args.throughput if args.throughput is not None else (["16MiB"] if args.quick else ["1GiB"])
    lz = args.lazy if args.lazy is not None else (["256MiB"] if args.quick else ["2GiB"])

    print(f"# bench_dask: {platform.machine()}, {os.cpu_count()} CPUs, THREADS={THREADS}, numpy {np.__version__}")
    print("command:", "python benchmarks/bench_dask.py " + " ".join(sys.argv[1:]))
    if tp:
        print("\n## Throughput: decompose(da.from_array(W)) against decompose(W), float32, tol=0.05\n")
        print("| shape | GiB | chunks | numpy (s) | dask (s) | dask speed / numpy | rank | error |")
        print("|---|---|---|---|---|---|---|---|")
        for name in tp:
            r = throughput(name, args.repeat)
            print(f"| {r['shape']} | {r['GiB']:.2f} | {r['chunks']} | {r['numpy']:.2f} | {r['dask']:.2f} | "
                  f"{r['ratio']:.2f} | {r['rank']} | {r['error']:.4f} |", flush=True)
    if lz:
        print("\n## Out of core: lazily generated float32 tensor, tol=0.05, fresh process\n")
        print("| shape | GiB | chunk | chunks | time (s) | peak RSS (GiB) | RSS growth (GiB) | rank | error |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in lz:
            r = lazy(name, args.timeout)
            print(f"| {tuple(r['shape'])} | {r['GiB']:.2f} | {tuple(r['chunks'])} | {r['n_chunks']} | "
                  f"{r['seconds']:.1f} | {r['peak_GiB']:.2f} | {r['growth_GiB']:.2f} | {r['rank']} | "
                  f"{r['error']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
