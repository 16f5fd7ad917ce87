"""Whole-model compression: pick a structure and ranks per layer under one global budget.

:func:`compress` walks ``model.named_modules()``, scores every eligible layer's weight
with the machinery of :mod:`sekron.structure_search` (all ranks of every scored structure, not just
one budget), allocates the parameter budget across layers, and swaps the chosen layers
for SeKron layers with ``set_submodule``. The allocation minimises the sum over layers of
the squared relative errors ``||W - W_hat||^2 / ||W||^2`` (a greedy walk down each
layer's lower convex hull of error against parameters, then a fill pass), which can
never do worse than the same machinery at a uniform per-layer ratio; the report gives
both totals.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._parallel import run_tasks
from ..structure_search import Candidate, candidate_macs
from ..structure_search._cache import SearchCache, default_cache, weight_hash
from ..structure_search._layer import FINE_LADDER, LADDER, METHODS, family_from_plain, layer_task, task_arguments  # noqa: F401
from ._allocate import Frontier, allocate, uniform
from ._report import CompressionReport
from .layers import LAYERS, _as_pointwise

ALLOCATIONS = ("error", "uniform")


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


def _row(layer: _Layer, cand: Candidate | None, status: str) -> dict[str, Any]:
    w = layer.module.weight
    return {
        "name": layer.name, "type": type(layer.module).__name__, "shape": list(w.shape), "status": status,
        "structure": None if cand is None else [list(s) for s in cand.structure.factor_shapes],
        "pattern": None if cand is None else cand.pattern, "rank": None if cand is None else dict(cand.rank),
        "baseline": None if cand is None else cand.baseline,
        "params_before": int(w.numel()), "params_after": int(w.numel()) if cand is None else cand.params,
        "macs_before": _dense_macs(layer),
        "macs_after": _dense_macs(layer) if cand is None else _sekron_macs(layer, cand),
        "error": 0.0 if cand is None else cand.error,
    }


def compress(model: nn.Module, ratio: float, *, method: str = "sekron", include: Sequence[str] | None = None,
             exclude: Sequence[str] | None = None, skip_first: bool = True, min_kernel_size: int = 1024,
             input_shape: Sequence[int] | None = None, allocation: str = "error", implementation: str = "auto",
             inplace: bool = False, progress: bool = True, n_jobs: int = -1, client: Any = None,
             cache: bool | SearchCache = True, cache_dir: str | None = None) -> tuple[nn.Module, CompressionReport]:
    """Replace conv and linear layers by SeKron layers so that the model has ``ratio`` times fewer parameters.

    Parameters
    ----------
    model : torch.nn.Module
        Copied first (``copy.deepcopy``) unless ``inplace``.
    ratio : float > 1
        Parameters of the whole model before / after (biases, norms and skipped layers count).
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
        report gives MACs before and after (from :func:`sekron.conv_cost`).
    allocation : {"error", "uniform"}
        "error": least sum of squared relative errors for the budget (module docstring);
        "uniform": the same per-layer ratio everywhere.
    implementation : {"auto", "factorized", "dense"}
        Forward plan of the new layers.
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
        gives. False computes everything afresh.
    cache_dir : str, optional
        Also keep the cache on disk there (``.npz`` + JSON, no pickle), across processes.

    Returns
    -------
    (model, CompressionReport)

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import compress
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3))
    >>> small, report = compress(net, ratio=3, progress=False)
    >>> type(small[2]).__name__, report.totals["ratio"] >= 3
    ('SeKronConv2d', True)
    """
    ratio = _check_ratio(ratio)
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {list(ALLOCATIONS)}, got {allocation!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = model if inplace else copy.deepcopy(model)
    layers = _select(model, include, exclude, skip_first, int(min_kernel_size))
    if input_shape is not None:
        _record_shapes(model, layers, input_shape)
    chosen = [layer for layer in layers if layer.skip is None]
    if not chosen:
        raise ValueError("no layer is eligible for compression (all skipped: "
                         f"{ {layer.name: layer.skip for layer in layers} }); adjust include/exclude/min_kernel_size")
    total = sum(int(p.numel()) for p in model.parameters())
    dense = sum(int(layer.module.weight.numel()) for layer in chosen)
    target = total / ratio
    room = target - (total - dense)
    if room <= 0:
        raise ValueError(f"ratio {ratio} is impossible: the {total - dense:,} parameters that stay dense already "
                         f"exceed the target of {target:,.0f} (model has {total:,}); lower the ratio or compress "
                         "more layers")
    for layer in chosen:  # before any work: a NaN would otherwise surface as a raw LinAlgError deep in an SVD
        with torch.no_grad():
            finite = bool(torch.isfinite(layer.module.weight).all())
        if not finite:
            raise ValueError(f"layer {layer.name!r} has NaN or Inf in its weight; clean the model first "
                             "(e.g. retrain, or torch.nan_to_num_ on that weight), or exclude the layer")
    store = _cache_of(cache, cache_dir)
    tasks, hashes = [], []
    for layer in chosen:
        W = _weight64(layer.module)
        hashes.append(weight_hash(W))
        known = store.entries(hashes[-1]) if store is not None else {}
        tasks.append(task_arguments(W, W.size * room / dense, method, hashes[-1], known))
    results = run_tasks(layer_task, tasks, n_jobs=n_jobs, client=client, sizes=[t[0].size for t in tasks],
                        progress=progress, desc=f"sekron compress ({method})")
    frontiers, hits, misses = [], 0, 0
    for task, whash, (plain, new, h, m) in zip(tasks, hashes, results):
        if store is not None:
            store.update(whash, new)
            store.hits, store.misses = store.hits + h, store.misses + m
        hits, misses = hits + h, misses + m
        frontiers.append(Frontier.from_families([family_from_plain(p) for p in plain], task[0].size))
    picks = (allocate if allocation == "error" else uniform)(frontiers, room)
    uniform_err = float(sum(f.err2[i] for f, i in zip(frontiers, uniform(frontiers, room))))
    rows, err = [], 0.0
    for layer in layers:
        if layer.skip is not None:
            rows.append(_row(layer, None, f"skipped: {layer.skip}"))
            continue
        f = frontiers[chosen.index(layer)]
        i = picks[chosen.index(layer)]
        cand = f.candidate(i)
        err += float(f.err2[i])
        if cand is None:
            rows.append(_row(layer, None, "kept dense (allocation)"))
            continue
        kind = LAYERS[type(layer.module)]
        build = kind.from_linear if kind.__name__ == "SeKronLinear" else kind.from_conv  # type: ignore[attr-defined]
        model.set_submodule(layer.name, build(layer.module, cand, implementation=implementation))
        rows.append(_row(layer, cand, "compressed"))
    after = sum(int(p.numel()) for p in model.parameters())
    macs = [r["macs_before"] for r in rows]
    totals = {"params_before": total, "params_after": after, "ratio": total / after, "target_ratio": ratio,
              "layers_compressed": sum(1 for r in rows if r["status"] == "compressed"), "method": method,
              "allocation": allocation, "sq_error": err, "uniform_sq_error": uniform_err,
              "cache_hits": hits, "cache_misses": misses,
              "macs_before": None if None in macs else sum(macs),
              "macs_after": None if None in macs else sum(r["macs_after"] for r in rows)}
    return model, CompressionReport(rows, totals)
