"""Sensitivity allocation: per layer and candidate size, how much the network output moves.

For every compressed layer and every candidate on its frontier (a ladder of per-layer
ratios), only that layer is replaced by its weight fit (then, with ``fit_steps``, fitted
to the dense layer's outputs, :func:`sekron.torch.calibrate.fit_layer`, so the damage is
the one left after output fitting), and the relative squared change
of the network output on the calibration inputs, ``sum ||f_l(x) - f(x)||^2 / sum
||f(x)||^2``, is its damage. The layers' (parameters, damage) points then go through the
same budget allocation as the weight errors (:func:`sekron.torch._allocate.allocate`:
greedy on the convex hulls, then a fill pass), in the spirit of AIMET's greedy
compression-ratio selection.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._allocate import Frontier
from .calibrate import _first_tensor, fit_layer, stream_grams

#: per-layer compression ratios at which each layer's damage is measured
RATIOS = tuple(float(r) for r in np.geomspace(1.25, 128.0, 21))


def _ladder(f: Frontier, ratios: Sequence[float]) -> list[int]:
    """Frontier indices: the best point within each per-layer ratio, plus the cheapest one."""
    picks = {0}
    for r in ratios:
        ok = np.flatnonzero(f.params[:-1] <= f.dense / r)
        if ok.size:
            picks.add(int(ok[-1]))
    return sorted(picks)


@torch.no_grad()
def _outputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [_first_tensor(model(x)).detach() for x in batches]


def sensitivity_frontiers(model: nn.Module, names: Sequence[str], frontiers: Sequence[Frontier],
                          build: Callable[[str, Any], nn.Module], batches: Sequence[torch.Tensor],
                          ratios: Sequence[float] = RATIOS, progress: Callable[[Any], Any] = iter,
                          fit_steps: int = 0, solver: str = "als", max_samples: int = 32768, seed: int = 0
                          ) -> list[Frontier]:
    """Frontiers whose errors are the measured output damage (``model`` is a dense working copy)."""
    work = copy.deepcopy(model).eval()
    ref = _outputs(work, batches)
    norm = sum(float((r.double() ** 2).sum()) for r in ref) or 1.0
    out = []
    for name, f in progress(list(zip(names, frontiers))):
        dense = work.get_submodule(name)
        grams = None
        if fit_steps > 0:
            grams = stream_grams(work, dense, work, dense, batches, max_samples, torch.Generator().manual_seed(seed))
        pts = []
        for i in _ladder(f, ratios):
            cand = f.candidate(i)
            new = build(name, cand)
            if grams is not None:
                fit_layer(new, grams, solver=solver, steps=fit_steps)
            work.set_submodule(name, new)
            got = _outputs(work, batches)
            pts.append((int(f.params[i]), sum(float(((g - r).double() ** 2).sum()) for g, r in zip(got, ref)) / norm,
                        f.refs[i]))
        work.set_submodule(name, dense)
        keep, best = [], np.inf
        for p in sorted(pts, key=lambda p: (p[0], p[1])):
            if p[1] < best:
                keep.append(p)
                best = p[1]
        params = [p[0] for p in keep] + [f.dense]
        err2 = [p[1] for p in keep] + [0.0]
        out.append(Frontier(np.asarray(params, dtype=np.int64), np.asarray(err2), [p[2] for p in keep] + [None],
                            f.dense))
    return out
