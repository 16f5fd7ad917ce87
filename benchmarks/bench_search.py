"""Per-layer time and error of ``sekron.search`` against an older copy of the library, side by side.

The layer set: the conv weights of a real network (``--kind ddddocr`` or ``realesrgan``,
from :func:`sekron.datasets.conv_weights`), one layer per distinct shape, ``--layers``
of them evenly spread over the sizes. For every layer, the old library (``--old-root``,
e.g. ``git archive e11998a sekron | tar -x -C /tmp/oldsekron``) and this one each run
``search(W, ratio=...)`` in their own fresh process (one BLAS thread), one right after
the other, ``--repeat`` times (median). The table gives both times, their ratio and the
best candidate's error of each (the same error means the same quality).

    PYTHONPATH=. python benchmarks/bench_search.py --old-root /tmp/oldsekron --layers 6
    PYTHONPATH=. python benchmarks/bench_search.py --old-root /tmp/oldsekron --layers 6 --what layer

``--what layer`` times what :func:`sekron.torch.compress` runs per layer instead (every family
on the budget ladder, deterministic), and its error column is the best point within the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def layer_set(kind: str, n: int) -> list[tuple[str, tuple[int, ...]]]:
    from sekron.datasets import conv_weights

    first: dict[tuple[int, ...], str] = {}
    for name, W in conv_weights(kind):
        if min(W.shape[:2]) > 3:
            first.setdefault(tuple(W.shape), name)
    shapes = sorted(first, key=lambda s: (int(__import__("math").prod(s)), s))
    if n < len(shapes):
        idx = sorted({round(i * (len(shapes) - 1) / max(n - 1, 1)) for i in range(n)})
        shapes = [shapes[i] for i in idx]
    return [(first[s], s) for s in shapes]


def worker(kind: str, name: str, ratio: float, repeat: int, what: str = "search") -> dict[str, Any]:
    import numpy as np

    from sekron import search
    from sekron.datasets import conv_weights

    W = dict(conv_weights(kind))[name].astype(np.float64)
    search(np.random.default_rng(0).standard_normal((8, 8, 3, 3)), ratio=4)  # imports and first calls
    times, err, params = [], None, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        if what == "search":
            best = search(W, ratio=ratio)[0]
            err, params = best.error, best.params
        else:  # compress's scoring of the layer: every family on the ladder; the best point within the budget
            from sekron.structure_search._layer import layer_families

            budget = W.size / ratio
            fams = layer_families(W, budget, "sekron")
            err, params = min((float(f.err[i]), int(f.params[i])) for f in fams
                              for i in np.flatnonzero(f.params <= budget))
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "error": err, "params": params}


def run(root: Path, args: argparse.Namespace, name: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--kind", args.kind,
           "--ratio", str(args.ratio), "--repeat", str(args.repeat), "--what", args.what]
    proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(root), **THREADS), capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({root}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="ddddocr", choices=["ddddocr", "realesrgan"])
    p.add_argument("--old-root", type=Path, required=False)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--ratio", type=float, default=4.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--what", default="search", choices=["search", "layer"],
                   help="search: sekron.search (its ALS polish stops after 2 s); layer: compress's scoring of "
                        "the layer (every family on the ladder, no time limit), best error within the budget")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.kind, args.worker, args.ratio, args.repeat, args.what)))
        return 0
    print(f"{args.what} on {args.kind}, ratio {args.ratio}; load before: {os.getloadavg()}")
    head = f"{'layer':<40} {'shape':<18} {'old s':>8} {'new s':>8} {'old/new':>8} {'old error':>10} {'new error':>10}"
    print(head)
    print("-" * len(head))
    tot_old = tot_new = 0.0
    for name, shape in layer_set(args.kind, args.layers):
        new = run(ROOT, args, name)
        old = run(args.old_root, args, name) if args.old_root else None
        tot_new += new["seconds"]
        o = "" if old is None else f"{old['seconds']:8.2f} "
        r = "" if old is None else f"{old['seconds'] / new['seconds']:7.2f}x"
        e = "" if old is None else f"{old['error']:10.5f}"
        if old is not None:
            tot_old += old["seconds"]
        print(f"{name[:40]:<40} {'x'.join(map(str, shape)):<18} {o:>8} {new['seconds']:8.2f} {r:>8} {e:>10} "
              f"{new['error']:10.5f}", flush=True)
    if args.old_root:
        print(f"{'total':<59} {tot_old:8.2f} {tot_new:8.2f} {tot_old / tot_new:7.2f}x")
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
