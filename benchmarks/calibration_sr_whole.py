"""Real-ESRGAN x4plus: weight fit vs calibrated (output fit) on all convs or on the first RRDB blocks.

Every conv that ``compress`` does not skip by default (``skip_first`` keeps ``conv_first``
dense) is compressed with ``--whole``; ``--blocks N`` compresses only the convs of the
first N RRDB blocks (15 each, ``min_kernel_size=0``) at ``--ratios`` on those convs.
Allocation by weight error with the output objective (``allocation="sensitivity"`` needs
one forward pass of the network per candidate and layer: about 350 layers x 12 ratios
here, out of reach on 2 shared cores). Calibration: ``--crops`` random ``--lr-crop``
low-resolution crops of the ``--calib`` photos (downscaled 4x by area); evaluation: PSNR
of the x4 output against the uncompressed model's on centre crops of the other photos
``--eval`` (disjoint). Each calibrated run is repeated for every ``--group-bytes`` value
(``compress(fit_group_bytes=...)``; 0 is the exact sequential fit) and every
``--drift-correction`` value (``compression.FIT_DRIFT_CORRECTION``), and reports the wall
time of the calibrated compress, the part of it spent streaming Gram matrices (forward
passes) and the peak resident memory (``VmHWM``, reset before each run). The per-layer
search goes through ``compress(cache_dir=--cache-dir)``, so repeating a method costs only
the fits. ``--save-dir`` keeps every compressed model; ``--load`` evaluates saved ones instead
of compressing. ``--distill-epochs N`` then fine-tunes every model against the dense one with
``sekron.torch.distill`` (MSE on the x4 outputs, no labels, teacher outputs computed once):
on ``--distill-crops`` random crops of the calibration photos only (another seed than the
calibration crops), a ``--distill-holdout`` fraction of them held out to choose the epoch;
the evaluation PSNR after every epoch is reported, never used. Run::

    python benchmarks/calibration_sr_whole.py --whole --methods tt --ratios 4
    python benchmarks/calibration_sr_whole.py --whole --load MODEL.pt --distill-epochs 8 --distill-crops 256
    python benchmarks/calibration_sr_whole.py --blocks 1 --methods tt --group-bytes 0 67108864 1000000000
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_digits import peak_mib, reset_peak
from calibration_sr import random_crops
from super_resolution import build_realesrgan, photos, psnr, save_crops

from sekron.torch import compress, distill
from sekron.torch.calibrate import run_with_hooks

compress_module = importlib.import_module("sekron.torch.compression")

F = torch.nn.functional
ROOT = Path(__file__).resolve().parent.parent
METHODS = ("sekron", "tt", "tr", "cp", "tucker")


class StreamTimer:
    """Wraps ``stream_group_grams`` in sekron.torch.compression: seconds spent streaming, and groups streamed."""

    def __init__(self) -> None:
        self.seconds, self.groups = 0.0, 0
        self.inner = compress_module.stream_group_grams

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
            self.groups += 1


class FitMemory:
    """Wraps ``_fit_outputs`` in sekron.torch.compression: the peak resident memory of the output fit alone.

    Before the fit, the in-memory search cache is dropped (its disk copy stays), freed memory is
    handed back to the OS (``malloc_trim``) and ``VmHWM`` is reset; ``start_mib`` is the resident
    size the fit starts from (the model, its working copy, the dense reference, torch itself) and
    ``peak_mib`` the peak during the fit, which cannot be below ``start_mib``.
    """

    def __init__(self) -> None:
        self.start_mib, self.peak_mib = float("nan"), float("nan")
        self.inner = compress_module._fit_outputs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        caches = importlib.import_module("sekron.structure_search._cache")
        for cache in [caches.default_cache(), *caches._BY_DIR.values()]:
            cache.clear()
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start_mib = rss_mib()
        reset_peak()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.peak_mib = peak_mib()


def rss_mib() -> float:
    """The process's current resident size (``VmRSS``, Linux; NaN elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


STAGES = [f"body.{b}" for b in range(23)] + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def stage_outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of every RRDB block and of the convs after the body (``STAGES``) in ``model(x)``."""
    got: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())
    name = {id(mods[n]): n for n in STAGES if n in mods}
    run_with_hooks(model, [mods[n] for n in name.values()],
                   lambda m, a, o: got.__setitem__(name[id(m)], o.detach().clone()), x)
    return got


def stage_errors(dense: dict[str, torch.Tensor], model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Relative error ``||h - d|| / ||d||`` of every stage of ``model`` against the dense stage outputs ``dense``."""
    got = stage_outputs(model, x)
    return {n: float((got[n] - d).norm() / d.norm().clamp_min(1e-30)) for n, d in dense.items()}


