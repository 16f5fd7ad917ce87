"""Sensitivity allocation: per layer and candidate size, how much the network output moves.

For every compressed layer and every candidate on its frontier (a ladder of per-layer
ratios), only that layer is replaced by its weight fit (then, with ``fit_steps``, fitted
to the dense layer's outputs, :func:`sekron.torch.calibrate.fit_layer`, so the damage is
the one left after output fitting), and the relative squared change
of the network output on the calibration inputs, ``sum ||f_l(x) - f(x)||^2 / sum
||f(x)||^2``, is its damage. The layers' (parameters, damage) points then go through the
same budget allocation as the weight errors (the frontier's other points get damages
interpolated between the measured ones, so the budget is spent as finely) (:func:`sekron.torch._allocate.allocate`:
greedy on the convex hulls, then a fill pass), in the spirit of AIMET's greedy
compression-ratio selection.

With the layers' scored structures (``families``) and ``patterns``, the damage is measured
along each bond pattern's own frontier (:data:`PATTERNS`; a classical baseline, e.g. CP,
apart from the SeKron structures of its pattern): the weight-error frontier, a union over
patterns, drops most points of a pattern whose sizes damage the output less. Each
pattern's unmeasured points are interpolated between its own measured points only.

On a ``torch.fx.GraphModule`` (onnx2torch's output, or a traced model) each measurement
recomputes only the graph downstream of the swapped layer (:class:`_Replay`, ``REPLAY``),
from values cached by one dense pass per layer: the same outputs as a full pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._allocate import Frontier
from .calibrate import _first_tensor, execution_order, fit_layer, stream_grams

#: per-layer compression ratios at which each layer's damage is measured
RATIOS = tuple(float(r) for r in np.geomspace(1.25, 128.0, 13))
#: on a ``torch.fx.GraphModule`` (e.g. from onnx2torch), recompute only the graph downstream of the replaced layer
REPLAY = True
#: with the layers' families (and a parameter budget), measure the damage along each bond pattern's own
#: frontier too (:func:`sensitivity_frontiers`): up to ``len(RATIOS)`` measurements per pattern and layer.
#: Off by default: on Fashion-MNIST ResNet-8 (docs/results.md) it chose the same 10x model at 2.3x the
#: sensitivity time, and 71.60 against 72.24 at 20x
PATTERNS = False


def _ladder(f: Frontier, ratios: Sequence[float]) -> list[int]:
    """Frontier indices: the best point within each per-layer ratio, plus the cheapest one."""
    picks = {0}
    for r in ratios:
        ok = np.flatnonzero(f.params[:-1] <= f.dense / r)
        if ok.size:
            picks.add(int(ok[-1]))
    return sorted(picks)


def _interpolated(f: Frontier, pts: Sequence[tuple[int, float, Any]]) -> Frontier:
    """All points of ``f`` with damages: measured where measured, else interpolated (linear in log params).

    The frontier between two measured sizes keeps its intermediate points, so the budget
    can be spent as finely as with the weight errors; "keep dense" has damage 0. A
    measured point may be another structure than ``f``'s point of that size (chosen by
    output error); it then enters with its own size and reference.
    """
    mp = np.log(np.asarray([p[0] for p in pts] + [f.dense], dtype=float))
    md = np.asarray([p[1] for p in pts] + [0.0])
    order = np.argsort(mp)
    measured = {p[0] for p in pts}
    items = [(int(p[0]), float(p[1]), p[2]) for p in pts]
    items += [(int(q), float(np.interp(np.log(q), mp[order], md[order])), f.refs[i])
              for i, q in enumerate(f.params[:-1]) if int(q) not in measured]
    return _pareto(sorted(items, key=lambda t: (t[0], t[1])), f.dense)


def _pareto(items: Sequence[tuple[int, float, Any]], dense: int) -> Frontier:
    """The frontier of ``(cost, damage, reference)`` items sorted by cost: each item that lowers the damage, then
    "keep dense" (cost ``dense``, damage 0)."""
    keep, best = [], np.inf
    for item in items:
        if item[1] < best:
            keep.append(item)
            best = item[1]
    return Frontier(np.asarray([t[0] for t in keep] + [dense], dtype=np.int64),
                    np.asarray([t[1] for t in keep] + [0.0]), [t[2] for t in keep] + [None], dense)


def _merged(fronts: Sequence[Frontier], dense: int) -> Frontier:
    """The (cost, damage) Pareto set of several frontiers' points of one layer (dense point last, damage 0)."""
    items = sorted(((int(f.params[i]), float(f.err2[i]), k, f.refs[i]) for k, f in enumerate(fronts)
                    for i in range(len(f.params)) if f.refs[i] is not None and int(f.params[i]) < dense),
                   key=lambda t: t[:3])
    return _pareto([(cost, damage, ref) for cost, damage, _k, ref in items], dense)


