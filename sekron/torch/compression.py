"""Whole-model compression: pick a structure and ranks per layer under one global budget.

:func:`compress` walks ``model.named_modules()``, scores every eligible layer's weight
with the machinery of :mod:`sekron.structure_search` (all ranks of every scored structure, not just
one budget), allocates the parameter budget across layers, and swaps the chosen layers
for SeKron layers with ``set_submodule``. The allocation minimises the sum over layers of
the squared relative errors ``||W - W_hat||^2 / ||W||^2`` (a greedy walk down each
layer's lower convex hull of error against parameters, then a fill pass), which can
never do worse than the same machinery at a uniform per-layer ratio; the report gives
both totals.

With ``calibration`` inputs (no labels), two more steps use the network's activations
(:mod:`sekron.torch.calibrate`, :mod:`sekron.torch._sensitivity`): the allocation can
measure each layer's damage to the network output ("sensitivity"), and every compressed
layer, in execution order, is refitted to the dense layer's outputs on the inputs that
the already-compressed prefix produces ("output").
"""

from __future__ import annotations

import copy
import fnmatch
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._parallel import run_tasks
from .._progress import progress as show_progress
from .._validation import check_int
from ..structure_search import Candidate, candidate_macs
from ..structure_search._cache import SearchCache, default_cache, weight_hash
from ..structure_search._layer import (  # noqa: F401
    FINE_LADDER,
    LADDER,
    METHODS,
    anchor,
    family_from_plain,
    layer_task,
    task_arguments,
)
from ._allocate import Frontier, allocate, uniform
from ._report import CompressionReport
from ._sensitivity import sensitivity_frontiers
from .calibrate import (
    SOLVERS,
    blend_target,
    calibration_batches,
    execution_order,
    fit_layer,
    gram_bytes,
    output_error,
    stream_group_grams,
)
from .calibrate import refit_dense as refit_dense_layer
from .export import deployed_cost, layer_geometry, price_points
from .layers import LAYERS, _as_pointwise

ALLOCATIONS = ("error", "uniform", "sensitivity")
OBJECTIVES = ("weight", "output")
#: Cap (bytes) on the float64 Gram matrices streamed together by the output fit, for deep
#: networks (``compress(fit_group_bytes=FIT_GROUP_BYTES)``). Every forward pass of the
#: calibration runs the network up to the group's last layer, so the number of groups sets
#: the fit's forward cost (one layer per group: quadratic in depth, about 350 passes per
#: input on Real-ESRGAN); 64 MiB holds about one residual dense block of Real-ESRGAN (5 convs,
#: 60 MB) and keeps the Grams far under the 4 GiB a 64-crop calibration may use. Not the
#: default: a group's later layers are fitted without their predecessors' remaining error
#: (:data:`FIT_GROUP_DENSE_MEMBERS`); on the first 4 Real-ESRGAN blocks 30.9 dB against 31.5 dB exact.
FIT_GROUP_BYTES = 64 * 2 ** 20
#: while a group's Grams are streamed, its members pass on their dense layers' outputs (on their actual
#: inputs) instead of their weight fit's: a later member then does not learn to undo the weight-fit error
#: of members whose own fit removes most of it (on the whole Real-ESRGAN at 4x, groups of 64 MiB fitted
#: that way left each conv's output on the calibration crops worse than the weight fit's; docs/results.md §4)
FIT_GROUP_DENSE_MEMBERS = True
#: the fraction of its input's drift each layer's output fit undoes (``calibrate.blend_target``): 1 fits the
#: dense network's output (the default); 0 fits the dense *layer* on the actual inputs, leaving the dense
#: network's own response to the drift in place (on the whole Real-ESRGAN at 4x, undoing all of it made the
#: trunk's error grow block after block; docs/results.md §4)
FIT_DRIFT_CORRECTION = 1.0
#: what ``ratio`` divides: the model's parameters, or the MACs of its deployed form (``to_standard``)
BUDGETS = ("params", "macs")
#: with budget="macs", at most this many rank points per scored structure are priced by their deployment
DEPLOY_POINTS = 12
#: with budget="macs", only rank points whose bond sizes are multiples of this (or below it) are priced: a
#: bond size is the channel count between two deployed convs, and runtimes block channels by 8 or 16 (AVX2,
#: AVX-512); in onnxruntime a 1x1 conv to 25 channels and a 3x3 conv from them took 0.247 ms against 0.177 ms
#: for 32 channels (64 -> 32 channels at 32x32, one thread). 1 prices every rank (docs/deployment.md, Run 6)
DEPLOY_RANK_MULTIPLE = 8
#: with budget="macs", the candidates are priced in worker processes (n_jobs) from this many points on (a
#: worker imports torch, about a second; Real-ESRGAN has about 50,000 points, a small CNN a few hundred)
PRICE_PARALLEL_POINTS = 5000


