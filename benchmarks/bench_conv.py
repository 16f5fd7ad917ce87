"""Benchmark: SeKron convolution (sekron.conv) against dense F.conv2d on ResNet-like layers.

PyTorch CPU, 2 threads, batch 16, 3x3 kernels with padding 1. For every layer and
compression target (about 5x, 10x, 20x fewer parameters) the two-factor structures of
``sekron.structures`` get the single bond size that meets the budget; two of them are
timed: the one the planner models cheapest, and the most balanced Kronecker split.

Variants, timed interleaved in one process (median over rounds; ``--stat min`` for the minimum):
dense ``F.conv2d`` with the kernel given; factorized in the paper's order; factorized in
the planned order; ``implementation="auto"``; the same stages written by hand as plain
``F.conv2d`` calls (precomputed weights, the same permutes); and the stage convs alone
(contiguous inputs prepared beforehand, a lower bound). The MAC ratio sits next to the
time ratio. tensorly-torch's CP and Tucker convolutions are added when ``tltorch`` is
importable (optional dependency ``tensorly-torch``).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_conv.py            # full run, writes docs/
    python benchmarks/bench_conv.py --quick --out /tmp/bench      # smoke run, seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sekron._backend import using
from sekron.convolution import _plan as cp
from sekron.convolution._backends import conv_ops
from sekron.convolution._conv import _kernel, _resolve, conv, conv_cost
from sekron.sekron_tensor import SeKronTensor
from sekron.structure import Structure, structures

LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]
RATIOS = (5, 10, 20)
PAPER_PEAK_LIMIT = 1.5e8  # elements; larger paper-order intermediates are not run (memory)
PAPER_SCORE_LIMIT = 40.0  # nor paper orders modelled > 40x slower than dense (time)


DEVICE = torch.device("cpu")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _where(threads: int) -> str:
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"CPU, {threads} thread(s)"


#: how rounds are summarised: "median" (default; oneDNN's speed varies from call to call with the
#: buffers it is given, so the minimum rewards one lucky call) or "min" (robust to contention)
STAT = "median"


def timeit(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Wall time in ms of each function (median or min over rounds), timed round-robin so
    contention hits all alike; in every round each function runs twice and the second call is timed."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():
            f()
        _sync()
        for _ in range(rounds):
            for k, f in fns.items():
                f()  # untimed: each timed call follows a call of its own (the allocator's state
                _sync()  # after another variant's large buffers otherwise skews the next call)
                t = time.perf_counter()
                f()
                _sync()
                times[k].append((time.perf_counter() - t) * 1e3)
    summary = np.median if STAT == "median" else np.min
    return {k: float(summary(v)) for k, v in times.items()}


def candidates(C: int, ratio: float, batch: int, L: int) -> list[tuple[Structure, int, Any]]:
    """Two-factor structures of (C, C, 3, 3) with the bond size that gives ~ratio fewer params."""
    dense = C * C * 9
    out = []
    for st in structures((C, C, 3, 3), 2, "nested", exclude_trivial=True):
        P = st.factor_sizes
        r = max(1, round(dense / ratio / sum(P)))
        r = min(r, min(P))
        if not 0.8 <= dense / (r * sum(P)) / ratio <= 1.25:
            continue
        sk = SeKronTensor([np.zeros((r, *s)) for s in st.factor_shapes], st)
        out.append((st, r, conv_cost(sk, (batch, C, L, L), padding=1)))
    return out


def pick(cands: list[tuple[Structure, int, Any]], batch: int, L: int) -> list[tuple[str, Structure, int, Any]]:
    planned = min(cands, key=lambda c: min(c[2].best.score, c[2].dense.score))
    C = cands[0][0].shape[1]

    def imbalance(c: tuple[Structure, int, Any]) -> float:
        (f1, c1, h1, w1), _ = c[0].factor_shapes
        return abs(math.log(f1 / math.sqrt(C))) + abs(math.log(c1 / math.sqrt(C))) + (0 if (h1, w1) == (3, 3) else 10)

    balanced = min(cands, key=imbalance)
    picks = [("cheapest", *planned)]
    if balanced[0] != planned[0]:
        picks.append(("balanced", *balanced))
    return picks


def _conv(x: Any) -> Callable[..., Any]:
    return (F.conv1d, F.conv2d, F.conv3d)[x.ndim - 3]


def hand_written(x: Any, sk: SeKronTensor, plan: cp.Plan) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The plan's stages as plain F.conv2d calls: with the permutes, and the convs alone."""
    ws = [sk.factors[s.factor].permute(s.weight_perm).reshape(s.weight_shape).contiguous() for s in plan.stages]
    ins, y = [], x.reshape(plan.in_shape)
    with torch.no_grad():
        for s, w in zip(plan.stages, ws):
            if s.perm is not None:
                y = y.permute((*s.perm, len(s.perm), len(s.perm) + 1))
            ins.append(y.reshape(s.conv_in_shape).contiguous())
            y = _conv(ins[-1])(ins[-1], w, None, s.stride, s.padding, s.dilation, s.groups).reshape(s.out_shape)

    def stages() -> Any:
        y = x.reshape(plan.in_shape)
        for s, w in zip(plan.stages, ws):
            if s.perm is not None:
                y = y.permute((*s.perm, len(s.perm), len(s.perm) + 1))
            y = y.reshape(s.conv_in_shape)
            y = _conv(y)(y, w, None, s.stride, s.padding, s.dilation, s.groups)
            y = y.reshape(s.out_shape)
        if plan.final_perm is not None:
            y = y.permute((*plan.final_perm, len(plan.final_perm), len(plan.final_perm) + 1))
        return y.reshape(plan.out_shape)

    def convs_only() -> None:
        for s, w, i in zip(plan.stages, ws, ins):
            _conv(i)(i, w, None, s.stride, s.padding, s.dilation, s.groups)

    return stages, convs_only


