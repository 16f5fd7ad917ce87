"""Real-ESRGAN x4plus, part of the body compressed, weight fit vs output fit on a few photos (reduced run).

The full calibrated run (every one of the 351 convs, 64 crops) does not fit the shared
2-core machine: the output fit captures each layer's input through the network prefix,
so its cost grows with depth. This reduced run compresses the convs of the first
``--blocks`` RRDB blocks (15 convs each) by ``--ratios`` per compressed layer with each
method, once with the weight fit and once with ``calibration=`` (output fitting, budget
allocated by weight error: sensitivity allocation needs a full forward per candidate).
Calibration: ``--crops`` random crops (``--lr-crop`` pixels, low resolution) of the
photos ``--calib``; evaluation: centre crops of the other photos ``--eval``; PSNR of the
x4 output against the uncompressed model's. Run::

    python benchmarks/calibration_sr.py                 # 1 block, 2x and 4x, all methods
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_digits import peak_mib, reset_peak
from super_resolution import build_realesrgan, photos, psnr, save_crops

from sekron.torch import compress

F = torch.nn.functional
ROOT = Path(__file__).resolve().parent.parent
METHODS = ("sekron", "tt", "tr", "cp", "tucker")


def random_crops(names: list[str], n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` random ``size x size`` low-resolution crops (photos downscaled 4x by area) spread over ``names``."""
    from skimage import data

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = getattr(data, names[i % len(names)])()[..., :3].astype(np.float32) / 255.0
        h, w = img.shape[:2]
        top, left = rng.integers(0, h - 4 * size), rng.integers(0, w - 4 * size)
        hr = torch.from_numpy(img[top:top + 4 * size, left:left + 4 * size]).permute(2, 0, 1)[None]
        out.append(F.avg_pool2d(hr, 4))
    return torch.cat(out)


def run(args: Any) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    model = build_realesrgan()
    total = sum(p.numel() for p in model.parameters())
    include = [f"body.{b}.*" for b in range(args.blocks)]
    sub = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
              and any(n.startswith(f"body.{b}.") for b in range(args.blocks)))
    cal = random_crops(args.calib, args.crops, args.lr_crop, args.seed)
    evals = [(n, F.avg_pool2d(hr, 4)) for n, hr in photos(args.eval, 4 * args.eval_lr_crop)]
    with torch.no_grad():
        ref = {n: model(lr) for n, lr in evals}
    crops = {"uncompressed": ref[evals[0][0]]}
    rows = []
    for ratio in args.ratios:
        whole = total / (total - sub + sub / ratio)  # the whole-model ratio that leaves `ratio` on the included convs
        for method in args.methods:
            for calibrated in (False, True):
                reset_peak()
                t0 = time.perf_counter()
                kw: dict[str, Any] = {"calibration": cal, "allocation": "error", "batch_size": 4} if calibrated else {}
                small, rep = compress(model, whole, method=method, include=include, min_kernel_size=0,
                                      progress=False, **kw)
                seconds, peak = time.perf_counter() - t0, peak_mib()
                with torch.no_grad():
                    outs = {n: small(lr) for n, lr in evals}
                rows.append({"ratio": ratio, "method": method, "calibrated": calibrated,
                             "layer_ratio": sub / sum(r["params_after"] for r in rep if r["status"] == "compressed"),
                             "psnr": float(np.mean([psnr(outs[n], ref[n]) for n in outs])), "seconds": seconds,
                             "peak_mib": peak})
                crops[f"{method} {ratio:g}x {'cal.' if calibrated else 'weight'}"] = outs[evals[0][0]]
                r = rows[-1]
                print(f"  {method} {ratio:g}x {'calibrated' if calibrated else 'weight fit'}: {r['psnr']:.2f} dB "
                      f"(layer ratio {r['layer_ratio']:.2f}x, {seconds:.0f} s, peak {peak:.0f} MiB)", flush=True)
    return rows, crops


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | ratio on the compressed convs | PSNR vs uncompressed, weight fit (dB) | "
             "PSNR, calibrated (dB) | compress time weight / calibrated (s) | peak RSS calibrated (MiB) |",
             "|---|---|---|---|---|---|"]
    for w, c in zip(rows[0::2], rows[1::2]):
        lines.append(f"| {w['method']} | {c['layer_ratio']:.2f}x | {w['psnr']:.2f} | {c['psnr']:.2f} | "
                     f"{w['seconds']:.0f} / {c['seconds']:.0f} | {c['peak_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=1, help="compress the convs of the first N RRDB blocks")
    p.add_argument("--ratios", type=float, nargs="+", default=[2, 4])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--calib", nargs="+", default=["astronaut", "coffee"])
    p.add_argument("--eval", nargs="+", default=["chelsea", "rocket"])
    p.add_argument("--crops", type=int, default=8, help="calibration crops")
    p.add_argument("--lr-crop", type=int, default=16, help="calibration crop size (low resolution)")
    p.add_argument("--eval-lr-crop", type=int, default=16, help="evaluation crop size (low resolution)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows, crops = run(args)
    cmd = "python benchmarks/calibration_sr.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([f"<!-- generated by `{cmd.strip()}`; do not edit -->",
                      f"Compressed: the convs of the first {args.blocks} RRDB block(s). Calibration: {args.crops} "
                      f"random {args.lr_crop}x{args.lr_crop} low-resolution crops of {', '.join(args.calib)}; "
                      f"evaluation: centre crops ({args.eval_lr_crop}x{args.eval_lr_crop} in, x4 out) of "
                      f"{', '.join(args.eval)}. torch {torch.__version__}, {args.threads} thread(s) on a shared "
                      f"2-core machine; total {time.perf_counter() - t0:.0f} s.", "", table(rows), ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration_sr.md").write_text(text)
    save_crops(crops, args.out / "calibration_sr.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