@dataclass
class _Layer:
    name: str
    module: Any
    skip: str | None = None
    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 1:
        raise ValueError(f"ratio must be a number > 1 (model parameters before / after), got {ratio!r}")
    return float(ratio)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _select(model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str] | None, skip_first: bool,
            min_kernel_size: int) -> list[_Layer]:
    """The model's conv/linear layers, each with the reason it is skipped (None when eligible)."""
    modules = dict(model.named_modules())
    if include is not None:
        if isinstance(include, str):
            include = [include]
        for pattern in include:
            hits = [n for n in modules if n and fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(f"include pattern {pattern!r} matches no module of the model; "
                                 f"module names look like {[n for n in modules if n][:5]}")
            bad = [f"{n} ({type(modules[n]).__name__})" for n in hits if type(modules[n]) not in LAYERS]
            if bad and not any(type(modules[n]) in LAYERS for n in hits):
                raise TypeError(f"include names modules compress cannot replace: {bad}; supported layer types are "
                                f"{[t.__name__ for t in LAYERS]}")
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    layers, first = [], True
    for name, mod in modules.items():
        if type(mod) not in LAYERS:
            continue
        layer = _Layer(name, mod)
        if include is not None and not _matches(name, include):
            layer.skip = "not included"
        elif _matches(name, exclude):
            layer.skip = "excluded"
        elif skip_first and first and include is None:
            layer.skip = "first layer (skip_first)"
        elif getattr(mod, "groups", 1) > 1:
            layer.skip = f"groups={mod.groups} (use SeKronConv{len(mod.weight.shape) - 2}d.from_conv)"
        elif mod.weight.numel() < min_kernel_size:
            layer.skip = f"weight smaller than min_kernel_size={min_kernel_size}"
        first = False
        layers.append(layer)
    return layers


def _record_shapes(model: nn.Module, layers: list[_Layer], input_shape: Sequence[int]) -> None:
    """One forward pass on zeros, recording every layer's input and output shapes."""
    by_module = {id(layer.module): layer for layer in layers}

    def hook(mod: nn.Module, args: Any, out: Any) -> None:
        layer = by_module[id(mod)]
        layer.in_shape, layer.out_shape = tuple(args[0].shape), tuple(out.shape)

    param = next(model.parameters())
    handles = [layer.module.register_forward_hook(hook) for layer in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_shape), dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def _dense_macs(layer: _Layer) -> int | None:
    if layer.out_shape is None:
        return None
    w = layer.module.weight
    return math.prod(layer.out_shape) * math.prod(w.shape[1:])


def _sekron_macs(layer: _Layer, cand: Candidate) -> int | None:
    if layer.in_shape is None:
        return None
    mod = layer.module
    if isinstance(mod, nn.Linear):
        rows = math.prod(layer.in_shape[:-1])
        return candidate_macs(_as_pointwise(cand.structure), cand.rank, (rows, layer.in_shape[-1], 1))
    return candidate_macs(cand.structure, cand.rank, layer.in_shape, mod.stride, mod.padding, mod.dilation)


def _mac_frontiers(chosen: list[_Layer], families: list[list[Any]], orders: dict[Any, Any], n_jobs: int,
                   client: Any, progress: bool) -> list[Frontier]:
    """Every layer's frontier in deployed MACs: its thinned points priced by the deployment rule.

    The pricing (:func:`sekron.torch.export.price_points`, one task per layer) runs in worker
    processes when there are at least :data:`PRICE_PARALLEL_POINTS` points, else here; it is
    deterministic, so the result is the same either way. ``orders`` receives the deployed
    stage order of every priced candidate.
    """
    picks = [[(k, i) for k, f in enumerate(fams) for i in sorted(_thin(f, DEPLOY_POINTS, DEPLOY_RANK_MULTIPLE))]
             for fams in families]
    points = [[(fams[k].structure.factor_shapes, fams[k].structure.labels, tuple(sorted(fams[k].rank(i).items())))
               for k, i in ps] for fams, ps in zip(families, picks)]
    tasks = [(layer_geometry(layer.module), tuple(layer.in_shape or ()), pts) for layer, pts in zip(chosen, points)]
    many = sum(len(p) for p in points) >= PRICE_PARALLEL_POINTS
    priced = run_tasks(price_points, tasks, n_jobs=n_jobs if many else 1, client=client if many else False,
                       sizes=[len(p) for p in points], progress=progress and many, desc="sekron compress (pricing)")
    frontiers = []
    for layer, fams, ps, pts, got in zip(chosen, families, picks, points, priced):
        deployed: dict[tuple[int, int], int] = {}  # (family, point index) -> deployed MACs
        for ki, pt, (macs, order) in zip(ps, pts, got):
            deployed[ki] = macs
            orders[(layer.name, *pt)] = order
        dense_cost = _dense_macs(layer) or 0
        which = {id(f): k for k, f in enumerate(fams)}

        def cost(fam: Any, i: int, deployed: dict[tuple[int, int], int] = deployed, dense_cost: int = dense_cost,
                 which: dict[int, int] = which) -> int:
            return deployed.get((which[id(fam)], i), dense_cost)  # a point not priced is never on the frontier

        frontiers.append(Frontier.from_families(fams, dense_cost, cost))
    return frontiers


def _thin(fam: Any, n: int, multiple: int = 1) -> set[int]:
    """At most ``n`` points of a family to cost by deployed MACs: its (params, error) Pareto points, log-spaced.

    Within one structure the deployed MACs grow with the ranks as the parameters do, so
    the family's own Pareto points carry its MAC frontier; pricing each deployment takes
    milliseconds, so a layer's hundreds of rank points are thinned first. Only points whose
    bond sizes are all multiples of ``multiple`` or smaller than it are kept (the deployed
    channel counts between convs; :data:`DEPLOY_RANK_MULTIPLE`).
    """
    idx = [i for i in range(len(fam.params)) if multiple <= 1 or _aligned(fam.rank(i), multiple)]
    idx.sort(key=lambda i: (fam.params[i], fam.err[i]))
    front, best = [], np.inf
    for i in idx:
        if fam.err[i] < best - 1e-15:
            front.append(i)
            best = fam.err[i]
    if len(front) <= n:
        return set(front)
    logp = np.log(np.maximum(fam.params[front].astype(float), 1.0))
    marks = np.linspace(logp[0], logp[-1], n)
    return {front[int(np.argmin(np.abs(logp - m)))] for m in marks}


def _aligned(rank: dict[str, int], multiple: int) -> bool:
    """Every bond size is a multiple of ``multiple`` or smaller than it.

    >>> _aligned({"a": 16, "b": 3}, 8), _aligned({"a": 25}, 8)
    (True, False)
    """
    return all(r % multiple == 0 or r < multiple for r in rank.values())


def _weight64(module: Any) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(module.weight.detach().to("cpu", torch.float64).numpy())


def _cache_of(cache: Any, cache_dir: str | None) -> SearchCache | None:
    if isinstance(cache, SearchCache):
        if cache_dir is not None:
            raise ValueError("give cache_dir= or a SearchCache as cache=, not both (a SearchCache has its own "
                             "cache_dir)")
        return cache
    if not isinstance(cache, bool):
        raise TypeError(f"cache must be True, False or a SearchCache, got {type(cache).__name__}")
    if not cache:
        if cache_dir is not None:
            raise ValueError("cache_dir= needs cache=True")
        return None
    return default_cache(cache_dir)


def _row(layer: _Layer, cand: Candidate | None, status: str, new: nn.Module | None = None) -> dict[str, Any]:
    w = layer.module.weight
    if new is None:
        deployed: tuple[int | None, int] = (_dense_macs(layer), int(w.numel()))
    else:
        deployed = deployed_cost(new, layer.in_shape)
    return {
        "name": layer.name, "type": type(layer.module).__name__, "shape": list(w.shape), "status": status,
        "structure": None if cand is None else [list(s) for s in cand.structure.factor_shapes],
        "pattern": None if cand is None else cand.pattern, "rank": None if cand is None else dict(cand.rank),
        "baseline": None if cand is None else cand.baseline,
        "params_before": int(w.numel()), "params_after": int(w.numel()) if cand is None else cand.params,
        "macs_before": _dense_macs(layer),
        "macs_after": _dense_macs(layer) if cand is None else _sekron_macs(layer, cand),
        "error": 0.0 if cand is None else cand.error,
        "deployed_macs": deployed[0], "deployed_params": deployed[1],
    }


def _resolve(calibration: Any, objective: str | None, allocation: str | None) -> tuple[str, str]:
    has = calibration is not None
    objective = ("output" if has else "weight") if objective is None else objective
    allocation = ("sensitivity" if has else "error") if allocation is None else allocation
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {list(ALLOCATIONS)}, got {allocation!r}")
    if not has and objective == "output":
        raise ValueError("objective='output' fits each layer to the dense layer's outputs and needs inputs: pass "
                         "calibration=<tensor of inputs or iterable of batches>, or use objective='weight'")
    if not has and allocation == "sensitivity":
        raise ValueError("allocation='sensitivity' measures each layer's effect on the network output and needs "
                         "inputs: pass calibration=<tensor of inputs or iterable of batches>, or use "
                         "allocation='error'")
    return objective, allocation


def compress(model: nn.Module, ratio: float, *, method: str = "sekron", include: Sequence[str] | None = None,
             exclude: Sequence[str] | None = None, skip_first: bool = True, min_kernel_size: int = 1024,
             input_shape: Sequence[int] | None = None, budget: str = "params", allocation: str | None = None,
             calibration: Any = None, objective: str | None = None, max_samples: int = 32768,
             solver: str = "als", fit_steps: int = 15, sensitivity_steps: int = 5, refit_dense: bool = True,
             batch_size: int = 64, seed: int = 0, implementation: str = "auto", inplace: bool = False,
             progress: bool = True, n_jobs: int = -1, client: Any = None, cache: bool | SearchCache = True,
             cache_dir: str | None = None, fold_batchnorm: bool | None = None,
             structures: int = 1, fit_group_bytes: int = 0) -> tuple[nn.Module, CompressionReport]:
    """Replace conv and linear layers by SeKron layers so that the model has ``ratio`` times fewer parameters or MACs.

    Parameters
    ----------
    model : torch.nn.Module
        Copied first (``copy.deepcopy``) unless ``inplace``.
    ratio : float > 1
        Parameters of the whole model before / after (biases, norms and skipped layers
        count); with ``budget="macs"``, the MACs of the model's convs and linears before /
        after deployment (:func:`sekron.torch.to_standard`).
    method : {"sekron", "tt", "tr", "cp", "tucker"}
        "sekron" searches S = 2 and 3 SeKron structures (nested, chain, cp, tucker) and
        the axis-aligned baselines; the others use only that axis-aligned format.
    include, exclude : sequence of str, optional
        Module names or ``fnmatch`` patterns. Naming a module that is not a
        ``Conv1d/2d/3d`` or ``Linear`` in ``include`` raises TypeError.
    skip_first : bool
        Keep the first conv/linear layer dense (when ``include`` is not given).
    min_kernel_size : int
        Layers with fewer weight entries stay dense.
    input_shape : sequence of int, optional
        Model input shape; one forward pass on zeros records each layer's input, so the
        report gives MACs before and after (from :func:`sekron.conv_cost`) and deployed.
    budget : {"params", "macs"}
        What ``ratio`` divides. "params": the model's parameters (each candidate costs its
        factors). "macs": the MACs of the deployed model, as ``to_standard(model)`` (with
        ``implementation="auto"``) deploys it at the layers' real input sizes (from
        ``input_shape``, else the first calibration batch; one of them is needed): every
        candidate costs the MACs of the grouped convs it deploys as (repeated blocks and
        carried digits included), a candidate that deploys no cheaper than the dense layer
        is never picked, and each compressed layer is built with the stage order of that
        deployment (``implementation="factorized"``), so the deployed model has exactly
        the MACs the allocation paid for (the report's ``deployed_macs``).
    allocation : {"error", "uniform", "sensitivity"}, optional
        "error": least sum of squared relative weight errors for the budget (module
        docstring); "uniform": the same per-layer ratio everywhere; "sensitivity": least
        sum of measured network-output damages, each layer compressed alone at a ladder
        of ratios (needs ``calibration``); with ``budget="params"``, several bond patterns
        (``method="sekron"``) and :data:`sekron.torch._sensitivity.PATTERNS` set (off by
        default), along each pattern's own frontier (about the number of patterns times the
        measurements). Default: "sensitivity" with calibration, else "error".
    calibration : tensor or iterable of batches, optional
        Unlabeled model inputs: a tensor ``(N, ...)`` (split into ``batch_size`` batches),
        or an iterable of batches, each a tensor or a tuple/list whose first item is the
        input (a ``DataLoader`` of ``(x, y)``; labels are ignored). Never modified.
    objective : {"weight", "output"}, optional
        "weight": each layer is the decomposition of its weight; "output": then each
        compressed layer, in execution order, is refitted (factors and bias) to least
        ``||Y - layer(X)||`` where X is its input in the already-compressed model and Y
        the dense layer's output in the dense model (:mod:`sekron.torch.calibrate`).
        Default: "output" with calibration, else "weight".
    max_samples : int
        At most this many patch positions per layer enter its Gram matrices (a random
        subset with ``seed`` when the calibration set has more).
    solver : {"als", "adam"}
        Output fit: exact least squares per factor in turn (conjugate gradients), or Adam.
    fit_steps : int
        At most this many ALS sweeps (Adam: ten times as many steps).
    sensitivity_steps : int
        With objective "output" and allocation "sensitivity", each candidate is first
        output-fitted with this many ALS sweeps (its input from the dense prefix), so the
        damage that ranks it is the one left after fitting; 0 ranks weight fits.
    refit_dense : bool
        With objective "output", also refit (closed-form least squares, same parameters)
        the conv/linear layers that stay dense because of the allocation, ``skip_first`` or
        ``min_kernel_size`` and run after a compressed layer, so they absorb the error of
        the compressed prefix. Layers left out by ``include``/``exclude`` are never touched.
    batch_size : int
        Batch size when ``calibration`` is one tensor.
    seed : int
        Seed of the position subsampling.
    implementation : {"auto", "factorized", "dense"}
        Forward plan of the new layers ("dense" is refused with ``budget="macs"``, whose
        layers deploy their factorized stages).
    progress : bool
        Show a tqdm progress bar over the layers (with an ETA); none when tqdm is not installed.
    n_jobs : int
        Worker processes for the per-layer search (one BLAS thread each): -1 all cores,
        1 none (this process). The result is the same whatever the value.
    client : dask.distributed.Client, False or None
        Run the per-layer searches on this dask cluster; None uses the active client when
        ``distributed`` is imported and one exists (never starts one), False never.
    cache : bool or SearchCache
        Reuse per-layer search state (spectra, ALS fits, rank-capped decompositions) keyed
        by the weight's content: True uses the process-wide cache, so compressing the same
        model again at another ratio or allocation is much faster and gives what a cold run
        gives. A layer whose budget falls in the same octave as before (the search's anchor,
        :func:`sekron.structure_search._layer.anchor`) reuses its whole scored result (in
        memory; ``report.totals["cache_layers_reused"]``); in another octave the spectra and
        fits it shares are reused. False computes everything afresh.
    cache_dir : str, optional
        Also keep the cache on disk there (``.npz`` + JSON, no pickle), across processes
        (the per-layer state; whole results stay in memory).
    fold_batchnorm : bool, optional
        Fold each BatchNorm that directly follows a conv/linear into it first
        (:func:`sekron.torch.fold.fold_batchnorm`; the BatchNorm becomes ``nn.Identity``),
        so the weight fit, the sensitivity and the output fit see every output channel at
        the scale the network sees it. Only exact folds are made (checked in float64 on the
        first calibration batch, or random inputs of ``input_shape``). None (default): on with
        ``calibration`` for BatchNorms in eval mode (the mode the calibration runs in), off
        without. True: also BatchNorms in training mode (their running statistics); needs
        ``calibration`` or ``input_shape``. The budget counts the model as given (its
        BatchNorm parameters included), so folding only frees parameters for the layers.
    structures : int
        With allocation "sensitivity" and objective "output" (``sensitivity_steps > 0``):
        at each measured size of a layer, the ``structures`` structures of least weight
        error within that size are output-fitted and the one of least output error is
        kept (structure choice by output error; ``search(..., objective="output")`` in
        spirit). 1: the least weight error, as before. Only "sekron" has several
        structures; the axis-aligned methods have one.
    fit_group_bytes : int
        With objective "output": consecutive layers (in execution order) whose float64 Gram
        matrices (``8 (n+1)(n+1+F)`` bytes for ``n`` patch entries and ``F`` outputs) sum to
        at most this are streamed together, one forward pass per batch for the group, each
        pass stopped after the group's last layer; then fitted one after the other. Within
        a group a later layer's input comes from the prefix in which the earlier members
        pass on their dense layers' outputs (:data:`FIT_GROUP_DENSE_MEMBERS`), so it sees
        neither their weight-fit error nor what their output fit leaves; the next group
        sees all of them fitted. ``0`` (default): one layer per
        group, the exact sequential fit (each layer sees every earlier layer fitted), at a
        forward cost quadratic in depth; :data:`FIT_GROUP_BYTES` (64 MiB) suits deep
        networks, where those passes dominate.

    Returns
    -------
    (model, CompressionReport)
        Every row holds ``deployed_macs`` and ``deployed_params`` (what ``to_standard``
        deploys for the layer: MACs on its recorded input, None without shapes, and conv
        weight entries); ``totals`` holds them for the model (``deployed_params`` counts
        every parameter, biases and norms too) and ``deployed_macs_ratio``.
        With calibration the report's rows also hold ``sensitivity`` (relative change of
        the network output with only that layer compressed), ``output_error_weight_fit``
        and ``output_error`` (relative output error of the layer before / after the fit).
        ``report.totals["folded_batchnorm"]`` lists the folded ``(conv, BatchNorm)`` names.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import compress
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3))
    >>> small, report = compress(net, ratio=3, progress=False)
    >>> type(small[2]).__name__, report.totals["ratio"] >= 3
    ('SeKronConv2d', True)
    >>> x = torch.randn(32, 3, 12, 12)  # unlabeled inputs
    >>> small, report = compress(net, ratio=3, calibration=x, progress=False)
    >>> report[1]["output_error"] <= report[1]["output_error_weight_fit"]
    True
    """
    ratio = _check_ratio(ratio)
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {list(BUDGETS)} (what ratio divides: the parameters, or the MACs "
                         f"of the deployed model), got {budget!r}")
    if budget == "macs" and implementation == "dense":
        raise ValueError("budget='macs' counts the MACs of the deployed factorized stages, but implementation='dense' "
                         "would deploy every layer as a formed dense kernel; use implementation='auto' (or "
                         "'factorized') with budget='macs', or budget='params'")
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    objective, allocation = _resolve(calibration, objective, allocation)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive int (patch positions per layer), got {max_samples!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
    if isinstance(structures, bool) or not isinstance(structures, int) or structures < 1:
        raise ValueError(f"structures must be an int >= 1 (structures output-fitted per measured size), got "
                         f"{structures!r}")
    if structures > 1 and budget == "macs":
        raise ValueError("structures > 1 compares structures at equal parameter counts; with budget='macs' each "
                         "layer keeps the structure its deployed MACs price (use structures=1, or budget='params')")
    if isinstance(fit_group_bytes, bool) or not isinstance(fit_group_bytes, int) or fit_group_bytes < 0:
        raise ValueError("fit_group_bytes must be an int >= 0 (bytes of Gram matrices streamed together; 0 = one "
                         f"layer at a time), got {fit_group_bytes!r}")
    batch_size = check_int(batch_size, "batch_size")
    min_kernel_size = check_int(min_kernel_size, "min_kernel_size", minimum=0)
    fit_steps = check_int(fit_steps, "fit_steps", minimum=0)
    sensitivity_steps = check_int(sensitivity_steps, "sensitivity_steps", minimum=0)
    seed = check_int(seed, "seed", minimum=0)
    batches = None
    if calibration is not None:
        batches = calibration_batches(calibration, next(model.parameters()), batch_size)
    if fold_batchnorm is not None and not isinstance(fold_batchnorm, bool):
        raise TypeError(f"fold_batchnorm must be True, False or None, got {type(fold_batchnorm).__name__}")
    if fold_batchnorm and batches is None and input_shape is None:
        raise ValueError("fold_batchnorm=True checks the fold on example inputs: pass calibration= or input_shape=")
    model = model if inplace else copy.deepcopy(model)
    total_given = sum(int(p.numel()) for p in model.parameters())
    folded: list[tuple[str, str]] = []
    if fold_batchnorm or (fold_batchnorm is None and batches is not None):
        folded = _fold(model, batches, input_shape, force=bool(fold_batchnorm))
    layers = _select(model, include, exclude, skip_first, min_kernel_size)
    if budget == "macs" and input_shape is None:
        if batches is None:
            raise ValueError("budget='macs' costs every layer at its real input size and needs the model's input "
                             "shape: pass input_shape=(1, C, H, W) (batch first) or calibration=<inputs>, or use "
                             "budget='params'")
        input_shape = (1, *batches[0].shape[1:])
    if input_shape is not None:
        _record_shapes(model, layers, input_shape)
    if budget == "macs":
        for layer in layers:
            if layer.skip is None and layer.in_shape is None:
                layer.skip = "never runs on the input (no MACs to save)"
    chosen = [layer for layer in layers if layer.skip is None]
    if not chosen:
        raise ValueError("no layer is eligible for compression (all skipped: "
                         f"{ {layer.name: layer.skip for layer in layers} }); adjust include/exclude/min_kernel_size")
    total = total_given
    dense = sum(int(layer.module.weight.numel()) for layer in chosen)
    unit, whole, current = "parameters", total, sum(int(p.numel()) for p in model.parameters())
    if budget == "macs":
        whole = sum(_dense_macs(layer) or 0 for layer in layers)
        dense, unit, current = sum(_dense_macs(layer) or 0 for layer in chosen), "MACs", whole
    target = whole / ratio
    room = target - (current - dense)  # with budget "params", folded BatchNorms free their parameters
    if room <= 0:
        raise ValueError(f"ratio {ratio} is impossible: the {whole - dense:,} {unit} that stay dense already "
                         f"exceed the target of {target:,.0f} (model has {whole:,}); lower the ratio or compress "
                         "more layers")
    for layer in chosen:  # before any work: a NaN would otherwise surface as a raw LinAlgError deep in an SVD
        with torch.no_grad():
            finite = bool(torch.isfinite(layer.module.weight).all())
        if not finite:
            raise ValueError(f"layer {layer.name!r} has NaN or Inf in its weight; clean the model first "
                             "(e.g. retrain, or torch.nan_to_num_ on that weight), or exclude the layer")
    store = _cache_of(cache, cache_dir)
    tasks, hashes, keys = [], [], []
    results: list[Any] = []
    for layer in chosen:
        W = _weight64(layer.module)
        hashes.append(weight_hash(W))
        keys.append((hashes[-1], method, anchor(W.size, W.size * room / dense)))
        results.append(store.result(keys[-1]) if store is not None else None)  # the layer's whole result
        known = store.entries(hashes[-1]) if store is not None and results[-1] is None else {}
        tasks.append(task_arguments(W, W.size * room / dense, method, hashes[-1], known))
    todo = [i for i, r in enumerate(results) if r is None]
    reused = len(chosen) - len(todo)
    ran = run_tasks(layer_task, [tasks[i] for i in todo], n_jobs=n_jobs, client=client,
                    sizes=[tasks[i][0].size for i in todo], progress=progress, desc=f"sekron compress ({method})")
    for i, got in zip(todo, ran):
        results[i] = got
        if store is not None:
            store.keep_result(keys[i], got[0])
    results = [(r, {}, 0, 0) if i not in todo else r for i, r in enumerate(results)]
    frontiers, hits, misses, families = [], 0, 0, []
    orders: dict[tuple[str, Any, Any, Any], tuple[int, ...] | None] = {}  # deployed stage order per candidate
    for whash, (plain, new, h, m) in zip(hashes, results):
        if store is not None:
            store.update(whash, new)
            store.hits, store.misses = store.hits + h, store.misses + m
        hits, misses = hits + h, misses + m
        families.append([family_from_plain(p) for p in plain])
    if budget == "params":
        frontiers = [Frontier.from_families(fams, task[0].size) for fams, task in zip(families, tasks)]
    else:
        frontiers = _mac_frontiers(chosen, families, orders, n_jobs, client, progress)
    del tasks, results, ran  # the search's state (cache entries of every layer): not needed by what follows

    def build(layer: _Layer, cand: Candidate) -> nn.Module:
        kind = LAYERS[type(layer.module)]
        make = kind.from_linear if kind.__name__ == "SeKronLinear" else kind.from_conv  # type: ignore[attr-defined]
        if budget == "macs":  # the stages the allocation paid for: to_standard deploys exactly this order
            key = (layer.name, cand.structure.factor_shapes, cand.structure.labels, tuple(sorted(cand.rank.items())))
            return make(layer.module, cand, implementation="factorized", order=orders[key])  # type: ignore[no-any-return]
        return make(layer.module, cand, implementation=implementation)  # type: ignore[no-any-return]

    was_training = model.training
    t0 = time.perf_counter()
    alloc_frontiers = frontiers
    if allocation == "sensitivity":
        assert batches is not None
        by_name = {layer.name: layer for layer in chosen}
        alloc_frontiers = sensitivity_frontiers(
            model, [layer.name for layer in chosen], frontiers, lambda n, c: build(by_name[n], c), batches,
            progress=lambda it: show_progress(it, desc="sekron sensitivity", enabled=progress),
            fit_steps=sensitivity_steps if objective == "output" else 0, solver=solver,
            max_samples=max_samples, seed=seed, families=families, structures=structures,
            patterns=budget == "params")  # per-pattern frontiers are priced in parameters
    if budget == "macs" and sum(int(f.cost[0]) for f in alloc_frontiers) > room:
        stuck = [layer.name for layer, f in zip(chosen, alloc_frontiers) if f.refs[0] is None]
        raise ValueError(f"ratio {ratio} of the deployed MACs is out of reach: even the cheapest deployments leave "
                         f"{sum(int(f.cost[0]) for f in alloc_frontiers) + whole - dense:,} of {whole:,} MACs; "
                         f"{len(stuck)} layers have no candidate that deploys cheaper than the dense layer "
                         f"({stuck[:5]}{'...' if len(stuck) > 5 else ''}; method={method!r}). Lower the ratio, "
                         "compress more layers, or use method='sekron' (its two-factor structures deploy as plain "
                         "conv pairs)")
    picks = (uniform if allocation == "uniform" else allocate)(alloc_frontiers, room)
    uniform_err = float(sum(f.err2[i] for f, i in zip(frontiers, uniform(frontiers, room))))
    reference = copy.deepcopy(model).eval() if objective == "output" else None
    rows, err, built = [], 0.0, []
    for layer in layers:
        if layer.skip is not None:
            rows.append(_row(layer, None, f"skipped: {layer.skip}"))
            continue
        f = alloc_frontiers[chosen.index(layer)]
        i = picks[chosen.index(layer)]
        cand = f.candidate(i)
        if cand is None:
            rows.append(_row(layer, None, "kept dense (allocation)"))
            continue
        err += cand.error ** 2
        new = build(layer, cand)
        model.set_submodule(layer.name, new)
        rows.append(_row(layer, cand, "compressed", new))
        if allocation == "sensitivity":
            rows[-1]["sensitivity"] = math.sqrt(max(float(f.err2[i]), 0.0))
        built.append((layer, new, rows[-1]))
    if reference is not None:
        assert batches is not None
        model.eval()
        try:
            _fit_outputs(model, reference, layers, rows, built, batches, refit_dense=refit_dense, seed=seed,
                         max_samples=max_samples, solver=solver, fit_steps=fit_steps, progress=progress,
                         group_bytes=fit_group_bytes)
        finally:
            model.train(was_training)
    after = sum(int(p.numel()) for p in model.parameters())
    macs = [r["macs_before"] for r in rows]
    deployed_macs = [r["deployed_macs"] for r in rows]
    deployed_params = after - sum(r["params_after"] for r in rows if r["status"] == "compressed") + sum(
        r["deployed_params"] for r in rows if r["status"] == "compressed")
    totals = {"params_before": total, "params_after": after, "ratio": total / after, "target_ratio": ratio,
              "layers_compressed": sum(1 for r in rows if r["status"] == "compressed"), "method": method,
              "allocation": allocation, "objective": objective, "sq_error": err, "uniform_sq_error": uniform_err,
              "cache_hits": hits, "cache_misses": misses, "cache_layers_reused": reused,
              "macs_before": None if None in macs else sum(macs),
              "macs_after": None if None in macs else sum(r["macs_after"] for r in rows),
              "budget": budget, "deployed_params": deployed_params,
              "deployed_macs": None if None in deployed_macs else sum(deployed_macs),
              "deployed_macs_ratio": None if None in macs or None in deployed_macs or not sum(deployed_macs)
              else sum(macs) / sum(deployed_macs),
              "calibration_seconds": None if batches is None else time.perf_counter() - t0,
              "calibration_inputs": None if batches is None else sum(int(b.shape[0]) for b in batches),
              "folded_batchnorm": folded}
    return model, CompressionReport(rows, totals)


def _fold(model: nn.Module, batches: list[torch.Tensor] | None, input_shape: Sequence[int] | None, *,
          force: bool) -> list[tuple[str, str]]:
    """Fold BatchNorms into their convs (in place), checked on the first calibration batch or zeros."""
    from .fold import fold_batchnorm

    if batches is not None:
        example = batches[0]
    else:
        assert input_shape is not None
        param = next(model.parameters())
        example = torch.randn(tuple(input_shape), generator=torch.Generator().manual_seed(0)).to(param)
    return fold_batchnorm(model, example, force=force)


def _fit_outputs(model: nn.Module, reference: nn.Module, layers: list[_Layer], rows: list[dict[str, Any]],
                 built: list[tuple[_Layer, nn.Module, dict[str, Any]]], batches: list[torch.Tensor], *,
                 refit_dense: bool, seed: int, max_samples: int, solver: str, fit_steps: int, progress: bool,
                 group_bytes: int = 0) -> None:
    """Fit each built layer (in execution order) to the dense model's outputs; record the errors in its row.

    Dense layers after the first compressed one are refitted in closed form when ``refit_dense``; a layer
    that never runs in eval mode keeps its weight fit (it has no inputs to fit to).

    The layers are taken in consecutive groups (:func:`fit_groups`, Gram bytes at most ``group_bytes``;
    0 is one layer per group). A group's Grams are streamed together (``stream_group_grams``: per batch,
    one pass of each network, stopped after the group's last layer), then its layers are fitted in order.
    Approximation: in a group, layer ``k``'s actual input ``X`` comes from the compressed prefix with the
    group's earlier layers passing on their *dense* layers' outputs (:data:`FIT_GROUP_DENSE_MEMBERS`; at
    their weight fit when False), while the target ``Y`` is the dense output as always; so layer ``k``
    corrects the prefix's drift but neither the weight-fit error of its group predecessors (which would
    overshoot once they are fitted) nor their remaining output-fit error. Layers of the next group see
    every earlier layer fitted. One layer per group is the exact sequential fit.
    """
    gen = torch.Generator().manual_seed(seed)
    if refit_dense:
        refit = ("kept dense (allocation)", "skipped: first layer (skip_first)", "skipped: weight smaller than")
        built = built + [(layer, layer.module, row) for layer, row in zip(layers, rows)
                         if row["status"].startswith(refit)]
    dense_mods = [reference.get_submodule(layer.name) for layer, _, _ in built]
    order = execution_order(reference, dense_mods, batches[0])
    started = False
    todo = []
    for j in order:
        started = started or built[j][2]["status"] == "compressed"
        if started:  # a dense layer before any compressed one already matches
            todo.append(j)
    groups = fit_groups([gram_bytes(dense_mods[j]) for j in todo], group_bytes)
    first = {todo[group[0]]: [todo[g] for g in group] for group in groups}
    pending: dict[int, Any] = {}
    for j in show_progress(todo, desc="sekron output fit", enabled=progress):
        if j in first:  # the first layer of a group: stream the Grams of the whole group in one pass per batch
            js = first[j]
            pending = dict(zip(js, stream_group_grams(reference, [dense_mods[i] for i in js], model,
                                                      [built[i][1] for i in js], batches, max_samples, gen,
                                                      dense_members=FIT_GROUP_DENSE_MEMBERS)))
        _, new, row = built[j]
        grams = pending.pop(j)
        compressed = row["status"] == "compressed"
        target = blend_target(grams, FIT_DRIFT_CORRECTION)
        before = None if target is grams else output_error(new, grams)
        fit = fit_layer(new, target, solver=solver, steps=fit_steps) if compressed else refit_dense_layer(new, target)
        # the errors reported are always against the dense network's output
        row["output_error_weight_fit"] = math.sqrt(fit.before if before is None else before)
        row["output_error"] = math.sqrt(fit.after if before is None else output_error(new, grams))
        row["fit_samples"] = grams.count
        del grams


def fit_groups(sizes: Sequence[int], cap: int) -> list[list[int]]:
    """Consecutive groups of indices into ``sizes`` whose sizes sum to at most ``cap`` (a larger one alone).

    >>> fit_groups([3, 3, 5, 1, 9, 2], 6)
    [[0, 1], [2, 3], [4], [5]]
    >>> fit_groups([3, 3], 0)
    [[0], [1]]
    """
    groups: list[list[int]] = []
    used = 0
    for i, size in enumerate(sizes):
        if groups and used + size <= cap:
            groups[-1].append(i)
            used += size
        else:
            groups.append([i])
            used = size
    return groups
