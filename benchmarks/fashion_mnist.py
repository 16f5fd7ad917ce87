"""A CIFAR-style ResNet on Fashion-MNIST, compressed 5x and 10x by each method, then fine-tuned.

The ResNet of He et al. (2016) for CIFAR: a 3x3 stem, three stages of ``--blocks``
BasicBlocks (widths w, 2w, 4w; stride 2 and a 1x1 conv shortcut at the start of stages 2
and 3), global average pooling and a linear classifier (``--blocks 1``: ResNet-8,
``3``: ResNet-20, ``5``: ResNet-32). It is trained once, then compressed with
``sekron.torch.compress(model, ratio, method=...)`` for every method (sekron, tt, tr, cp,
tucker) and fine-tuned with the same schedule for every method. Seeds are fixed.

Data: Debian's ``dataset-fashion-mnist`` (``sudo apt-get install dataset-fashion-mnist``,
files in ``/usr/share/datasets/fashion-mnist``), or the four ``*-ubyte.gz`` files of
https://github.com/zalandoresearch/fashion-mnist in ``--data``. Outputs under ``--out``:
``fashion_mnist.md`` (table in the form of the GKPD paper's ResNet32 table) and
``fashion_mnist.png``. Run::

    python benchmarks/fashion_mnist.py            # ResNet-8, 20k images, 4 + 1 epochs: about 10 minutes on 2 cores
    python benchmarks/fashion_mnist.py --quick    # toy run: 2k images, 1 epoch, 5x only
    python benchmarks/fashion_mnist.py --device cuda --train-size 0 --name fashion_mnist_gpu   # on a GPU

The tables are rewritten after every model, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

F = torch.nn.functional

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL = ("Fashion-MNIST not found. Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or "
           "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
           "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist in a folder and pass "
           "--data FOLDER")
METHODS = ("sekron", "tt", "tr", "cp", "tucker")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root: Path = DATA_DIR) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels); images (N, 1, 28, 28) standardised."""
    files = [root / f"{s}-{k}-idx{d}-ubyte.gz" for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{INSTALL} (missing: {', '.join(missing)})")
    xtr, ytr, xte, yte = (_idx(f) for f in files)

    def images(x: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(x.astype(np.float32)) / 255.0 - 0.286) / 0.353)[:, None]

    return images(xtr), torch.from_numpy(ytr.astype(np.int64)), images(xte), torch.from_numpy(yte.astype(np.int64))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2) for 1-channel 28x28 images."""

    def __init__(self, blocks: int = 1, width: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage and not b else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int,
          batch: int = 128) -> None:
    """SGD (momentum 0.9, weight decay 5e-4), cosine learning rate, random horizontal flips."""
    if epochs <= 0:
        return
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * (-(-len(x) // batch))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb = x[idx]
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(x.device)
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * correct / len(x)


def run(args: Any, on_row: Any = None) -> tuple[list[dict[str, Any]], str]:
    from sekron.torch import compress

    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte = load_fashion_mnist(args.data)
    if args.train_size:
        xtr, ytr = xtr[:args.train_size], ytr[:args.train_size]
    if args.test_size:
        xte, yte = xte[:args.test_size], yte[:args.test_size]
    device = torch.device(args.device)
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    base = ResNet(args.blocks, args.width).to(device)
    name = f"ResNet-{6 * args.blocks + 2}"
    t0 = time.perf_counter()
    train(base, xtr, ytr, args.epochs, args.lr, args.seed)
    dense = n_params(base)
    rows = [{"model": name, "method": "dense", "params": dense, "compression": 1.0, "top1_before": float("nan"),
             "top1": accuracy(base, xte, yte), "seconds": time.perf_counter() - t0}]
    print(f"{name}: {dense:,} params, top-1 {rows[0]['top1']:.2f}% ({rows[0]['seconds']:.0f} s)", flush=True)
    reports: list[str] = []
    if on_row is not None:
        on_row(rows, reports)
    for ratio in args.ratios:
        for method in args.methods:
            t1 = time.perf_counter()
            small, report = compress(base, ratio, method=method, input_shape=(1, 1, 28, 28), progress=False)
            before = accuracy(small, xte, yte)
            train(small, xtr, ytr, args.ft_epochs, args.ft_lr, args.seed + 1)
            rows.append({"model": name, "method": method, "params": n_params(small),
                         "compression": dense / n_params(small), "top1_before": before,
                         "top1": accuracy(small, xte, yte), "seconds": time.perf_counter() - t1, "target": ratio})
            reports.append(f"#### {method}, {ratio}x\n\n```\n{report}\n```\n")
            r = rows[-1]
            print(f"  {method} {ratio}x: {r['params']:,} params ({r['compression']:.2f}x), top-1 "
                  f"{r['top1_before']:.2f}% -> {r['top1']:.2f}% after fine-tuning ({r['seconds']:.0f} s)", flush=True)
            if on_row is not None:
                on_row(rows, reports)
    return rows, "\n".join(reports)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | method | params | compression | top-1 before fine-tuning (%) | top-1 (%) | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        method = "SeKron" if r["method"] == "sekron" else r["method"] if r["method"] == "dense" else r["method"].upper()
        before = "-" if np.isnan(r["top1_before"]) else f"{r['top1_before']:.2f}"
        lines.append(f"| {r['model']} | {method} | {r['params']:,} | {r['compression']:.2f}x | {before} | "
                     f"{r['top1']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.axhline(rows[0]["top1"], color="gray", ls="--", label="dense")
    for i, method in enumerate(METHODS):
        sel = sorted((r for r in rows if r["method"] == method), key=lambda r: r["compression"])
        if sel:
            ax.plot([r["compression"] for r in sel], [r["top1"] for r in sel], "os^vd"[i] + "-",
                    label="SeKron" if method == "sekron" else method.upper())
    ax.set(xlabel="compression (x fewer parameters)", ylabel="top-1 accuracy after fine-tuning (%)",
           title=f"{rows[0]['model']} on Fashion-MNIST")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA_DIR)
    p.add_argument("--blocks", type=int, default=1, help="BasicBlocks per stage: ResNet-(6n+2)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--ft-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--train-size", type=int, default=20000, help="use the first N training images (0: all 60k)")
    p.add_argument("--test-size", type=int, default=0, help="use the first N test images (0: all 10k)")
    p.add_argument("--ratios", type=float, nargs="+", default=[5, 10])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="2k train / 1k test images, 1 + 1 epochs, 5x only")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--name", default="fashion_mnist", help="output file names NAME.md and NAME.png")
    p.add_argument("--device", default="cpu", help="torch device for training and evaluation, e.g. cuda")
    args = p.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.epochs, args.ft_epochs, args.ratios = 2000, 1000, 1, 1, [5]
    cmd = "python benchmarks/fashion_mnist.py " + " ".join(sys.argv[1:] if argv is None else argv)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"

    def write(rows: list[dict[str, Any]], reports: list[str]) -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        total = sum(r["seconds"] for r in rows)
        text = "\n".join([f"<!-- generated by `{cmd.strip()}`; do not edit -->",
                          f"Train images: {args.train_size or 60000}, test images: {args.test_size or 10000}; "
                          f"{args.epochs} training epochs, {args.ft_epochs} fine-tuning epochs (lr {args.ft_lr}, "
                          f"cosine) for every method; seed {args.seed}; torch {torch.__version__} on {where}; "
                          f"total {total:.0f} s.", "", table(rows), "",
                          "<details><summary>compression reports</summary>", "", "\n".join(reports), "</details>", ""])
        (args.out / f"{args.name}.md").write_text(text)
        plot(rows, args.out / f"{args.name}.png")

    try:
        rows, _ = run(args, write)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
