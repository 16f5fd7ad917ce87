"""The search's cp candidates with and without the polish, against tensorly's parafac at the same rank.

For each kernel (ddddocr's 3x3 conv weights with 20k..150k entries when installed, else
random kernels) and a compression ratio, it runs ``sekron.search`` twice, with
``POLISH_FLOPS = 0`` (no polish) and at the default, takes the best cp candidate, and runs
``tensorly.decomposition.parafac`` (SVD start, its defaults) on the same rearranged tensor at
the same rank. It prints one row per kernel: errors, the polished error over parafac's
(< 1 means the search's candidate is better), and both search times.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_search_polish.py --layers 3 --ratio 8
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings

import numpy as np
import tensorly as tl
from tensorly.decomposition import parafac

import sekron
import sekron.structure_search._search as search_module


def kernels(n: int) -> list[tuple[str, np.ndarray]]:
    if importlib.util.find_spec("ddddocr") and importlib.util.find_spec("onnx"):
        from sekron.datasets import load_ddddocr_convs

        found = [(name, np.asarray(w, np.float64)) for name, w in load_ddddocr_convs()]
        return [(n_, w) for n_, w in found if w.ndim == 4 and w.shape[2:] == (3, 3) and 20000 < w.size < 150000][:n]
    rng = np.random.default_rng(0)
    return [(f"random{i}", rng.standard_normal((48, 32, 3, 3))) for i in range(n)]


def best_cp(W: np.ndarray, ratio: float, flops: float) -> tuple[sekron.Candidate, float]:
    default = search_module.POLISH_FLOPS
    search_module.POLISH_FLOPS = flops
    try:
        t = time.perf_counter()
        found = sekron.search(W, ratio=ratio)
        return next(c for c in found if "init" in c.options), time.perf_counter() - t
    finally:
        search_module.POLISH_FLOPS = default


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--ratio", type=float, default=8.0)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    print("| kernel | shape | rank | cp, no polish | cp, polished | parafac | polished / parafac | search s "
          "(no polish / polished) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, W in kernels(args.layers):
        rough, t0 = best_cp(W, args.ratio, 0.0)
        cand, t1 = best_cp(W, args.ratio, search_module.POLISH_FLOPS)
        T = cand.structure.rearrange(W)
        R = int(cand.options["rank"])
        ref = parafac(T, R, init="svd", random_state=0, normalize_factors=False)
        err = float(np.linalg.norm(tl.cp_to_tensor(ref) - T) / np.linalg.norm(T))
        print(f"| {name} | {W.shape} | {R} | {rough.error:.4f} | {cand.error:.4f} | {err:.4f} | "
              f"{cand.error / err:.4f} | {t0:.2f} / {t1:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
