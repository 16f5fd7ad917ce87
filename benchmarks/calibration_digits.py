"""Compression without labels on the digits tutorial: weight fit vs calibrated vs calibrated + distilled.

The digits CNN of ``benchmarks/digits_compression.py`` (width 32, the tutorial's; and a
wider one, ``--widths``) is trained once on 1437 labeled images. Then, for every method
(sekron, tt, tr, cp, tucker) and ratio, with the same pipeline:

- **weight**: ``compress(model, ratio, method=m)`` (today's weight fit, error allocation);
- **calibrated**: ``compress(..., calibration=X_cal)``: sensitivity allocation and output
  fitting on ``--calibration`` unlabeled training images (disjoint from the test images);
- **+ distilled**: then ``distill(student, dense, X_cal, epochs=--distill-epochs, loss="kl")``;
- **labeled FT** (reference, uses labels): the weight fit plus the tutorial's one epoch
  of labeled fine-tuning on all 1437 training images.

Test accuracy on the 360 held-out images. Wall time and peak resident memory of the
calibrated compress are measured in the same run (``/proc/self/status`` VmHWM, reset
before each call). Run::

    python benchmarks/calibration_digits.py                  # about 10 minutes on 2 shared cores
    python benchmarks/calibration_digits.py --quick          # sekron and cp, 10x, width 32
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_compression import accuracy, load_digits_data, make_cnn, train

from sekron.torch import compress, distill

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("sekron", "tt", "tr", "cp", "tucker")


def reset_peak() -> None:
    """Reset the process's peak resident memory (Linux); no-op elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run(args: Any) -> list[dict[str, Any]]:
    X, y = load_digits_data()
    perm = np.random.default_rng(args.seed).permutation(len(X))
    cut = int(len(X) * 0.8)
    Xt, yt = torch.as_tensor(X[perm[:cut]]), torch.as_tensor(y[perm[:cut]])
    Xv, yv = torch.as_tensor(X[perm[cut:]]), torch.as_tensor(y[perm[cut:]])
    cal = Xt[:args.calibration]  # unlabeled: only the images are passed on
    rows = []
    for width in args.widths:
        torch.manual_seed(args.seed)
        dense = make_cnn(width)
        train(dense, Xt, yt, args.epochs, seed=args.seed)
        n_dense = sum(p.numel() for p in dense.parameters())
        base = accuracy(dense, Xv, yv)
        print(f"width {width}: {n_dense:,} params, dense accuracy {base:.3f}", flush=True)
        for ratio in args.ratios:
            for method in args.methods:
                w, _ = compress(dense, ratio, method=method, min_kernel_size=256, progress=False)
                acc_w = accuracy(w, Xv, yv)
                ft = copy.deepcopy(w)
                train(ft, Xt, yt, epochs=1, lr=1e-3, seed=args.seed)
                reset_peak()
                t0 = time.perf_counter()
                c, rep = compress(dense, ratio, method=method, min_kernel_size=256, progress=False,
                                  calibration=cal, solver=args.solver)
                seconds, peak = time.perf_counter() - t0, peak_mib()
                acc_c = accuracy(c, Xv, yv)
                t1 = time.perf_counter()
                d = distill(copy.deepcopy(c), dense, cal, epochs=args.distill_epochs, lr=1e-3, loss="kl",
                            seed=args.seed, progress=False)
                row = {"width": width, "dense": base, "ratio": ratio, "method": method,
                       "achieved": rep.totals["ratio"], "weight": acc_w, "calibrated": acc_c,
                       "distilled": accuracy(d, Xv, yv), "labeled_ft": accuracy(ft, Xv, yv),
                       "seconds": seconds, "distill_seconds": time.perf_counter() - t1, "peak_mib": peak}
                rows.append(row)
                print(f"  {method} {ratio}x ({row['achieved']:.2f}x): weight {acc_w:.3f}, calibrated {acc_c:.3f}, "
                      f"+distilled {row['distilled']:.3f}, labeled FT {row['labeled_ft']:.3f} "
                      f"({seconds:.1f} s, peak {peak:.0f} MiB)", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| width | dense | method | target | achieved | weight fit | calibrated (no labels) | "
             "+ distilled (no labels) | weight fit + 1 epoch labeled FT | calibration time (s) | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['width']} | {r['dense']:.3f} | {r['method']} | {r['ratio']:g}x | {r['achieved']:.2f}x | "
                     f"{r['weight']:.3f} | {r['calibrated']:.3f} | {r['distilled']:.3f} | {r['labeled_ft']:.3f} | "
                     f"{r['seconds']:.1f} | {r['peak_mib']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = sorted({r["width"] for r in rows})
    ratios = sorted({r["ratio"] for r in rows})
    fig, axes = plt.subplots(len(widths), len(ratios), figsize=(4.2 * len(ratios), 3.2 * len(widths)),
                             squeeze=False)
    keys = (("weight", "weight fit"), ("calibrated", "calibrated"), ("distilled", "+ distilled"),
            ("labeled_ft", "labeled FT (ref.)"))
    for i, width in enumerate(widths):
        for j, ratio in enumerate(ratios):
            ax = axes[i][j]
            sel = [r for r in rows if r["width"] == width and r["ratio"] == ratio]
            xs = np.arange(len(sel))
            for k, (key, label) in enumerate(keys):
                ax.bar(xs + (k - 1.5) * 0.2, [r[key] for r in sel], 0.2, label=label)
            if sel:
                ax.axhline(sel[0]["dense"], color="gray", ls="--", lw=1)
            ax.set_xticks(xs, [r["method"] for r in sel])
            ax.set_ylim(0, 1)
            ax.set_title(f"width {width}, {ratio:g}x")
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    p.add_argument("--ratios", type=float, nargs="+", default=[10, 25])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--calibration", type=int, default=256, help="unlabeled training images for calibration")
    p.add_argument("--distill-epochs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--solver", default="als", choices=["als", "adam"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.widths, args.ratios, args.methods = [32], [10.0], ["sekron", "cp"]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args)
    cmd = "python benchmarks/calibration_digits.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([f"<!-- generated by `{cmd.strip()}`; do not edit -->",
                      f"{args.calibration} unlabeled calibration images, {args.distill_epochs} distillation epochs "
                      f"(KL, lr 1e-3), solver {args.solver!r}; torch {torch.__version__}, {args.threads} thread(s) "
                      f"on a shared 2-core machine; total {time.perf_counter() - t0:.0f} s.", "", table(rows), ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration_digits.md").write_text(text)
    plot(rows, args.out / "calibration_digits.png")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
