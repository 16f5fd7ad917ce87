"""Tutorial: train a small CNN on scikit-learn's digits, compress it with every method, fine-tune, compare.

Run ``python benchmarks/digits_compression.py`` (needs ``pip install scikit-learn``;
``--install`` runs that pip install for you). It trains a 3-conv CNN on the 8x8 digits,
compresses it 10x with ``method`` = sekron, tt, tr, cp and tucker (plus other ratios for
the plot), fine-tunes each one epoch, prints the accuracy table (markdown) and writes a
plot of accuracy against compression. The same functions run in the tests at a small
size on synthetic digits (``synthetic_digits``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sekron.torch import compress

METHODS = ("sekron", "tt", "tr", "cp", "tucker")


def load_digits_data(install: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits as (N, 1, 8, 8) float32 in [0, 1] and int labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        if not install:
            raise SystemExit("this tutorial needs scikit-learn: pip install scikit-learn (or pass --install)") from None
        subprocess.check_call([sys.executable, "-m", "pip", "install", "scikit-learn"])
        from sklearn.datasets import load_digits
    data = load_digits()
    X = (data.images / 16.0).astype(np.float32)[:, None]
    return X, data.target.astype(np.int64)


def synthetic_digits(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ten random 8x8 templates plus noise: a stand-in with the digits' shapes, for quick tests."""
    rng = np.random.default_rng(seed)
    templates = rng.random((10, 8, 8)) > 0.6
    y = rng.integers(0, 10, n)
    X = templates[y] + 0.1 * rng.standard_normal((n, 8, 8))
    return X.astype(np.float32)[:, None], y.astype(np.int64)


def make_cnn(width: int = 32) -> nn.Module:
    """conv 1->w/2, conv w/2->w, pool, conv w->2w, global pool, linear 2w->10."""
    h = width // 2
    return nn.Sequential(
        nn.Conv2d(1, h, 3, padding=1), nn.ReLU(),
        nn.Conv2d(h, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10),
    )


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 3e-3, seed: int = 0,
          batch_size: int = 64) -> None:
    """Adam on shuffled mini-batches (fixed seed)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=gen).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(X).argmax(1) == y).float().mean())


@dataclass
class Result:
    method: str
    ratio: float
    achieved: float
    acc_compressed: float
    acc_finetuned: float
    seconds: float


def run(X: np.ndarray, y: np.ndarray, ratios: tuple[float, ...] = (10.0,), methods: tuple[str, ...] = METHODS,
        width: int = 32, epochs: int = 15, test_fraction: float = 0.2, seed: int = 0, batch_size: int = 64
        ) -> tuple[float, list[Result]]:
    """Train the dense CNN, then compress / fine-tune one epoch per (method, ratio); returns (dense acc, results)."""
    torch.manual_seed(seed)
    perm = np.random.default_rng(seed).permutation(len(X))
    cut = int(len(X) * (1 - test_fraction))
    Xt, yt = torch.as_tensor(X[perm[:cut]]), torch.as_tensor(y[perm[:cut]])
    Xv, yv = torch.as_tensor(X[perm[cut:]]), torch.as_tensor(y[perm[cut:]])
    dense = make_cnn(width)
    train(dense, Xt, yt, epochs, seed=seed, batch_size=batch_size)
    base = accuracy(dense, Xv, yv)
    results = []
    for ratio in ratios:
        for method in methods:
            t0 = time.perf_counter()
            small, report = compress(dense, ratio=ratio, method=method, min_kernel_size=256, progress=False)
            seconds = time.perf_counter() - t0
            before = accuracy(small, Xv, yv)
            train(small, Xt, yt, epochs=1, lr=1e-3, seed=seed, batch_size=batch_size)
            results.append(Result(method, ratio, report.totals["ratio"], before, accuracy(small, Xv, yv), seconds))
    return base, results


def table(base: float, results: list[Result], ratio: float) -> str:
    """Markdown table of the results at one ratio."""
    lines = [f"dense accuracy: {base:.3f}", "",
             "| method | compression | accuracy, no fine-tuning | accuracy, 1 epoch fine-tuning | compress time (s) |",
             "|---|---|---|---|---|"]
    for r in results:
        if r.ratio == ratio:
            lines.append(f"| {r.method} | {r.achieved:.2f}x | {r.acc_compressed:.3f} | {r.acc_finetuned:.3f} | "
                         f"{r.seconds:.1f} |")
    return "\n".join(lines)


def plot(base: float, results: list[Result], path: str | Path) -> None:
    """Accuracy after one epoch of fine-tuning against achieved compression, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r.method for r in results):
        rs = sorted((r for r in results if r.method == method), key=lambda r: r.achieved)
        ax.plot([r.achieved for r in rs], [r.acc_finetuned for r in rs], marker="o", label=method)
    ax.axhline(base, color="gray", linestyle="--", label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("compression (parameters before / after)")
    ax.set_ylabel("test accuracy (1 epoch fine-tuning)")
    ax.set_title("digits CNN compressed by sekron.torch.compress")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--install", action="store_true", help="pip install scikit-learn if it is missing")
    p.add_argument("--ratios", default="3,5,10,20", help="comma-separated compression ratios for the plot")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--plot", default="docs/img/digits_compression.png")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    X, y = load_digits_data(args.install)
    ratios = tuple(float(r) for r in args.ratios.split(","))
    base, results = run(X, y, ratios=ratios, epochs=args.epochs)
    print(table(base, results, 10.0 if 10.0 in ratios else ratios[-1]))
    plot(base, results, args.plot)
    print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