def _pattern_frontiers(f: Frontier, families: Sequence[Any]) -> list[tuple[Frontier, list[Any]]]:
    """Per bond pattern of ``families`` (grouped by :func:`_pattern`, a classical baseline apart from the SeKron
    structures of its pattern): its parameter frontier below ``f.dense``, and its families."""
    groups: dict[str, list[Any]] = {}
    for fam in families:
        groups.setdefault(f"{_pattern(fam)}/{fam.baseline or 'sekron'}", []).append(fam)
    return [(Frontier.from_families(g, f.dense), g) for g in groups.values()]


def _alternatives(f: Frontier, i: int, families: Sequence[Any], count: int) -> list[Any]:
    """Up to ``count`` references ``(family, j)``: ``f``'s point ``i`` first, then the other structures' best
    points within its size, least weight error first (one per structure), other bond patterns before a
    second structure of a pattern already taken (so a CP-like and a nested choice are both tried)."""
    ref = f.refs[i]
    out = [ref]
    budget = int(f.params[i])
    others: list[tuple[float, int, int, Any]] = []
    for fam in families:
        if ref is not None and fam is ref[0]:
            continue
        j = fam.best_under(budget)
        if j is not None:
            others.append((float(fam.err[j]), -int(fam.params[j]), len(others), (fam, j)))
    others.sort(key=lambda t: t[:3])
    seen = {_pattern(ref[0])} if ref is not None else set()
    fresh: list[Any] = []
    rest: list[Any] = []
    for t in others:
        p = _pattern(t[3][0])
        (rest if p in seen else fresh).append(t[3])
        seen.add(p)
    return out + (fresh + rest)[:max(count - 1, 0)]


def _pattern(fam: Any) -> str:
    return str(getattr(fam.structure, "pattern", None) or fam.baseline or "")


def _as_candidate(ref: Any, dense: int) -> Any:
    from ..structure_search import Candidate

    fam, j = ref
    return Candidate(fam.structure, fam.rank(j), int(fam.params[j]), float(fam.err[j]), None, dense, fam.baseline,
                     fam.options(j))


@torch.no_grad()
def _outputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [_first_tensor(model(x)).detach() for x in batches]


class _Replay:
    """Outputs of a ``torch.fx.GraphModule`` with one layer swapped, recomputing only the nodes downstream of it.

    :meth:`prepare` runs the graph once per batch (an :class:`torch.fx.Interpreter`) and keeps the values that
    the layer's downstream nodes read from outside them; :meth:`outputs` then runs those nodes alone, with the
    module the layer's name holds at that moment. The same ops on the same inputs: the outputs equal a full
    forward pass (tests/torch/test_sensitivity_replay.py). ``partial_passes`` counts the runs of :meth:`outputs`,
    ``full_passes`` those of :meth:`prepare` (both per batch).
    """

    def __init__(self, gm: Any, batches: Sequence[torch.Tensor]) -> None:
        self.gm, self.batches = gm, batches
        self.nodes = list(gm.graph.nodes)
        self.full_passes = self.partial_passes = 0
        self.cached: list[dict[Any, Any]] = []
        self.sub: list[Any] = []

    @classmethod
    def of(cls, model: nn.Module, batches: Sequence[torch.Tensor]) -> _Replay | None:
        """A replay of ``model`` when it is a GraphModule with one input, else None (then full passes are run)."""
        from torch import fx

        if not REPLAY or not isinstance(model, fx.GraphModule):
            return None
        phs = [n for n in model.graph.nodes if n.op == "placeholder"]
        return cls(model, batches) if len(phs) == 1 and not phs[0].args else None

    def prepare(self, name: str) -> bool:
        """Cache the inputs of the nodes downstream of layer ``name``; False when it is not called exactly once."""
        calls = [n for n in self.nodes if n.op == "call_module" and n.target == name]
        if len(calls) != 1:
            return False
        down = {calls[0]}
        for n in self.nodes:  # graph order is topological
            if any(a in down for a in n.all_input_nodes):
                down.add(n)
        self.sub = [n for n in self.nodes if n in down]
        if self.sub[-1].op != "output":
            return False
        needed = {a for n in self.sub for a in n.all_input_nodes if a not in down}
        self.cached = [self._run(self.nodes, {}, x, keep=needed) for x in self.batches]
        self.full_passes += len(self.batches)
        return True

    @torch.no_grad()
    def _run(self, nodes: Sequence[Any], env: dict[Any, Any], x: torch.Tensor, keep: set[Any] | None = None) -> Any:
        from torch import fx

        run = fx.Interpreter(self.gm, garbage_collect_values=False)
        # copies: a downstream in-place op (``out.add_(shortcut)`` with ``out`` cached) must not change the cache
        run.env = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in env.items()}
        run.args_iter = iter((x,))
        last: dict[Any, Any] = {}  # free each value after its last reader among ``nodes``
        for n in nodes:
            for a in n.all_input_nodes:
                last[a] = n
        frees: dict[Any, list[Any]] = {}
        for a, n in last.items():
            frees.setdefault(n, []).append(a)
        kept = {}
        for n in nodes:
            run.env[n] = run.run_node(n)
            if keep is not None and n in keep:  # a copy, before any later in-place op of this pass changes it
                v = run.env[n]
                kept[n] = v.clone() if isinstance(v, torch.Tensor) else v
            for a in frees.get(n, ()):
                run.env.pop(a, None)
        return kept if keep is not None else run.env[nodes[-1]]

    def outputs(self) -> list[torch.Tensor]:
        """The network outputs on every batch, with what the prepared layer's name now holds."""
        self.partial_passes += len(self.batches)
        return [_first_tensor(self._run(self.sub, env, x)).detach() for env, x in zip(self.cached, self.batches)]


