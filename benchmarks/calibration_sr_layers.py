"""Real-ESRGAN x4plus: where a compressed model departs from the dense one, conv by conv.

Loads compressed models saved by ``calibration_sr_whole.py --save-dir`` and, for every conv
in execution order, compares them with the dense model on the evaluation photos (and on the
calibration crops with ``--calibration``):

- ``input``: relative error of the conv's input in the compressed model (the drift its prefix causes);
- ``in_context``: relative error of the conv's output in the compressed model;
- ``isolated``: relative error of the compressed conv applied to the *dense* input (what the
  layer alone costs, in the metric of the real activations);
- ``stages``: relative error of the output of every RRDB block and of the convs after the body
  (``stage_norm_ratio``: the norm of that output over the dense one's).

All errors are ``||h - d|| / ||d||`` over the batch. Run::

    python benchmarks/calibration_sr_layers.py /work/runs/esrgan/models/*.pt --out /work/runs/esrgan/layers.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_sr import random_crops
from calibration_sr_whole import STAGES
from super_resolution import build_realesrgan, photos, psnr

from sekron.torch.calibrate import run_with_hooks

F = torch.nn.functional


def conv_names(model: torch.nn.Module) -> list[str]:
    """Names of the conv layers (dense or compressed: anything with ``kernel_size``) in module order."""
    return [n for n, m in model.named_modules() if hasattr(m, "kernel_size") and n]


def record(model: torch.nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (input, output)}`` of the named modules in ``model(x)``."""
    got: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    mods = dict(model.named_modules())
    name = {id(mods[n]): n for n in names}
    run_with_hooks(model, [mods[n] for n in names],
                   lambda m, a, o: got.__setitem__(name[id(m)], (a[0].detach().clone(), o.detach().clone())), x)
    return got


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).double().norm() / b.double().norm().clamp_min(1e-30))


def diagnose(dense: torch.nn.Module, small: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    names = conv_names(dense)
    ref = record(dense, names + STAGES, x)
    got = record(small, names + STAGES, x)
    mods = dict(small.named_modules())
    layers = []
    for n in names:
        xd, yd = ref[n]
        xh, yh = got[n]
        with torch.no_grad():
            iso = mods[n](xd)
        layers.append({"name": n, "compressed": type(mods[n]).__name__ != "Conv2d", "input": rel(xh, xd),
                       "in_context": rel(yh, yd), "isolated": rel(iso, yd)})
    with torch.no_grad():
        out_d, out_h = dense(x), small(x)
    return {"psnr": psnr(out_h, out_d), "layers": layers, "max_abs_output": float(out_h.abs().max()),
            "finite": bool(torch.isfinite(out_h).all()),
            "stages": {n: rel(got[n][1], ref[n][1]) for n in STAGES},
            "stage_norm_ratio": {n: float(got[n][1].norm() / ref[n][1].norm()) for n in STAGES}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--eval", nargs="+", default=["chelsea", "rocket"])
    p.add_argument("--eval-lr-crop", type=int, default=32)
    p.add_argument("--calibration", action="store_true", help="also on the calibration crops (as in the run)")
    p.add_argument("--calib", nargs="+", default=["astronaut", "coffee"])
    p.add_argument("--crops", type=int, default=8)
    p.add_argument("--lr-crop", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dense = build_realesrgan().eval()
    inputs = {"eval": torch.cat([F.avg_pool2d(hr, 4) for _, hr in photos(args.eval, 4 * args.eval_lr_crop)])}
    if args.calibration:
        inputs["calibration"] = random_crops(args.calib, args.crops, args.lr_crop, args.seed)
    out = {}
    for path in args.models:
        small = torch.load(path, weights_only=False).eval()
        out[path.name] = {k: diagnose(dense, small, x) for k, x in inputs.items()}
        d = out[path.name]["eval"]
        comp = [r for r in d["layers"] if r["compressed"]]
        iso, ctx = np.median([r["isolated"] for r in comp]), np.median([r["in_context"] for r in comp])
        print(f"{path.name}: {d['psnr']:.2f} dB; compressed convs {len(comp)}, median isolated error {iso:.3f}, "
              f"median in-context {ctx:.3f}; "
              "stages " + " ".join(f"{k.replace('body.', 'b')}={v:.2f}" for k, v in d["stages"].items()), flush=True)
    args.out.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
