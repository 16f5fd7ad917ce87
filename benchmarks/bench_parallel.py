"""The parallel machinery of compress, measured in ways that a busy machine distorts least.

Three measurements (all with one BLAS thread per process):

- ``start``: pool start plus two tiny layer tasks, per worker start method (``fork``,
  ``forkserver``, ``spawn``), median of 3, in a process that imported torch;
- ``cpu``: ``--tasks`` real layer tasks (ddddocr 96x96x3x3 kernels) with ``n_jobs=1`` and
  ``n_jobs=2``: wall time, and CPU time of the process and its workers (``os.times``). When
  two processes get no more CPU than one, the machine (not the code) caps the speedup;
- ``serial``: the share of ``compress(detector, 4, n_jobs=1)`` spent in the per-layer tasks,
  the part that workers share (the rest stays in the calling process), and the Amdahl
  bound it implies for 2 processes.

    PYTHONPATH=. python benchmarks/bench_parallel.py --what start cpu serial
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_methods() -> None:
    import numpy as np
    import torch  # noqa: F401  (the parent of compress has torch loaded)

    from sekron._parallel import run_tasks
    from sekron.structure_search._layer import layer_task

    W = np.random.default_rng(0).standard_normal((8, 8, 3, 3))
    for method in ("fork", "forkserver", "spawn"):
        os.environ["SEKRON_START_METHOD"] = method
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run_tasks(layer_task, [(W, 100.0, "tucker", "x", {})] * 2, n_jobs=2)
            times.append(time.perf_counter() - t0)
        print(f"start {method:>10}: pool start + 2 tiny tasks, median {statistics.median(times):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in times)})", flush=True)
    os.environ.pop("SEKRON_START_METHOD")


def cpu(n_tasks: int) -> None:
    import numpy as np

    from sekron._parallel import run_tasks
    from sekron.datasets import conv_weights
    from sekron.structure_search._cache import weight_hash
    from sekron.structure_search._layer import layer_task

    ws = [w.astype(np.float64) for _, w in conv_weights("ddddocr") if w.shape == (96, 96, 3, 3)][:n_tasks]
    tasks = [(W, W.size * 0.248, "sekron", weight_hash(W), {}) for W in ws]
    for _ in range(2):
        for n in (1, 2):
            t0, c0 = time.perf_counter(), os.times()
            run_tasks(layer_task, tasks, n_jobs=n)
            c1 = os.times()
            used = sum(getattr(c1, k) - getattr(c0, k) for k in ("user", "system", "children_user",
                                                                  "children_system"))
            print(f"cpu n_jobs={n}: wall {time.perf_counter() - t0:.1f} s, CPU {used:.1f} s, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)


def serial() -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from bench_compress import build

    import sekron.torch.compression  # noqa: F401

    module = sys.modules["sekron.torch.compression"]
    inner = module.run_tasks  # type: ignore[attr-defined]
    spent = {}

    def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        spent["tasks"] = time.perf_counter() - t0
        return out

    module.run_tasks = timed  # type: ignore[attr-defined]
    try:
        t0 = time.perf_counter()
        module.compress(build("ddddocr"), 4, progress=False, n_jobs=1, cache=False)  # type: ignore[attr-defined]
        total = time.perf_counter() - t0
    finally:
        module.run_tasks = inner  # type: ignore[attr-defined]
    share = spent["tasks"] / total
    print(f"serial: total {total:.1f} s, per-layer tasks {spent['tasks']:.1f} s ({share:.1%}); Amdahl bound for "
          f"2 processes {1 / ((1 - share) + share / 2):.2f}x; load {os.getloadavg()[0]:.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", nargs="+", default=["start", "cpu"], choices=["start", "cpu", "serial"])
    p.add_argument("--tasks", type=int, default=4)
    args = p.parse_args(argv)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(k, "1")
    print(f"load before: {os.getloadavg()}")
    if "start" in args.what:
        start_methods()
    if "cpu" in args.what:
        cpu(args.tasks)
    if "serial" in args.what:
        serial()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
