"""ddddocr's text detector compressed at a MAC ratio with calibration: which levers keep the detections.

Stages (comma list, run in one process so that ``compress``'s in-memory search cache is reused):

- ``orig``: the onnx2torch conversion against the original file (a sanity row);
- ``weight``: weight-only ``compress(ratio, budget="macs", method="nested2")``;
- ``solo``: each layer the weight-only run compresses, alone in the dense model (its damage);
- ``fit``: the same compress with ``calibration=`` (output fit; ``--group`` bytes for the grouped fit,
  ``--allocation``, ``--exclude``, ``--max-samples``, ``--fit-steps``), saved as ``TAG_fit.pt``;
- ``distill``: ``sekron.torch.distill`` of that model towards the dense one on ``--distill-n`` unlabeled
  captcha images (a quarter held out), saved as ``TAG_distill.pt``;
- ``export``: ``to_standard`` and ONNX of the saved models (``TAG_fit.onnx``, ``TAG_distill.onnx``); compare and
  time them against the original with ``bench_deploy.py --eval-files`` / ``--time-files``.

Every evaluated model is compared with the original file (onnxruntime) on bench_deploy's 8 captcha-like test images
(seed 0); calibration and distillation images are drawn with seed 1000 (checked disjoint). One JSON line per model
goes to ``OUT/TAG.jsonl``: boxes found / matched (IoU >= 0.5, greedy by score), mean IoU, max score difference of
matched boxes, relative output error.

    OMP_NUM_THREADS=2 nice -n 19 python benchmarks/ddddocr_calibrated.py --stages fit,distill,export --calib 8 \\
        --max-samples 8192 --fit-steps 8 --distill-n 32 --distill-epochs 3 --tag f8 --out /tmp/dd
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_deploy as bd

from sekron.datasets import DDDDOCR_INSTALL, package_dir
from sekron.torch import compress, distill, to_standard


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--stages", default="weight")
    ap.add_argument("--ratio", type=float, default=2.0, help="deployed MAC ratio")
    ap.add_argument("--calib", type=int, default=8, help="calibration images")
    ap.add_argument("--max-samples", type=int, default=8192)
    ap.add_argument("--fit-steps", type=int, default=8)
    ap.add_argument("--group", type=int, default=0, help="fit_group_bytes (0: the exact sequential fit)")
    ap.add_argument("--former-groups", action="store_true",
                    help="grouped fit with FIT_GROUP_DENSE_MEMBERS off (the former behaviour, for comparison)")
    ap.add_argument("--exclude", default="", help="comma list of layer names kept dense")
    ap.add_argument("--allocation", default="error")
    ap.add_argument("--sens-steps", type=int, default=0, help="sensitivity_steps with --allocation sensitivity")
    ap.add_argument("--method", default="nested2")
    ap.add_argument("--distill-n", type=int, default=32)
    ap.add_argument("--distill-epochs", type=int, default=3)
    ap.add_argument("--distill-lr", type=float, default=1e-4)
    ap.add_argument("--tag", default="run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default="/tmp/ddddocr_calibrated")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    out = args.out
    bd.stub_torchvision()
    import onnx2torch

    src = str(package_dir("ddddocr", DDDDOCR_INSTALL) / "common_det.onnx")
    model = onnx2torch.convert(src).eval()
    test = [bd.det_preprocess(im) for im in bd.captcha_images(8)]
    sess = bd.session(src, 2)
    ref_out = [sess.run(None, {"images": x[None]})[0] for x, _ in test]
    ref_det = [bd.det_postprocess(o, r) for o, (_, r) in zip(ref_out, test)]
    calib_all = np.stack([bd.det_preprocess(im)[0]
                          for im in bd.captcha_images(max(args.calib, args.distill_n), seed=1000)])
    for x, _ in test:  # the calibration images are not test images
        assert not any(np.array_equal(x, c) for c in calib_all)
    log = open(f"{out}/{args.tag}.jsonl", "a")
    if args.former_groups:  # the former grouped fit, for comparison
        sys.modules["sekron.torch.compression"].FIT_GROUP_DENSE_MEMBERS = False  # type: ignore[attr-defined]

    def evaluate(m: torch.nn.Module, name: str, extra: dict[str, Any] | None = None) -> None:
        m = m.eval()
        with torch.no_grad():
            outs = [m(torch.from_numpy(x[None])).numpy() for x, _ in test]
        ms = [bd.match(a, bd.det_postprocess(o, r)) for a, o, (_, r) in zip(ref_det, outs, test)]
        rel = float(np.sqrt(sum(((o - r) ** 2).sum() for o, r in zip(outs, ref_out))
                            / sum((r ** 2).sum() for r in ref_out)))
        row = {"name": name, "ref": sum(d["ref"] for d in ms), "got": sum(d["got"] for d in ms),
               "matched": sum(d["matched"] for d in ms),
               "mean_iou": float(np.mean([d["mean_iou"] for d in ms if d["matched"]] or [0])),
               "max_dscore": max(d["max_dscore"] for d in ms), "rel_out_err": rel,
               "per_image": [(d["ref"], d["got"], d["matched"]) for d in ms], **(extra or {})}
        print(json.dumps(row), flush=True)
        log.write(json.dumps(row) + "\n")
        log.flush()

    def rows(rep: Any) -> list[dict[str, Any]]:
        keys = ("name", "status", "structure", "rank", "error", "output_error_weight_fit", "output_error",
                "sensitivity", "macs_before", "deployed_macs", "fit_samples")
        return [{k: r.get(k) for k in keys} for r in rep]

    common: dict[str, Any] = dict(input_shape=(1, 3, 416, 416), progress=False, budget="macs",
                                  cache_dir=args.cache_dir, method=args.method,
                                  exclude=[e for e in args.exclude.split(",") if e] or None)
    stages = args.stages.split(",")
    if "orig" in stages:
        evaluate(model, "original (onnx2torch)")
    small = None
    if "weight" in stages or "solo" in stages:
        t0 = time.perf_counter()
        small, rep = compress(model, args.ratio, **common)
        print(rep, flush=True)
        evaluate(small, f"{args.ratio:g}x weight-only", {"compress_s": time.perf_counter() - t0,
                                                          "deployed_macs_ratio": rep.totals["deployed_macs_ratio"]})
        json.dump(rows(rep), open(f"{out}/{args.tag}_weight_report.json", "w"), indent=0)
        if "solo" in stages:
            for r in rep:
                if r["status"] == "compressed":
                    m = copy.deepcopy(model)
                    m.set_submodule(r["name"], copy.deepcopy(small.get_submodule(r["name"])))
                    evaluate(m, f"solo {r['name']}", {"weight_err": r["error"]})
    if "fit" in stages:
        calib = torch.from_numpy(calib_all[:args.calib])
        t0 = time.perf_counter()
        small, rep = compress(model, args.ratio, calibration=calib, allocation=args.allocation, batch_size=4,
                              max_samples=args.max_samples, fit_steps=args.fit_steps, fit_group_bytes=args.group,
                              sensitivity_steps=args.sens_steps, **common)
        print(rep, flush=True)
        evaluate(small, f"{args.ratio:g}x fit calib={args.calib} max_samples={args.max_samples} "
                 f"steps={args.fit_steps} group={args.group} former_groups={args.former_groups} "
                 f"alloc={args.allocation} "
                 f"exclude={args.exclude}",
                 {"compress_s": time.perf_counter() - t0, "calibration_s": rep.totals["calibration_seconds"],
                  "deployed_macs_ratio": rep.totals["deployed_macs_ratio"]})
        json.dump(rows(rep), open(f"{out}/{args.tag}_fit_report.json", "w"), indent=0)
        torch.save(small, f"{out}/{args.tag}_fit.pt")
    if "distill" in stages:
        if small is None:
            small = torch.load(f"{out}/{args.tag}_fit.pt", weights_only=False)
        t0 = time.perf_counter()
        distill(small, model, torch.from_numpy(calib_all[:args.distill_n]), epochs=args.distill_epochs,
                lr=args.distill_lr, batch_size=4, holdout=0.25, progress=False, schedule="cosine")
        evaluate(small, f"{args.ratio:g}x + distill n={args.distill_n} epochs={args.distill_epochs} "
                 f"lr={args.distill_lr}", {"distill_s": time.perf_counter() - t0})
        torch.save(small, f"{out}/{args.tag}_distill.pt")
    if "export" in stages:
        x1 = torch.from_numpy(test[0][0][None])
        for kind in ("fit", "distill"):
            p = f"{out}/{args.tag}_{kind}.pt"
            if os.path.exists(p):
                m = torch.load(p, weights_only=False).eval()
                print("exported", bd.export(to_standard(m).eval(), x1, f"{out}/{args.tag}_{kind}.onnx"), flush=True)


if __name__ == "__main__":
    main()
