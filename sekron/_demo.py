"""``sekron demo``: compress a real bundled tensor with several structures at one budget."""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import numpy as np

from ._progress import progress
from .decomposition import decompose
from .structure import Structure


def rank_for_budget(st: Structure, max_params: int) -> int | None:
    """Largest uniform bond size whose parameter count fits ``max_params`` (None if even 1 does not)."""
    if st.n_params(1) > max_params:
        return None
    lo, hi = 1, 2
    while st.n_params(hi) <= max_params and hi < 1 << 20:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if st.n_params(mid) <= max_params else (lo, mid)
    return lo


def load_indian_pines() -> tuple[np.ndarray, str]:
    """The Indian Pines hyperspectral cube (145 x 145 x 200) bundled with tensorly (CC BY 3.0)."""
    import tensorly.datasets

    path = os.path.join(os.path.dirname(tensorly.datasets.__file__), "data", "Indian_pines_corrected.npy")
    cube = np.load(path, allow_pickle=False).astype(np.float64)
    return cube, "Indian Pines hyperspectral image (AVIRIS, 145x145 pixels x 200 bands), bundled with tensorly"


def demo_candidates(shape: tuple[int, ...]) -> list[Structure]:
    """Classical formats plus a few Kronecker structures of the demo tensor."""
    return [
        Structure.tt(shape), Structure.tr(shape), Structure.cp(shape), Structure.tucker(shape),
        Structure([(29, 29, 20), (5, 5, 10)], "nested"),
        Structure([(5, 5, 10), (29, 29, 20)], "nested"),
        Structure([(29, 29, 8), (5, 5, 25)], "nested"),
        Structure([(29, 5, 10), (5, 29, 20)], "nested"),
        Structure([(29, 29, 10), (5, 5, 4), (1, 1, 5)], "nested"),
        Structure([(29, 29, 10), (5, 5, 4), (1, 1, 5)], "chain"),
        Structure([(29, 29, 20), (5, 5, 10)], "tucker"),
    ]


def run_demo(compression: float = 20.0, show_progress: bool = True) -> str:
    """Compress the Indian Pines cube ``compression``-fold with each candidate; return a table."""
    cube, source = load_indian_pines()
    budget = int(math.prod(cube.shape) / compression)
    rows: list[tuple[Any, ...]] = []
    cands = demo_candidates(cube.shape)
    for st in progress(cands, total=len(cands), desc="decomposing", enabled=show_progress):
        rank = rank_for_budget(st, budget)
        if rank is None:
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sk, err = decompose(cube, st, rank=rank, return_error=True, random_state=0, n_iter_max=50)
        seconds = time.perf_counter() - t0
        grid = " x ".join("(" + ",".join(map(str, s)) + ")" for s in st.factor_shapes)
        rows.append((grid, st.pattern, sk.rank, sk.n_params, math.prod(cube.shape) / sk.n_params, err, seconds))
    rows.sort(key=lambda r: r[5])
    lines = [
        f"sekron demo: {source}",
        f"budget: {budget} parameters ({compression:g}x fewer than the {math.prod(cube.shape)} entries)",
        "",
        "| structure | pattern | ranks | params | compression | rel. error | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for grid, pattern, rank, n, comp, err, seconds in rows:
        ranks = ",".join(f"{k}={v}" for k, v in rank.items())
        lines.append(f"| {grid} | {pattern} | {ranks} | {n} | {comp:.1f}x | {err:.4f} | {seconds:.2f} |")
    return "\n".join(lines)


def real_weights_demo(n_layers: int = 5, ratio: float = 8.0, show_progress: bool = True) -> str:
    """SeKron (searched structure) against TT, TR, CP and Tucker on real conv weights.

    The 3x3 convs of ddddocr's text detector (``common_det.onnx``, MIT), ``n_layers`` of
    them spread evenly over the network, each at ``ratio`` times fewer parameters. All
    five columns come from one :func:`sekron.search` call per layer: the baselines are its
    axis-aligned candidates, SeKron is its best candidate that is not axis-aligned.
    """
    from .datasets import load_ddddocr_convs
    from .structure_search import search

    convs = [(name, W) for name, W in load_ddddocr_convs() if W.ndim == 4 and W.shape[2:] == (3, 3)]
    picks = [convs[i] for i in np.linspace(0, len(convs) - 1, min(n_layers, len(convs))).round().astype(int)]
    methods = ("tt", "tr", "cp", "tucker")
    lines = [
        f"sekron demo: {len(picks)} of the {len(convs)} 3x3 convs of ddddocr's detector (common_det.onnx, MIT), "
        f"{ratio:g}x fewer parameters, relative reconstruction error, no fine-tuning",
        "",
        "| layer | shape | SeKron | TT | TR | CP | Tucker | SeKron structure | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    wins = 0
    for name, W in progress(picks, total=len(picks), desc="searching", enabled=show_progress):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cands = search(W.astype(np.float64), ratio=ratio)
        base = {c.baseline: c.error for c in cands if c.baseline is not None}
        own = [c for c in cands if c.baseline is None and not c.structure.is_axis_aligned]
        best = own[0] if own else cands[0]
        errs = [best.error] + [base.get(m, math.nan) for m in methods]
        wins += best.error <= min(e for e in errs[1:] if e == e)
        cells = [f"**{e:.3f}**" if e == min(errs) else f"{e:.3f}" for e in errs]
        grid = "x".join("(" + ",".join(map(str, s)) + ")" for s in best.structure.factor_shapes)
        lines.append(f"| {name} | {'x'.join(map(str, W.shape))} | " + " | ".join(cells)
                     + f" | {grid} {best.structure.pattern} | {time.perf_counter() - t0:.1f} |")
    lines += ["", f"SeKron has the lowest error on {wins} of {len(picks)} layers."]
    return "\n".join(lines)


def run(show_progress: bool = True) -> str:
    """What ``sekron demo`` prints: the real-weights comparison, or the bundled tensor when
    the real weights are not installed (with the command that installs them)."""
    try:
        return real_weights_demo(show_progress=show_progress)
    except (ImportError, FileNotFoundError) as exc:
        note = (f"(real conv weights unavailable: {exc}; `make demo` installs them. "
                "Showing the bundled Indian Pines tensor instead.)\n")
        return note + run_demo(show_progress=show_progress)
