"""Fashion-MNIST ResNet-8 compressed without labels: weight fit vs calibrated vs calibrated + distilled.

The dense ResNet-8 of ``benchmarks/fashion_mnist.py`` is trained with that script's
defaults (first 20,000 training images, 4 epochs, seed 0; cached in ``--cache`` so reruns
skip it). Then for every method and ratio (5x, 10x, 20x), the same pipeline:

- **weight**: ``compress(model, ratio, method=m, input_shape=(1, 1, 28, 28))``;
- **calibrated**: ``compress(..., calibration=X_cal)`` with ``--calibration`` (256)
  unlabeled training images taken from *after* the 20,000 used for training (so they
  are also disjoint from the test set); sensitivity allocation + output fitting;
- **+ distilled**: ``distill(student, dense, X_cal, epochs=--distill-epochs, loss="kl")``;
- optionally (``--labeled-ft``) the weight fit plus ``fashion_mnist.py``'s labeled
  fine-tune (1 epoch on the 20,000 labeled images), today's recipe.

Top-1 on the test images (``--test-size``, default all 10,000). Run::

    python benchmarks/calibration_fashion.py            # about 10 minutes on 2 shared cores (no --labeled-ft)
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_digits import peak_mib, reset_peak
from fashion_mnist import DATA_DIR, ResNet, accuracy, load_fashion_mnist, n_params, train

from sekron.torch import compress, distill

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("sekron", "tt", "tr", "cp", "tucker")


def run(args: Any) -> tuple[float, list[dict[str, Any]]]:
    xtr, ytr, xte, yte = load_fashion_mnist(args.data)
    cal = xtr[args.train_size:args.train_size + args.calibration]
    xtr, ytr = xtr[:args.train_size], ytr[:args.train_size]
    if args.test_size:
        xte, yte = xte[:args.test_size], yte[:args.test_size]
    torch.manual_seed(args.seed)
    dense = ResNet(1, 16)
    if args.cache.is_file():
        dense.load_state_dict(torch.load(args.cache, weights_only=True))
    else:
        train(dense, xtr, ytr, args.epochs, 0.1, args.seed)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dense.state_dict(), args.cache)
    base = accuracy(dense, xte, yte)
    print(f"ResNet-8: {n_params(dense):,} params, dense top-1 {base:.2f}%", flush=True)
    rows = []
    for ratio in args.ratios:
        for method in args.methods:
            w, _ = compress(dense, ratio, method=method, input_shape=(1, 1, 28, 28), progress=False)
            acc_w = accuracy(w, xte, yte)
            ft = float("nan")
            if args.labeled_ft:
                lab = copy.deepcopy(w)
                train(lab, xtr, ytr, 1, 0.01, args.seed + 1)
                ft = accuracy(lab, xte, yte)
            reset_peak()
            t0 = time.perf_counter()
            c, rep = compress(dense, ratio, method=method, input_shape=(1, 1, 28, 28), progress=False,
                              calibration=cal, fold_batchnorm=args.fold_batchnorm == "auto" and None,
                              structures=args.structures, sensitivity_steps=args.sensitivity_steps)
            seconds, peak = time.perf_counter() - t0, peak_mib()
            acc_c = accuracy(c, xte, yte)
            t1 = time.perf_counter()
            d = distill(copy.deepcopy(c), dense, cal, epochs=args.distill_epochs, lr=args.distill_lr, loss="kl",
                        seed=args.seed, schedule=args.distill_schedule,
                        progress=False, shift=args.distill_shift, noise=args.distill_noise, mixup=args.distill_mixup,
                        holdout=args.distill_holdout, features=args.distill_features)
            row = {"ratio": ratio, "method": method, "achieved": n_params(dense) / n_params(c), "weight": acc_w,
                   "calibrated": acc_c, "distilled": accuracy(d, xte, yte), "labeled_ft": ft, "seconds": seconds,
                   "distill_seconds": time.perf_counter() - t1, "peak_mib": peak, "report": str(rep)}
            rows.append(row)
            print(f"  {method} {ratio}x ({row['achieved']:.2f}x): weight {acc_w:.2f}, calibrated {acc_c:.2f}, "
                  f"+distilled {row['distilled']:.2f}, labeled FT {ft:.2f} ({seconds:.0f} s, peak {peak:.0f} MiB)",
                  flush=True)
            if args.on_row is not None:
                args.on_row(base, rows)
    return base, rows


def table(base: float, rows: list[dict[str, Any]]) -> str:
    lines = [f"dense top-1: {base:.2f}%", "",
             "| method | target | achieved | weight fit | calibrated (no labels) | + distilled (no labels) | "
             "weight fit + labeled FT | calibration time (s) | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ft = "-" if r["labeled_ft"] != r["labeled_ft"] else f"{r['labeled_ft']:.2f}"
        lines.append(f"| {r['method']} | {r['ratio']:g}x | {r['achieved']:.2f}x | {r['weight']:.2f} | "
                     f"{r['calibrated']:.2f} | {r['distilled']:.2f} | {ft} | {r['seconds']:.0f} | "
                     f"{r['peak_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA_DIR)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--test-size", type=int, default=0)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--ratios", type=float, nargs="+", default=[5, 10, 20])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--distill-epochs", type=int, default=20)
    p.add_argument("--distill-lr", type=float, default=1e-3, help="distill(lr=)")
    p.add_argument("--distill-schedule", choices=("constant", "cosine"), default="constant", help="distill(schedule=)")
    p.add_argument("--distill-shift", type=int, default=0, help="distill(shift=): random translation in pixels")
    p.add_argument("--distill-noise", type=float, default=0.0, help="distill(noise=)")
    p.add_argument("--distill-mixup", type=float, default=0.0, help="distill(mixup=)")
    p.add_argument("--distill-holdout", type=float, default=0.0, help="distill(holdout=)")
    p.add_argument("--distill-features", nargs="*", default=None, help="distill(features=), e.g. layers.0 layers.1")
    p.add_argument("--structures", type=int, default=1, help="compress(structures=) for the calibrated runs")
    p.add_argument("--sensitivity-steps", type=int, default=5, help="compress(sensitivity_steps=)")
    p.add_argument("--labeled-ft", action="store_true")
    p.add_argument("--fold-batchnorm", choices=("auto", "off"), default="auto",
                   help="compress's fold_batchnorm for the calibrated runs: auto (its default) or off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sekron_resnet8_fmnist_seed0.pt",
                   help="where the trained dense model is cached")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--name", default="calibration_fashion")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = "python benchmarks/calibration_fashion.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()

    def write(base: float, rows: list[dict[str, Any]]) -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        reports = "\n".join(f"#### {r['method']}, {r['ratio']:g}x\n\n```\n{r['report']}\n```\n" for r in rows)
        text = "\n".join([f"<!-- generated by `{cmd.strip()}`; do not edit -->",
                          f"Dense model: {args.train_size} training images, {args.epochs} epochs, seed {args.seed}. "
                          f"{args.calibration} unlabeled calibration images (disjoint from training and test), "
                          f"{args.distill_epochs} distillation epochs (KL, lr {args.distill_lr}, "
                          f"{args.distill_schedule}, shift {args.distill_shift}, noise "
                          f"{args.distill_noise}, mixup {args.distill_mixup}, holdout {args.distill_holdout}, features "
                          f"{args.distill_features}); fold_batchnorm {args.fold_batchnorm}, structures "
                          f"{args.structures}, sensitivity_steps {args.sensitivity_steps}; test images: "
                          f"{args.test_size or 10000}; torch {torch.__version__}, {args.threads} thread(s) on a shared "
                          f"2-core machine; {time.perf_counter() - t0:.0f} s so far.", "", table(base, rows), "",
                          "<details><summary>compression reports</summary>", "", reports, "</details>", ""])
        (args.out / f"{args.name}.md").write_text(text)

    args.on_row = write
    try:
        base, rows = run(args)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(table(base, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