def run(args: Any) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    model = build_realesrgan()
    total = sum(p.numel() for p in model.parameters())
    if args.whole:
        include, sub, extra = None, None, {}
    else:
        include = [f"body.{b}.*" for b in range(args.blocks)]
        sub = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)
                  and any(n.startswith(f"body.{b}.") for b in range(args.blocks)))
        extra = {"min_kernel_size": 0}
    cal = random_crops(args.calib, args.crops, args.lr_crop, args.seed)
    evals = [(n, F.avg_pool2d(hr, 4)) for n, hr in photos(args.eval, 4 * args.eval_lr_crop)]
    with torch.no_grad():
        ref = {n: model(lr) for n, lr in evals}
    crops = {"uncompressed": ref[evals[0][0]]}
    eval_x = torch.cat([lr for _, lr in evals])
    dense_stages = {"eval": stage_outputs(model, eval_x), "calibration": stage_outputs(model, cal)}
    timer = StreamTimer()
    compress_module.stream_group_grams = timer  # type: ignore[assignment]
    fit_memory = FitMemory()
    compress_module._fit_outputs = fit_memory  # type: ignore[assignment]
    rows: list[dict[str, Any]] = []

    def record(small: torch.nn.Module, row: dict[str, Any], layer_rows: list[dict[str, Any]]) -> None:
        """PSNR on the evaluation photos, stage errors, crops, the saved model; appends ``row`` to the outputs."""
        with torch.no_grad():
            outs = {n: small(lr) for n, lr in evals}
        row["psnr"] = float(np.mean([psnr(outs[n], ref[n]) for n in outs]))
        rows.append(row)
        stages = {k: stage_errors(d, small, eval_x if k == "eval" else cal) for k, d in dense_stages.items()}
        row["stage_error_eval"] = {k: round(v, 4) for k, v in stages["eval"].items()}
        with open(args.out / f"{args.tag}_layers.jsonl", "a") as fh:
            fh.write(json.dumps({"method": row["method"], "ratio": row["ratio"], "run": row["run"],
                                 "layers": layer_rows, "stage_errors": stages}) + "\n")
        name = f"{row['method']} {row['ratio']:g}x {row['run']}" if row["ratio"] == row["ratio"] else row["run"]
        crops[row.get("title", name)] = outs[evals[0][0]]
        if args.save_dir is not None:  # the compressed model, for analyses after the run
            args.save_dir.mkdir(parents=True, exist_ok=True)
            torch.save(small, args.save_dir / f"{args.tag}_{name.replace(' ', '_')}.pt")
        print(json.dumps(row), flush=True)
        with open(args.out / f"{args.tag}.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        save_crops(crops, args.out / f"{args.tag}.png")

    def distilled(small: torch.nn.Module, row: dict[str, Any]) -> None:
        """With ``--distill-epochs``: ``distill`` a copy of ``small`` against the dense model, label-free, on
        ``--distill-crops`` crops of the calibration photos; records it as another row."""
        if args.distill_epochs <= 0:
            return
        data = random_crops(args.calib, args.distill_crops, args.distill_crop or args.lr_crop, args.seed + 1)
        if args.distill_dihedral:  # each crop flipped / rotated by a random one of the 8 symmetries of the square
            pick = np.random.default_rng(args.seed + 2).integers(0, 8, len(data))
            data = torch.stack([torch.rot90(x.flip(-1) if k >= 4 else x, int(k % 4), (-2, -1))
                                for x, k in zip(data, pick)])
        history: list[dict[str, Any]] = []
        student = copy.deepcopy(small)

        def log(epoch: int, held: float | None) -> None:  # evaluation PSNR per epoch: reported, never used
            with torch.no_grad():
                got = float(np.mean([psnr(student(lr), ref[n]) for n, lr in evals]))
            history.append({"epoch": epoch, "held_mse": held, "psnr": got,
                            "seconds": time.perf_counter() - t0})
            print(json.dumps(history[-1]), flush=True)

        gc.collect()
        reset_peak()
        t0 = time.perf_counter()
        distill(student, model, data, epochs=args.distill_epochs, lr=args.distill_lr, loss="mse",
                batch_size=args.distill_batch_size, holdout=args.distill_holdout, schedule=args.distill_schedule,
                seed=args.seed, cache_teacher=True, progress=args.progress, on_epoch=log,
                features=args.distill_features, feature_weight=args.distill_feature_weight)
        new = {**{k: v for k, v in row.items() if k not in ("psnr", "stage_error_eval")},
               "run": f"{row['run']} + distill {args.distill_epochs} ep.", "seconds": time.perf_counter() - t0,
               "title": row.get("title", f"{row['method']} {row['ratio']:g}x") + " + distill",
               "calibration_seconds": None, "stream_seconds": 0.0, "groups": 0, "peak_mib": peak_mib(),
               "fit_start_mib": float("nan"), "fit_peak_mib": float("nan"), "distill_history": history,
               "distill": {k: getattr(args, f"distill_{k}") for k in ("epochs", "lr", "crops", "crop", "batch_size",
                                                                     "holdout", "schedule", "dihedral", "features",
                                                                     "feature_weight")}}
        record(student, new, [])

    for ratio in [] if args.load else args.ratios:  # with --load: only the loaded students
        whole = ratio if sub is None else total / (total - sub + sub / ratio)
        for method in args.methods:
            runs: list[tuple[str, dict[str, Any]]] = [] if args.no_weight else [("weight", {})]
            runs += [(f"cal. g={g}" + ("" if c == 1 else f" c={c:g}"),
                      {"calibration": cal, "allocation": "error", "batch_size": args.batch_size,
                       "fit_group_bytes": g, "fit_steps": args.fit_steps, "max_samples": args.max_samples,
                       "refit_dense": not args.no_refit_dense, "correction": c})
                     for c in args.drift_correction for g in args.group_bytes]
            for label, kw in runs:
                compress_module.FIT_DRIFT_CORRECTION = kw.pop("correction", 1.0)
                reset_peak()
                timer.seconds, timer.groups = 0.0, 0
                fit_memory.start_mib = fit_memory.peak_mib = float("nan")
                t0 = time.perf_counter()
                small, rep = compress(model, whole, method=method, include=include, progress=args.progress,
                                      n_jobs=args.n_jobs, cache_dir=args.cache_dir, **extra, **kw)
                seconds, peak = time.perf_counter() - t0, peak_mib()
                comp = [r for r in rep if r["status"] == "compressed"]
                row = {"ratio": ratio, "method": method, "run": label, "layers": len(comp),
                       "model_ratio": rep.totals["ratio"],
                       "layer_ratio": sum(r["params_before"] for r in comp) / sum(r["params_after"] for r in comp),
                       "seconds": seconds,
                       "calibration_seconds": rep.totals["calibration_seconds"], "stream_seconds": timer.seconds,
                       "groups": timer.groups, "peak_mib": peak, "fit_start_mib": fit_memory.start_mib,
                       "fit_peak_mib": fit_memory.peak_mib}
                if "calibration" in kw:
                    errs = [r["output_error"] for r in rep if "output_error" in r]
                    row["median_layer_output_error"] = float(np.median(errs)) if errs else None
                layer_rows = [{k: r.get(k) for k in ("name", "status", "error", "output_error_weight_fit",
                                                     "output_error", "params_before", "params_after")} for r in rep]
                record(small, row, layer_rows)
                distilled(small, row)
    for path in args.load:  # students saved by an earlier run (--save-dir): evaluated, then distilled
        small = torch.load(path, weights_only=False)
        comp = [m for m in small.modules() if m.__class__.__module__.startswith("sekron")]
        row = {"ratio": float("nan"), "method": "loaded", "run": Path(path).stem, "layers": len(comp),
               "model_ratio": total / sum(p.numel() for p in small.parameters()), "layer_ratio": float("nan"),
               "seconds": 0.0, "calibration_seconds": None, "stream_seconds": 0.0, "groups": 0,
               "peak_mib": float("nan"), "title": f"loaded {Path(path).stem[-24:]}"}
        record(small, row, [])
        distilled(small, row)
    return rows, crops


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | model ratio | convs | run | PSNR vs uncompressed (dB) | compress (s) | "
             "of which calibration / streaming (s) | groups | peak RSS (MiB) | output fit: RSS at start / peak (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cal = "" if r["calibration_seconds"] is None else f"{r['calibration_seconds']:.0f} / {r['stream_seconds']:.0f}"
        start, top = r.get("fit_start_mib", float("nan")), r.get("fit_peak_mib", float("nan"))
        fit = "" if start != start else f"{start:,.0f} / {top:,.0f}"
        lines.append(f"| {r['method']} | {r['model_ratio']:.2f}x | {r['layers']} | {r['run']} | {r['psnr']:.2f} | "
                     f"{r['seconds']:.0f} | {cal} | {r['groups'] or ''} | {r['peak_mib']:.0f} | {fit} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--whole", action="store_true", help="every conv compress does not skip by default")
    p.add_argument("--blocks", type=int, default=1, help="without --whole: the convs of the first N RRDB blocks")
    p.add_argument("--ratios", type=float, nargs="+", default=[4])
    p.add_argument("--methods", nargs="+", default=["tt"], choices=METHODS)
    p.add_argument("--calib", nargs="+", default=["astronaut", "coffee"])
    p.add_argument("--eval", nargs="+", default=["chelsea", "rocket"])
    p.add_argument("--crops", type=int, default=8, help="calibration crops")
    p.add_argument("--lr-crop", type=int, default=16, help="calibration crop size (low resolution)")
    p.add_argument("--eval-lr-crop", type=int, default=32, help="evaluation crop size (low resolution)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--group-bytes", type=int, nargs="+", default=[compress_module.FIT_GROUP_BYTES])
    p.add_argument("--fit-steps", type=int, default=15)
    p.add_argument("--max-samples", type=int, default=32768)
    p.add_argument("--progress", action="store_true", help="compress's progress bars (on stderr)")
    p.add_argument("--no-refit-dense", action="store_true", help="compress(refit_dense=False)")
    p.add_argument("--no-weight", action="store_true", help="only the calibrated runs")
    p.add_argument("--weight-fit-members", action="store_true",
                   help="groups streamed with their members at the weight fit (FIT_GROUP_DENSE_MEMBERS=False)")
    p.add_argument("--drift-correction", type=float, nargs="+", default=[1.0],
                   help="calibrated runs with compression.FIT_DRIFT_CORRECTION at each value (1: the plain output fit; "
                        "0: each layer fitted to its dense layer on the actual inputs)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--load", nargs="+", default=[],
                   help="evaluate (and distill) these saved students instead of compressing")
    p.add_argument("--distill-epochs", type=int, default=0,
                   help="also distill every model against the dense one for N epochs (0: not)")
    p.add_argument("--distill-lr", type=float, default=1e-4)
    p.add_argument("--distill-crops", type=int, default=256,
                   help="distillation inputs: random crops of the --calib photos (seed --seed + 1)")
    p.add_argument("--distill-crop", type=int, default=0, help="their size (low resolution); 0: --lr-crop")
    p.add_argument("--distill-batch-size", type=int, default=8)
    p.add_argument("--distill-holdout", type=float, default=0.25,
                   help="fraction of the distillation crops held out to choose the epoch")
    p.add_argument("--distill-schedule", default="cosine", choices=["constant", "cosine"])
    p.add_argument("--distill-dihedral", action="store_true",
                   help="each distillation crop flipped/rotated by a random symmetry of the square")
    p.add_argument("--distill-features", nargs="*", default=[],
                   help="submodules (e.g. body.5 conv_body) whose outputs are matched too (distill(features=...))")
    p.add_argument("--distill-feature-weight", type=float, default=1.0)
    p.add_argument("--save-dir", type=Path, default=None, help="torch.save every compressed model there")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-jobs", type=int, default=1, help="worker processes of the per-layer search")
    p.add_argument("--tag", default="calibration_sr_whole", help="output file names")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    compress_module.FIT_GROUP_DENSE_MEMBERS = not args.weight_fit_members
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, _ = run(args)
    cmd = "python benchmarks/calibration_sr_whole.py " + " ".join(sys.argv[1:] if argv is None else argv)
    what = "every conv but conv_first" if args.whole else f"the convs of the first {args.blocks} RRDB block(s)"
    text = "\n".join([f"<!-- generated by `{cmd.strip()}`; do not edit -->",
                      f"Compressed: {what}. Calibration: {args.crops} random {args.lr_crop}x{args.lr_crop} "
                      f"low-resolution crops of {', '.join(args.calib)} (batches of {args.batch_size}); "
                      f"evaluation: centre crops ({args.eval_lr_crop}x{args.eval_lr_crop} in, x4 out) of "
                      f"{', '.join(args.eval)}. fit_steps={args.fit_steps}, max_samples={args.max_samples}. "
                      f"torch {torch.__version__}, {args.threads} thread(s) on a shared 2-core machine; total "
                      f"{time.perf_counter() - t0:.0f} s.", "", table(rows), ""])
    (args.out / f"{args.tag}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