def sensitivity_frontiers(model: nn.Module, names: Sequence[str], frontiers: Sequence[Frontier],
                          build: Callable[[str, Any], nn.Module], batches: Sequence[torch.Tensor],
                          ratios: Sequence[float] = RATIOS, progress: Callable[[Any], Any] = iter,
                          fit_steps: int = 0, solver: str = "als", max_samples: int = 32768, seed: int = 0,
                          families: Sequence[Sequence[Any]] | None = None, structures: int = 1,
                          patterns: bool = False) -> list[Frontier]:
    """Frontiers whose errors are the measured output damage (``model`` is a dense working copy).

    With ``families`` (each layer's scored structures), ``structures > 1`` and ``fit_steps``,
    each measured size tries the ``structures`` structures of least weight error within it,
    output-fits each, and measures the network damage of the one of least output error
    ``||Y - layer(X)||`` (the structure choice by output error rather than weight error).

    With ``families``, ``patterns`` and :data:`PATTERNS`, a layer whose families hold more than
    one bond pattern (:func:`_pattern`) is measured along each pattern's own parameter frontier
    (at the ladder ratios: each pattern's best weight-error point within each ratio), each
    pattern's unmeasured points get damages interpolated between that pattern's own measured
    points, and the layer's frontier is the (parameters, damage) Pareto set of all of them. So
    the allocation can pick, per layer, the pattern whose sizes damage the output least, even
    where its points are dominated in weight error. Cost: up to ``len(ratios)`` measurements
    (each an output fit with ``fit_steps`` and a network pass) per pattern instead of per layer,
    i.e. about the number of patterns (4 to 8 for ``method="sekron"``) times the time. The
    frontiers are priced in parameters (``Frontier.from_families``), so ``frontiers`` must be
    too: the caller passes ``patterns`` only with a parameter budget.
    """
    work = copy.deepcopy(model).eval()
    ref = _outputs(work, batches)
    norm = sum(float((r.double() ** 2).sum()) for r in ref) or 1.0
    runs = set(execution_order(work, [work.get_submodule(n) for n in names], batches[0]))
    replay = _Replay.of(work, batches)
    out = []
    for j, (name, f) in enumerate(progress(list(zip(names, frontiers)))):
        dense = work.get_submodule(name)
        fams = families[j] if families is not None else None
        fronts: list[tuple[Frontier, Sequence[Any] | None]] = [(f, fams)]
        if PATTERNS and patterns and fams is not None and len({(_pattern(fam), fam.baseline) for fam in fams}) > 1:
            fronts = list(_pattern_frontiers(f, fams))
        todo = [(g, gf, i) for g, gf in fronts for i in _ladder(g, ratios) if g.refs[i] is not None]
        partial = replay is not None and bool(todo) and replay.prepare(name)
        grams = None
        if fit_steps > 0 and j in runs:  # a layer that never runs in eval mode has no inputs to fit to
            grams = stream_grams(work, dense, work, dense, batches, max_samples, torch.Generator().manual_seed(seed))
        pts: dict[int, list[tuple[int, float, Any]]] = {id(g): [] for g, _ in fronts}
        for g, gf, i in todo:
            refs: list[Any] = [g.refs[i]]
            if grams is not None and gf is not None and structures > 1:  # other structures (of g's pattern)
                refs = _alternatives(g, i, gf, structures)
            best = None
            for r in refs:
                new = build(name, _as_candidate(r, f.dense))
                err = fit_layer(new, grams, solver=solver, steps=fit_steps).after if grams is not None else 0.0
                if best is None or err < best[0]:
                    best = (err, new, r)
            assert best is not None
            _, new, r = best
            work.set_submodule(name, new)
            got = replay.outputs() if partial and replay is not None else _outputs(work, batches)
            size = int(g.params[i]) if r is refs[0] else int(r[0].params[r[1]])  # the frontier's own cost unit
            pts[id(g)].append((size, sum(float(((o - r_).double() ** 2).sum())
                                         for o, r_ in zip(got, ref)) / norm, r))
        work.set_submodule(name, dense)
        out.append(_interpolated(f, pts[id(f)]) if len(fronts) == 1 else
                   _merged([_interpolated(g, pts[id(g)]) for g, _ in fronts], f.dense))
    return out