def _form_kernel(sk: SeKronTensor, steps: Any) -> Any:
    with using("pytorch"):
        return _kernel(conv_ops("pytorch"), sk, steps)


def tltorch_variants(C: int, ratio: float, x: Any) -> dict[str, Callable[[], Any]]:
    if importlib.util.find_spec("tltorch") is None:
        return {}
    import tensorly as tl

    previous = tl.get_backend()
    import tltorch  # its import sets tensorly's global backend to pytorch: put it back afterwards

    tl.set_backend(previous)

    base = torch.nn.Conv2d(C, C, 3, padding=1, bias=False, device=DEVICE)
    out = {}
    for fact in ("cp", "tucker"):
        with using("pytorch"):  # tltorch needs tensorly's pytorch backend; this thread only
            layer = tltorch.FactorizedConv.from_conv(base, rank=1 / ratio, factorization=fact,
                                                     implementation="factorized", decompose_weights=False).to(DEVICE)
        out[f"tltorch_{fact}"] = lambda layer=layer: _tltorch_forward(layer, x)
    return out


def _tltorch_forward(layer: Any, x: Any) -> Any:
    with using("pytorch"):
        return layer(x)


def run_row(C: int, L: int, batch: int, ratio: float, label: str, st: Structure, r: int, cost: Any,
            rounds: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    sk = SeKronTensor([(torch.randn(r, *s, generator=gen) / math.sqrt(r * math.prod(s[1:]))).to(DEVICE)
                       for s in st.factor_shapes], st)
    x = torch.randn(batch, C, L, L, generator=gen).to(DEVICE)
    W = sk.to_tensor().contiguous()
    spec, geom = _resolve(x, sk, 1, 1, 1, "zeros")
    plan = cp.best_plan(spec, geom)
    stages, convs_only = hand_written(x, sk, plan)
    fns: dict[str, Callable[[], Any]] = {
        "dense": lambda: F.conv2d(x, W, None, 1, 1),
        "planned": lambda: conv(x, sk, padding=1, implementation="factorized"),
        "auto": lambda: conv(x, sk, padding=1, implementation="auto"),
        "hand": stages,
        "convs_only": convs_only,
    }
    dense_score = cp.dense_plan(spec, geom).score
    paper_plan = cp.factorized_plan(spec, geom, cp.paper_order(spec))
    run_paper = paper_plan.peak_elements < PAPER_PEAK_LIMIT and paper_plan.score < PAPER_SCORE_LIMIT * dense_score
    if run_paper and paper_plan.order != plan.order:
        fns["paper"] = lambda: conv(x, sk, padding=1, implementation="factorized", order="paper")
    if cost.auto == "dense":  # auto = this kernel formation + the dense conv
        steps = cp.dense_plan(spec, geom).recon_steps
        fns["kernel_formation"] = lambda: _form_kernel(sk, steps)
    fns.update(tltorch_variants(C, ratio, x))
    t = timeit(fns, rounds)
    if run_paper and "paper" not in t:
        t["paper"] = t["planned"]  # the same plan: one timing serves both
    dense_macs = batch * C * C * 9 * L * L
    return {"layer": f"{C}->{C} @{L}", "ratio": ratio, "pick": label, "structure": st.factor_shapes, "rank": r,
            "compression": C * C * 9 / sk.n_params, "dense_ms": t["dense"],
            "time": {k: v / t["dense"] for k, v in t.items() if k != "dense"},
            "macs": {"paper": cost.paper.macs / dense_macs, "planned": cost.best.macs / dense_macs,
                     "auto": (cost.best.macs if cost.auto == "factorized" else cost.dense.macs) / dense_macs},
            "order": {"paper": cost.paper.order, "planned": cost.best.order, "auto": cost.auto},
            "paper_skipped": None if run_paper else f"peak {paper_plan.peak_elements:.1e} elements"}


def fmt_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| layer | target | pick | factor shapes | rank | compr. | dense ms | paper t (MAC) | planned t (MAC) "
            "| auto t (MAC) | plan | hand t | convs t | planned/hand | planned/paper |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        tm, mc = r["time"], r["macs"]
        paper = "skipped" if "paper" not in tm else f"{tm['paper']:.2f} ({mc['paper']:.2f})"
        rel = f"{tm['planned'] / tm['paper']:.2f}" if "paper" in tm else "-"
        lines.append(
            f"| {r['layer']} | {r['ratio']}x | {r['pick']} | {r['structure']} | {r['rank']} | {r['compression']:.1f}x "
            f"| {r['dense_ms']:.1f} | {paper} | {tm['planned']:.2f} ({mc['planned']:.2f}) "
            f"| {tm['auto']:.2f} ({mc['auto']:.2f}) | {r['order']['planned']} / {r['order']['auto']} "
            f"| {tm['hand']:.2f} | {tm['convs_only']:.2f} | {tm['planned'] / tm['hand']:.2f} | {rel} |")
    extra = [k for k in rows[0]["time"] if k.startswith("tltorch")] if rows else []
    if extra:
        lines.append("")
        lines += [f"{r['layer']} {r['ratio']}x " + ", ".join(f"{k} {r['time'][k]:.2f}" for k in extra) for r in rows]
    return "\n".join(lines)


def targets(rows: Sequence[dict[str, Any]]) -> list[str]:
    auto_worst = max(r["time"]["auto"] for r in rows)
    out = [f"auto never more than 1.1x slower than dense: worst auto/dense = {auto_worst:.2f} "
           f"-> {'met' if auto_worst <= 1.1 else 'NOT met'}"]
    for layer in dict.fromkeys(r["layer"] for r in rows):
        ten = [r for r in rows if r["layer"] == layer and r["ratio"] == 10]
        best = min((r["time"]["planned"] for r in ten), default=math.nan)
        out.append(f"{layer}: best 10x structure, planned speed-up over dense = {1 / best:.2f}x "
                   f"-> {'met' if 1 / best >= 2 else 'NOT met'} (target >= 2x)")
    rel = [r["time"]["planned"] / r["time"]["paper"] for r in rows if "paper" in r["time"]]
    if rel:
        out.append(f"planned vs paper order: worst planned/paper = {max(rel):.2f} "
                   f"-> {'met' if max(rel) <= 1.05 else 'NOT met'} (target <= 1.05)")
    forming = [r["time"]["kernel_formation"] for r in rows if "kernel_formation" in r["time"]]
    if forming:
        out.append(f"where auto ran dense, its only extra work is forming the kernel: at most {max(forming):.3f} of "
                   "the dense time; auto/dense beyond 1 + that is timing noise")
    hand = max(r["time"]["planned"] / r["time"]["hand"] for r in rows)
    out.append(f"factorized vs hand-written stages: worst = {hand:.2f} -> {'met' if hand <= 1.25 else 'NOT met'}")
    conv_only = max(r["time"]["planned"] / r["time"]["convs_only"] for r in rows)
    out.append(f"factorized vs the stage convs alone (no permutes at all): worst = {conv_only:.2f}")
    return out


def plot(rows: Sequence[dict[str, Any]], cands: list[tuple[Structure, int, Any]], layer: str, dense: int,
         path: str, threads: int, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    comp = [c[0].shape[1] ** 2 * 9 / (c[1] * sum(c[0].factor_sizes)) for c in cands]
    a1.scatter(comp, [c[2].paper.macs / dense for c in cands], s=10, label="paper order", alpha=0.6)
    a1.scatter(comp, [c[2].best.macs / dense for c in cands], s=10, label="planned order", alpha=0.6)
    a1.axhline(1.0, color="k", lw=0.8, label="dense")
    a1.set(xscale="log", yscale="log", xlabel="compression (dense params / params)",
           ylabel="MACs / dense MACs", title=f"{layer}: every 2-factor structure (model)")
    a1.legend(fontsize=8)
    mine = [r for r in rows if r["layer"] == layer]
    for key, marker in (("paper", "o"), ("planned", "s"), ("auto", "^"), ("hand", "x")):
        pts = [(r["compression"], r["time"][key]) for r in mine if key in r["time"]]
        if pts:
            a2.scatter(*zip(*pts), marker=marker, label=key)
    a2.axhline(1.0, color="k", lw=0.8, label="dense")
    a2.set(xscale="log", yscale="log", xlabel="compression", ylabel="time / dense time",
           title=f"{layer}: measured ({_where(threads)}, batch {batch})")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny layers, two rounds: a smoke run")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", default=None, help="comma list of C@L, e.g. 256@14 (default: all four)")
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu; the targets are CPU's)")
    ap.add_argument("--stat", choices=("median", "min"), default="median", help="summary of the rounds")
    args = ap.parse_args(argv)
    global DEVICE, STAT
    DEVICE, STAT = torch.device(args.device), args.stat
    torch.set_num_threads(args.threads)
    layers, ratios, batch, rounds = LAYERS, RATIOS, 16, args.rounds
    if args.quick:
        layers, ratios, batch, rounds = [(16, 8)], (10,), 2, 1
    if args.layers:
        layers = [(int(c), int(h)) for c, h in (item.split("@") for item in args.layers.split(","))]
    plot_layer = layers[min(2, len(layers) - 1)]
    rows, plot_cands = [], []
    if importlib.util.find_spec("tltorch") is None:
        print("tensorly-torch (tltorch) is not importable: its CP/Tucker baselines are skipped")
    for C, L in layers:
        for ratio in ratios:
            cands = candidates(C, ratio, batch, L)
            if (C, L) == plot_layer:
                plot_cands += cands
            for label, st, r, cost in pick(cands, batch, L):
                rows.append(run_row(C, L, batch, ratio, label, st, r, cost, rounds))
                print(fmt_table(rows[-1:]).splitlines()[-1], flush=True)
    table = fmt_table(rows)
    summary = targets(rows)
    print("\n" + table + "\n\n" + "\n".join(summary))
    os.makedirs(args.out, exist_ok=True)
    layer_name = f"{plot_layer[0]}->{plot_layer[0]} @{plot_layer[1]}"
    plot(rows, plot_cands, layer_name, batch * plot_layer[0] ** 2 * 9 * plot_layer[1] ** 2,
         os.path.join(args.out, "bench_conv.png"), args.threads, batch)
    with open(os.path.join(args.out, "bench_conv.json"), "w") as fh:
        json.dump(rows, fh, indent=1, default=str)
    cmd = "python benchmarks/bench_conv.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(os.path.join(args.out, "bench_conv.md"), "w") as fh:
        fh.write(f"# Convolution benchmark\n\n`{cmd}` (torch {torch.__version__}, {_where(args.threads)}, "
                 f"batch {batch}, "
                 f"{STAT} over {rounds} interleaved rounds). Times and MACs are ratios to dense `F.conv2d`; "
                 "the MAC ratio is in parentheses. `plan` is the planned order / what auto ran.\n\n"
                 + table + "\n\n" + "\n".join(f"- {s}" for s in summary) + "\n\n![](bench_conv.png)\n")
    return rows


if __name__ == "__main__":
    main()
