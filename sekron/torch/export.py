"""Deployment: SeKron layers rewritten as plain ``torch.nn`` modules (:func:`to_standard`).

A factorized plan applies one factor per stage as a grouped convolution. Deployed, the
intermediate tensor keeps every open index in its channel axis, as a product of
*labelled digits* (input digits ``c<k>``, output digits ``f<k>``, bonds ``r<x>``; digits
of size 1 are dropped). A stage is then one ``torch.nn.Conv{D}d`` whose groups are the
digits it passes through and whose per-group inputs are the digits it contracts: those
must be the trailing digits of the channel axis. The order of the digits a conv writes
is free (it is folded into the conv's weight), and a ``torch.nn.ChannelShuffle``
rotates the channel digits when a stage needs others at the end. Seen as a ring, a
rotation changes nothing and a stage replaces one arc (the digits it contracts) by the
digits it writes; a small search picks the written orders that need the fewest and
cheapest rotations. When the digits a stage contracts are not one arc of the ring, the
stage widens its arc: the digits between become inputs and outputs of the same conv,
carried through by an identity block (more MACs, no copy). The result holds only
torch's own modules (``Sequential``, ``Conv{D}d``, ``ChannelShuffle``, padding modules,
``Linear``), so it runs, pickles, scripts and exports where sekron is not installed.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..convolution import _plan as cp
from ..convolution._conv import _pads
from .layers import (
    NOMINAL_SPATIAL,
    SeKronConv1d,
    SeKronConv2d,
    SeKronConv3d,
    SeKronLinear,
    _plan,
    _SeKronBase,
    _SeKronConvNd,
)

IMPLEMENTATIONS = ("auto", "factorized", "dense")
#: orders tried when the layer's own stage order needs a widened arc (at most this many factors)
ORDER_SEARCH_MAX_FACTORS = 4
#: written digit orders tried per stage (all permutations up to 4 digits)
_MAX_PERMUTATIONS = 24
#: modelled efficiency of a conv (n_in taps, n_out outputs per group); the planner's model
_EFFICIENCY = cp.conv_efficiency
_PAD_MODULES: dict[str, tuple[type[nn.Module], ...]] = {
    "zeros": (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d),
    "reflect": (nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d),
    "replicate": (nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d),
    "circular": (nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d),
}


@dataclass(frozen=True)
class DeployStage:
    """One grouped convolution of a deployed factorized layer.

    ``shuffle`` is the ``ChannelShuffle`` group count applied before the conv (None: no
    shuffle); the conv's input channels are ``groups`` digits then ``ins`` digits, its
    output channels ``groups`` then ``outs``; ``carried`` digits are in both ``ins`` and
    ``outs`` (an identity block, when the contracted digits were not one arc).
    """

    factor: int
    shuffle: int | None
    groups: tuple[str, ...]
    ins: tuple[str, ...]
    outs: tuple[str, ...]
    carried: tuple[str, ...]
    macs: int
    #: conv weight entries (``groups * outs * ins * taps``): the stage's MACs per output position
    weights: int = 0
    n_groups: int = 1


@dataclass(frozen=True)
class DeployPlan:
    """Stages of a deployed factorized layer, the final ``ChannelShuffle`` (or None) and the modelled cost."""

    order: tuple[int, ...]
    stages: tuple[DeployStage, ...]
    final_shuffle: int | None
    macs: int
    score: float

    @property
    def n_shuffles(self) -> int:
        return sum(s.shuffle is not None for s in self.stages) + (self.final_shuffle is not None)


def _rotation(L: tuple[str, ...], target: tuple[str, ...]) -> int | None:
    """t with L[t:] + L[:t] == target, or None."""
    if len(L) != len(target):
        return None
    for t in range(max(len(L), 1)):
        if L[t:] + L[:t] == target:
            return t
    return None


def pad_stages(factor_shapes: Sequence[Sequence[int]], order: Sequence[int],
               pads: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """Per spatial axis, the stage of a deployed factorized conv that pads it.

    Symmetric padding goes to the first stage whose kernel spans the axis (0 when none does):
    the stages before it are point-wise along that axis, stride 1 there (a stride is applied at
    the last spanning stage), no bias, so padding their input or their output is the same
    function for every padding mode, and they run on the unpadded size. Asymmetric padding
    (a pad module before the first stage) stays at stage 0.

    >>> pad_stages([(1, 64, 1, 1), (32, 1, 3, 3)], (0, 1), ((1, 1), (1, 1)))
    (1, 1)
    >>> pad_stages([(1, 64, 1, 3), (32, 1, 3, 1)], (0, 1), ((1, 1), (1, 1)))
    (1, 0)
    """
    if any(lo != hi for lo, hi in pads):
        return (0,) * len(pads)
    at = []
    for n in range(len(pads)):
        wide = [i for i, k in enumerate(order) if int(factor_shapes[k][2 + n]) > 1]
        at.append(wide[0] if wide else 0)
    return tuple(at)


def stage_spatial(factor_shapes: Sequence[Sequence[int]], labels: Sequence[str], ranks: dict[str, int],
                  order: Sequence[int], spatial: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                  pads: Sequence[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Spatial size before the first stage and after each stage of a deployed factorized conv.

    Each axis is padded at its stage of :func:`pad_stages`.
    """
    S = len(factor_shapes)
    D = len(factor_shapes[0]) - 2
    sp = tuple(int(L) for L in spatial)
    pad_at = pad_stages(factor_shapes, order, pads)
    stride_at = cp._stride_stages(cp.KernelSpec(tuple(tuple(int(v) for v in fs) for fs in factor_shapes),
                                                tuple(labels), tuple(sorted(ranks.items()))), tuple(order))
    sps = [sp]
    for i, k in enumerate(order):
        sp = tuple(L + lo + hi if pad_at[n] == i else L for n, (L, (lo, hi)) in enumerate(zip(sp, pads)))
        h = factor_shapes[k][2:]
        dil = [d * math.prod(factor_shapes[j][2 + n] for j in range(k + 1, S)) for n, d in enumerate(dilation)]
        st = [stride[n] if stride_at[n] == i else 1 for n in range(D)]
        sp = tuple((L - dd * (hh - 1) - 1) // s + 1 for L, dd, hh, s in zip(sp, dil, h, st))
        sps.append(sp)
    return sps


def deploy_plan(factor_shapes: Sequence[Sequence[int]], labels: Sequence[str], ranks: dict[str, int],
                order: Sequence[int], spatial: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                pads: Sequence[tuple[int, int]]) -> DeployPlan:
    """The deployed stages of a factorized SeKron convolution applied in ``order``.

    Parameters
    ----------
    factor_shapes : per factor ``(f_k, c_k, h_k^(1)..h_k^(D))``
    labels : bond labels per factor (as in :class:`sekron.Structure`)
    ranks : bond sizes ``{label: size}``
    order : the stage order (a permutation of the factors)
    spatial, stride, dilation, pads
        The nominal input's spatial size and the convolution's arguments per axis (they
        only weigh the costs; the plan is exact for any input).

    Examples
    --------
    >>> p = deploy_plan([(1, 64, 1, 1), (64, 1, 3, 3)], ["a", "a"], {"a": 8}, (0, 1), (14, 14), (1, 1),
    ...                 (1, 1), ((1, 1), (1, 1)))
    >>> [(s.groups, s.ins, s.outs) for s in p.stages], p.n_shuffles
    ([((), ('c0',), ('ra',)), ((), ('ra',), ('f1',))], 0)
    """
    S = len(factor_shapes)
    size: dict[str, int] = {"r" + b: int(n) for b, n in ranks.items()}
    for k, fs in enumerate(factor_shapes):
        size[f"f{k}"], size[f"c{k}"] = int(fs[0]), int(fs[1])
    big = [lab for lab in size if size[lab] > 1]
    info = []
    opened: set[str] = set()
    sps = stage_spatial(factor_shapes, labels, ranks, order, spatial, stride, dilation, pads)
    for i, k in enumerate(order):
        later = order[i + 1:]
        bonds = labels[k]
        later_users = {b for b in bonds if any(b in labels[j] for j in later)}
        new = ["r" + b for b in bonds if b not in opened]
        closed = ["r" + b for b in bonds if b in opened and b not in later_users]
        ins = frozenset(lab for lab in [f"c{k}", *closed] if lab in big)
        outs = tuple(lab for lab in [f"f{k}", *new] if lab in big)
        info.append((k, ins, outs, math.prod(factor_shapes[k][2:])))
        opened |= set(bonds)
    final = tuple(f"f{k}" for k in range(S) if f"f{k}" in big)
    start = tuple(f"c{k}" for k in range(S) if f"c{k}" in big)

    def prod(labs: Sequence[str]) -> int:
        return math.prod(size[lab] for lab in labs)

    def out_orders(outs: tuple[str, ...], carried: tuple[str, ...]) -> list[tuple[str, ...]]:
        digits = outs + carried
        rank_in_final = {lab: (final.index(lab) if lab in final else len(final)) for lab in digits}
        tries = [tuple(sorted(digits, key=lambda d: rank_in_final[d])), digits]
        tries += list(itertools.islice(itertools.permutations(digits), _MAX_PERMUTATIONS))
        return list(dict.fromkeys(tries))

    @functools.cache
    def go(i: int, L: tuple[str, ...]) -> tuple[float, tuple[Any, ...]]:
        n = len(L)
        if i == len(info):
            t = _rotation(L, final)
            if t is None:
                return math.inf, ()
            return (0.0 if t == 0 else cp.MEMORY_WEIGHT * prod(L) * math.prod(sps[i])), (t,)
        _k, ins, outs, taps = info[i]
        best: tuple[float, tuple[Any, ...]] = (math.inf, ())
        options = []
        for m in range(len(ins), n + 1):
            if m == n:
                options.append((0, m))
                break
            if m > len(ins) + 2:
                continue
            for t in range(n):
                R = L[t:] + L[:t]
                if ins <= set(R[n - m:]) and (m > 0 or t == 0):
                    options.append((t, m))
        for t, m in options:
            R = L[t:] + L[:t]
            G, A = R[:n - m], R[n - m:]
            carried = tuple(lab for lab in A if lab not in ins)
            c_in, g = prod(A), prod(G)
            shuffle = 0.0 if t == 0 else cp.MEMORY_WEIGHT * prod(L) * math.prod(sps[i])
            for O in out_orders(outs, carried):
                c_out = prod(O)
                out_el = g * c_out * math.prod(sps[i + 1])
                macs = out_el * c_in * taps
                here = shuffle + macs / _EFFICIENCY(c_in * taps, c_out) + cp.MEMORY_WEIGHT * out_el
                if here >= best[0]:
                    continue
                rest, choices = go(i + 1, G + O)
                if here + rest < best[0]:
                    best = (here + rest, ((t, m, O, macs), *choices))
        return best

    score, choices = go(0, start)
    stages = []
    L = start
    for (k, ins, _outs, taps), (t, m, O, macs) in zip(info, choices):
        n = len(L)
        R = L[t:] + L[:t]
        G, A = R[:n - m], R[n - m:]
        stages.append(DeployStage(k, None if t == 0 else prod(L[:t]), G, A, O,
                                  tuple(lab for lab in A if lab not in ins), macs,
                                  prod(G) * prod(O) * prod(A) * taps, prod(G)))
        L = G + O
    t_final = choices[-1]
    go.cache_clear()
    return DeployPlan(tuple(order), tuple(stages), None if t_final == 0 else prod(L[:t_final]),
                      sum(s.macs for s in stages), score)


# --- weights ---------------------------------------------------------------------------
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _stage_weight(factor: torch.Tensor, k: int, bonds: str, stage: DeployStage, size: dict[str, int]) -> torch.Tensor:
    """The conv weight ``(groups * outs, ins, *h)`` of one stage, from factor k."""
    names = ["r" + b for b in bonds] + [f"f{k}", f"c{k}"]
    D = factor.ndim - len(names)
    keep = [nm for nm in names if size[nm] > 1]
    h = tuple(factor.shape[len(names):])
    T = factor.reshape(*(size[nm] for nm in keep), *h)
    letters = iter(_LETTERS)
    sym = {lab: next(letters) for lab in dict.fromkeys([*keep, *stage.groups, *stage.ins, *stage.outs])}
    out_sym = {lab: (next(letters) if lab in stage.carried else sym[lab]) for lab in stage.outs}
    spatial = "".join(next(letters) for _ in range(D))
    operands: list[Any] = [T]
    subs = ["".join(sym[nm] for nm in keep) + spatial]
    for lab in stage.carried:
        operands.append(torch.eye(size[lab], dtype=factor.dtype, device=factor.device))
        subs.append(out_sym[lab] + sym[lab])
    present = [lab for lab in stage.groups if lab in keep]
    result = ("".join(sym[lab] for lab in present) + "".join(out_sym[lab] for lab in stage.outs)
              + "".join(sym[lab] for lab in stage.ins) + spatial)
    W = torch.einsum(",".join(subs) + "->" + result, *operands)
    # digits passed through (not bonds of this factor) repeat the same block in every group
    view = [size[lab] if lab in keep else 1 for lab in stage.groups]
    full = [size[lab] for lab in stage.groups]
    tail = list(W.shape[len(present):])
    W = W.reshape(*view, *tail).expand(*full, *tail)
    return W.reshape(math.prod(full) * math.prod(size[lab] for lab in stage.outs),
                     math.prod(size[lab] for lab in stage.ins), *h).contiguous()


# --- layers ----------------------------------------------------------------------------
def _resolve_pads(layer: _SeKronConvNd) -> tuple[tuple[int, int], ...]:
    return _pads(layer.padding, tuple(layer.kernel_size), tuple(layer.dilation), tuple(layer.stride))


def _sizes(layer: _SeKronBase, factors: Sequence[torch.Tensor]) -> dict[str, int]:
    st = layer.structure
    size: dict[str, int] = {}
    for k, (fs, lab, f) in enumerate(zip(st.factor_shapes, st.labels, factors)):
        size[f"f{k}"], size[f"c{k}"] = int(fs[0]), int(fs[1])
        for b, n in zip(lab, f.shape):
            size["r" + b] = int(n)
    return size


def _choose_plan(factor_shapes: Sequence[Sequence[int]], labels: Sequence[str], ranks: dict[str, int],
                 order: tuple[int, ...] | None, spatial: Sequence[int], stride: Sequence[int],
                 dilation: Sequence[int], pads: Sequence[tuple[int, int]]) -> DeployPlan:
    """The plan in ``order``, or the least modelled one over all orders when it needs carried digits.

    ``order=None`` starts from the natural order; the order of the plan returned, given
    back, yields the same plan.
    """
    S = len(factor_shapes)
    first = tuple(range(S)) if order is None else tuple(order)
    plan = deploy_plan(factor_shapes, labels, ranks, first, spatial, stride, dilation, pads)
    if any(s.carried for s in plan.stages) and S <= ORDER_SEARCH_MAX_FACTORS:
        for other in itertools.permutations(range(S)):
            cand = deploy_plan(factor_shapes, labels, ranks, other, spatial, stride, dilation, pads)
            if cand.score < plan.score:
                plan = cand
    return plan


def _nominal(kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """The spatial size per axis that deployment layouts are chosen for (as the layers' planner)."""
    return tuple(max(NOMINAL_SPATIAL, 2 * d * (K - 1) + 2) for d, K in zip(dilation, kernel_size))


# one plan per description: compress(budget="macs") prices every candidate of every layer, and a model's
# layers share few shapes (pricing Real-ESRGAN's 349 convs took over 30 minutes uncached)
@functools.lru_cache(maxsize=1 << 16)
def _deployment(factor_shapes: tuple[tuple[int, ...], ...], labels: tuple[str, ...],
                ranks: tuple[tuple[str, int], ...], order: tuple[int, ...] | None, stride: tuple[int, ...],
                dilation: tuple[int, ...], pads: tuple[tuple[int, int], ...],
                dense_if_cheaper: bool) -> DeployPlan | None:
    D = len(factor_shapes[0]) - 2
    kernel_size = tuple(math.prod(fs[2 + n] for fs in factor_shapes) for n in range(D))
    nominal = _nominal(kernel_size, dilation)
    plan = _choose_plan(factor_shapes, labels, dict(ranks), order, nominal, stride, dilation, pads)
    if dense_if_cheaper and any(s.carried for s in plan.stages):
        F, Cg = (math.prod(fs[j] for fs in factor_shapes) for j in (0, 1))
        if plan.score >= _dense_score_of(F, Cg, kernel_size, stride, dilation, nominal, pads):
            return None
    return plan


def deployment(factor_shapes: Sequence[Sequence[int]], labels: Sequence[str], ranks: dict[str, int],
               order: Sequence[int] | None, stride: Sequence[int], dilation: Sequence[int],
               pads: Sequence[tuple[int, int]], dense_if_cheaper: bool) -> DeployPlan | None:
    """What :func:`to_standard` deploys for a factorized conv: its stage plan, or None for one dense conv.

    The one deployment rule, shared by :func:`to_standard` and by
    ``compress(budget="macs")`` (which costs every candidate with it). The layout is
    chosen for the nominal input (spatial size ``NOMINAL_SPATIAL`` per axis, as the
    layers' planner); with ``dense_if_cheaper`` a plan that needs carried digits and is
    then modelled no faster than one dense conv gives None. ``order=None`` picks an
    order (:func:`_choose_plan`). Costs at a real input size:
    :func:`plan_cost`.

    Examples
    --------
    >>> p = deployment([(1, 64, 1, 1), (64, 1, 3, 3)], ["a", "a"], {"a": 8}, None, (1, 1), (1, 1),
    ...                ((1, 1), (1, 1)), True)
    >>> p.order, [s.weights for s in p.stages]
    ((0, 1), [512, 4608])
    """
    return _deployment(tuple(tuple(int(v) for v in fs) for fs in factor_shapes), tuple(labels),
                       tuple(sorted((str(b), int(n)) for b, n in ranks.items())),
                       None if order is None else tuple(int(k) for k in order), tuple(int(v) for v in stride),
                       tuple(int(v) for v in dilation), tuple((int(lo), int(hi)) for lo, hi in pads),
                       bool(dense_if_cheaper))


def plan_cost(plan: DeployPlan, factor_shapes: Sequence[Sequence[int]], labels: Sequence[str],
              ranks: dict[str, int], input_shape: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
              pads: Sequence[tuple[int, int]], linear: bool = False) -> tuple[int, int]:
    """MACs on an input ``(B, C, *spatial)`` and weight entries of the convs a deployed plan holds.

    ``linear``: the plan of a ``SeKronLinear`` (its point-wise kernel), deployed as
    ``nn.Linear`` stages whose grouped blocks become block-diagonal matrices (each stage
    stores and multiplies ``groups`` times its conv's weight entries); ``input_shape`` is
    then ``(rows, in_features)``.
    """
    if linear:
        rows = math.prod(input_shape[:-1])
        weights = sum(s.weights * s.n_groups for s in plan.stages)
        return rows * weights, weights
    sps = stage_spatial(factor_shapes, labels, ranks, plan.order, input_shape[2:], stride, dilation, pads)
    macs = int(input_shape[0]) * sum(s.weights * math.prod(sps[i + 1]) for i, s in enumerate(plan.stages))
    return macs, sum(s.weights for s in plan.stages)


def _dense_cost(F: int, Cg: int, kernel_size: Sequence[int], input_shape: Sequence[int] | None, stride: Any,
                dilation: Any, pads: Sequence[tuple[int, int]]) -> tuple[int | None, int]:
    weights = F * Cg * math.prod(kernel_size)
    if input_shape is None:
        return None, weights
    out = math.prod((L + lo + hi - d * (K - 1) - 1) // s + 1 for L, (lo, hi), d, K, s in
                    zip(input_shape[2:], pads, dilation, kernel_size, stride))
    return int(input_shape[0]) * out * weights, weights


def candidate_deployment(structure: Any, rank: dict[str, int], dense: nn.Module,
                         input_shape: Sequence[int] | None) -> tuple[int | None, int, tuple[int, ...] | None]:
    """(MACs, weight entries, stage order) of what a SeKron layer replacing ``dense`` deploys.

    ``structure``/``rank``: the factorization of ``dense.weight`` (a ``Conv{D}d`` with
    ``groups == 1`` or a ``Linear``). The order is the one to build the layer with
    (``implementation="factorized"``) so that :func:`to_standard` deploys this plan; None
    when the rule (:func:`deployment`) deploys one dense conv, whose cost is returned.
    MACs are None without ``input_shape`` (the layer's input, batch included).
    """
    return _price(tuple(tuple(int(v) for v in fs) for fs in structure.factor_shapes), tuple(structure.labels),
                  {str(b): int(n) for b, n in dict(rank).items()}, layer_geometry(dense),
                  None if input_shape is None else tuple(int(v) for v in input_shape))


def layer_geometry(dense: nn.Module) -> tuple[Any, ...] | None:
    """What pricing needs of a dense conv, as plain values; None for a ``Linear``.

    Returns ``(out_channels, in_channels // groups, kernel_size, stride, dilation, pads)``,
    ``pads`` as ``(before, after)`` per spatial axis (string paddings resolved).

    Examples
    --------
    >>> layer_geometry(torch.nn.Conv2d(8, 16, 3, padding="same"))
    (16, 8, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    >>> layer_geometry(torch.nn.Linear(4, 2)) is None
    True
    """
    if isinstance(dense, nn.Linear):
        return None
    if not isinstance(dense, nn.modules.conv._ConvNd):
        raise TypeError(f"layer_geometry prices a torch Conv1d/2d/3d or Linear, got {type(dense).__name__}; "
                        "pass the dense layer that the SeKron layer replaces")
    conv: Any = dense
    pads = _pads(conv.padding, tuple(conv.kernel_size), tuple(conv.dilation), tuple(conv.stride))
    return (int(conv.out_channels), int(conv.in_channels // conv.groups), tuple(conv.kernel_size),
            tuple(conv.stride), tuple(conv.dilation), pads)


def _price(factor_shapes: tuple[tuple[int, ...], ...], labels: tuple[str, ...], ranks: dict[str, int],
           geometry: tuple[Any, ...] | None,
           input_shape: tuple[int, ...] | None) -> tuple[int | None, int, tuple[int, ...] | None]:
    """:func:`candidate_deployment` on plain values (``geometry`` from :func:`layer_geometry`)."""
    if geometry is None:
        fs = [(*f, 1) for f in factor_shapes]
        plan = deployment(fs, labels, ranks, None, (1,), (1,), ((0, 0),), False)
        assert plan is not None
        weights = sum(s.weights * s.n_groups for s in plan.stages)
        macs = None if input_shape is None else math.prod(input_shape[:-1]) * weights
        return macs, weights, plan.order
    out_channels, in_per_group, kernel_size, stride, dilation, pads = geometry
    plan = deployment(factor_shapes, labels, ranks, None, stride, dilation, pads, True)
    if plan is None:
        return (*_dense_cost(out_channels, in_per_group, kernel_size, input_shape, stride, dilation, pads), None)
    if input_shape is None:
        return None, sum(s.weights for s in plan.stages), plan.order
    return (*plan_cost(plan, factor_shapes, labels, ranks, input_shape, stride, dilation, pads), plan.order)


def price_points(geometry: tuple[Any, ...] | None, input_shape: tuple[int, ...],
                 points: Sequence[tuple[Any, Any, Any]]) -> list[tuple[int, tuple[int, ...] | None]]:
    """(MACs, stage order) of each ``(factor_shapes, labels, rank items)`` point of one layer.

    The unit of work of ``compress(budget="macs")``'s pricing, on plain values so that it
    can run in worker processes (:func:`sekron._parallel.run_tasks`); the same results as
    :func:`candidate_deployment` point by point.

    Examples
    --------
    >>> conv = torch.nn.Conv2d(16, 16, 3, padding=1)
    >>> price_points(layer_geometry(conv), (1, 16, 8, 8), [(((1, 16, 1, 1), (16, 1, 3, 3)), ("a", "a"),
    ...                                                      (("a", 4),))])
    [(40960, (0, 1))]

    (the 1x1 stage ``16 -> 4`` on the 8x8 input, 4,096 MACs, then the 3x3 stage ``4 -> 16``,
    which pads, on 8x8, 36,864).
    """
    out = []
    for factor_shapes, labels, rank in points:
        macs, _, order = _price(tuple(tuple(int(v) for v in fs) for fs in factor_shapes), tuple(labels),
                                {str(b): int(n) for b, n in rank}, geometry, input_shape)
        assert macs is not None
        out.append((int(macs), order))
    return out


def deployed_cost(layer: nn.Module, input_shape: Sequence[int] | None = None,
                  implementation: str = "auto") -> tuple[int | None, int]:
    """(MACs, weight entries) of what :func:`standard_layer` deploys for ``layer`` (biases not counted).

    ``input_shape`` is the layer's input (batch included; ``(..., in_features)`` for a
    linear layer); without it the MACs are None.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import SeKronConv2d
    >>> layer = SeKronConv2d.from_conv(torch.nn.Conv2d(16, 16, 3, padding=1), [(1, 16, 1, 1), (16, 1, 3, 3)],
    ...                                rank=4, implementation="factorized")
    >>> deployed_cost(layer, (1, 16, 8, 8))  # 16 -> 4 (1x1, 8x8), then padded, 4 -> 16 (3x3, 8x8 out)
    (40960, 640)
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {list(IMPLEMENTATIONS)}, got {implementation!r}")
    if not isinstance(layer, _SeKronBase):
        raise TypeError(f"deployed_cost needs a SeKron layer, got {type(layer).__name__}")
    plan_kind = layer.implementation if implementation == "auto" else implementation
    with torch.no_grad():
        if isinstance(layer, SeKronLinear):
            F, C = layer.out_features, layer.in_features
            if plan_kind == "dense":
                return (None if input_shape is None else math.prod(input_shape[:-1]) * F * C), F * C
            kernel = layer._kernel()
            point = kernel.structure
            plan = deployment(point.factor_shapes, point.labels, dict(kernel.rank),
                              _factorized_order(layer, kernel), (1,), (1,), ((0, 0),), False)
            assert plan is not None
            weights = sum(s.weights * s.n_groups for s in plan.stages)
            return (None if input_shape is None else math.prod(input_shape[:-1]) * weights), weights
        assert isinstance(layer, _SeKronConvNd)
        pads = _resolve_pads(layer)
        Cg = layer.in_channels // layer.groups
        if plan_kind == "dense" or layer.groups > 1:
            return _dense_cost(layer.out_channels, Cg, layer.kernel_size, input_shape, layer.stride, layer.dilation,
                               pads)
        sk = layer.sekron_weight()
        st, ranks = layer.structure, dict(sk.rank)
        plan = deployment(st.factor_shapes, st.labels, ranks, _factorized_order(layer, sk), layer.stride,
                          layer.dilation, pads, implementation == "auto")
        if plan is None:
            return _dense_cost(layer.out_channels, Cg, layer.kernel_size, input_shape, layer.stride, layer.dilation,
                               pads)
        if input_shape is None:
            return None, sum(s.weights for s in plan.stages)
        return plan_cost(plan, st.factor_shapes, st.labels, ranks, input_shape, layer.stride, layer.dilation, pads)


def _factorized_order(layer: _SeKronBase, kernel: Any) -> tuple[int, ...]:
    if layer.order is not None:
        return tuple(layer.order)
    if isinstance(layer, SeKronLinear):
        _, order = _plan(kernel, "factorized", None, (32, layer.in_features, 1), 1, 0, 1, "zeros")
    else:
        assert isinstance(layer, _SeKronConvNd)
        _, order = _plan(kernel, "factorized", None, None, layer.stride, layer.padding, layer.dilation,
                         layer.padding_mode)
    assert order is not None
    return order


def _dense_score_of(F: int, Cg: int, kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                    spatial: Sequence[int], pads: Sequence[tuple[int, int]]) -> float:
    """The planner's modelled time of one dense conv (the kernel is formed once, at deploy time)."""
    taps = math.prod(kernel_size)
    out = math.prod((L + lo + hi - d * (K - 1) - 1) // s + 1 for L, (lo, hi), d, K, s in
                    zip(spatial, pads, dilation, kernel_size, stride))
    return F * out * Cg * taps / _EFFICIENCY(Cg * taps, F) + cp.MEMORY_WEIGHT * F * out


def _conv_stages(layer: _SeKronConvNd, order: tuple[int, ...], dense_if_cheaper: bool = False) -> nn.Module:
    D = layer._D
    conv_cls = layer._dense_cls
    factors = [f.detach() for f in layer.factors]
    size = _sizes(layer, factors)
    st = layer.structure
    pads = _resolve_pads(layer)
    ranks = {lab[1:]: n for lab, n in size.items() if lab[0] == "r"}
    plan = deployment(st.factor_shapes, st.labels, ranks, order, layer.stride, layer.dilation, pads, dense_if_cheaper)
    if plan is None:
        return layer.to_conv()
    mods: list[nn.Module] = []
    symmetric = all(lo == hi for lo, hi in pads)
    any_pad = any(lo or hi for lo, hi in pads)
    pad_at = pad_stages(st.factor_shapes, plan.order, pads)
    if any_pad and not symmetric:  # torch's pad modules take (last axis lo, hi, ..., first axis lo, hi)
        flat = tuple(v for lo_hi in reversed(pads) for v in lo_hi)
        mods.append(_PAD_MODULES[layer.padding_mode][D - 1](flat))
    stride_at = cp._stride_stages(cp.KernelSpec(st.factor_shapes, st.labels,
                                                tuple(sorted((lab[1:], n) for lab, n in size.items()
                                                             if lab[0] == "r"))), plan.order)
    S = st.n_factors
    like = factors[0]
    last = len(plan.stages) - 1
    for i, stage in enumerate(plan.stages):
        k = stage.factor
        if stage.shuffle is not None:
            mods.append(nn.ChannelShuffle(stage.shuffle))
        h = tuple(st.factor_shapes[k][2:])
        dil = tuple(1 if h[n] == 1 else d * math.prod(st.factor_shapes[j][2 + n] for j in range(k + 1, S))
                    for n, d in enumerate(layer.dilation))
        stride = tuple(layer.stride[n] if stride_at[n] == i else 1 for n in range(D))
        W = _stage_weight(factors[k], k, st.labels[k], stage, size)
        g = math.prod(size[lab] for lab in stage.groups)
        with_bias = i == last and layer.bias is not None
        padding = tuple(pads[n][0] if symmetric and pad_at[n] == i else 0 for n in range(D))
        conv: Any = conv_cls(W.shape[1] * g, W.shape[0], h, stride, padding, dil, g, with_bias,
                             layer.padding_mode if any(padding) else "zeros", device=like.device, dtype=like.dtype)
        with torch.no_grad():
            conv.weight.copy_(W)
            if with_bias:
                assert layer.bias is not None
                out_layout = stage.groups + stage.outs
                final = [f"f{j}" for j in range(S) if size[f"f{j}"] > 1]
                b = layer.bias.detach().reshape(*(size[lab] for lab in final)) if final else layer.bias.detach()
                if final:
                    b = b.permute(*(final.index(lab) for lab in out_layout)).reshape(-1)
                conv.bias.copy_(b)
        mods.append(conv)
    if plan.final_shuffle is not None:
        mods.append(nn.ChannelShuffle(plan.final_shuffle))
    return nn.Sequential(*mods)


def _linear_stages(layer: SeKronLinear, order: tuple[int, ...]) -> nn.Sequential:
    """A chain of ``nn.Linear``: each stage's grouped 1x1 conv as a block-diagonal matrix, rotations folded in."""
    point = SeKronConv1d(layer._kernel(), implementation="factorized", order=order)
    point.bias = layer.bias
    seq = _conv_stages(point, order)
    assert isinstance(seq, nn.Sequential)
    mods: list[nn.Linear] = []
    perm: torch.Tensor | None = None  # pending channel permutation: new channel j = old channel perm[j]
    for mod in seq:
        if isinstance(mod, nn.ChannelShuffle):
            C = mods[-1].out_features if mods else layer.in_features
            g = int(mod.groups)
            idx = torch.arange(C).reshape(g, C // g).t().reshape(-1)
            perm = idx if perm is None else perm[idx]
            continue
        assert isinstance(mod, nn.Conv1d)
        W = _block_diagonal(mod.weight.detach()[..., 0], mod.groups)
        if perm is not None:
            if mods:  # permute the previous linear's outputs
                prev: Any = mods[-1]
                with torch.no_grad():
                    prev.weight.copy_(prev.weight[perm])
                    if prev.bias is not None:
                        prev.bias.copy_(prev.bias[perm])
            else:  # permute this linear's inputs
                W = W[:, torch.argsort(perm)]
            perm = None
        lin = nn.Linear(W.shape[1], W.shape[0], mod.bias is not None, device=W.device, dtype=W.dtype)
        with torch.no_grad():
            lin.weight.copy_(W)
            if mod.bias is not None:
                lin.bias.copy_(mod.bias)  # type: ignore[union-attr]
        mods.append(lin)
    if perm is not None:
        prev = mods[-1]
        with torch.no_grad():
            prev.weight.copy_(prev.weight[perm])
            if prev.bias is not None:
                prev.bias.copy_(prev.bias[perm])
    return nn.Sequential(*mods)


def _block_diagonal(W: torch.Tensor, groups: int) -> torch.Tensor:
    out_g = W.shape[0] // groups
    return torch.block_diag(*(W[g * out_g:(g + 1) * out_g] for g in range(groups))) if groups > 1 else W.clone()


def standard_layer(layer: nn.Module, implementation: str = "auto") -> nn.Module:
    """One SeKron layer as plain ``torch.nn`` modules (see :func:`to_standard`)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {list(IMPLEMENTATIONS)}, got {implementation!r}")
    if not isinstance(layer, _SeKronBase):
        raise TypeError(f"standard_layer needs a SeKron layer, got {type(layer).__name__}")
    plan = layer.implementation if implementation == "auto" else implementation
    groups = getattr(layer, "groups", 1)
    with torch.no_grad():
        if isinstance(layer, SeKronLinear):
            if plan == "dense":
                return layer.to_linear()
            return _linear_stages(layer, _factorized_order(layer, layer._kernel()))
        assert isinstance(layer, _SeKronConvNd)
        if plan == "dense" or groups > 1:
            return layer.to_conv()
        return _conv_stages(layer, _factorized_order(layer, layer.sekron_weight()), implementation == "auto")


_SEKRON_TYPES = (SeKronConv1d, SeKronConv2d, SeKronConv3d, SeKronLinear)


def to_standard(model: nn.Module, *, implementation: str = "auto") -> nn.Module:
    """A copy of ``model`` in which every SeKron layer is plain ``torch.nn`` modules computing the same function.

    A layer with a factorized plan becomes ``nn.Sequential`` of its stages (grouped
    ``Conv{D}d`` at the stage's dilation and stride, and ``ChannelShuffle`` where the
    channel digits must rotate); a layer with a dense plan becomes one ``Conv{D}d`` (or
    ``Linear``) holding the formed kernel. Bias, padding (with its mode), stride,
    dilation, groups, dtype and device are kept, and the outputs equal the SeKron
    model's up to float rounding. The copy holds only torch modules: it pickles, runs
    without sekron, and exports with ``torch.onnx.export`` (both exporters: the Conv
    weights are constants, no kernel is rebuilt at inference), ``torch.jit.script``
    and ``torch.compile``. A linear layer's stages become a chain of ``nn.Linear``
    (each stage's groups as a block-diagonal matrix).

    Parameters
    ----------
    model : torch.nn.Module
        A SeKron layer, or a model holding some; it is not changed.
    implementation : {"auto", "factorized", "dense"}
        "auto" keeps each layer's own plan (``layer.implementation``), except that a
        factorized layer whose stages can only be laid out with carried digits (more
        MACs than its plan) and are then modelled slower than one dense conv deploys
        dense; "factorized" or "dense" forces that plan on every layer (layers with
        ``groups > 1`` always deploy as one grouped conv).

    Returns
    -------
    torch.nn.Module
        The deployable copy, in eval/train mode as ``model`` was.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import SeKronConv2d, to_standard
    >>> dense = torch.nn.Conv2d(16, 16, 3, padding=1)
    >>> net = torch.nn.Sequential(SeKronConv2d.from_conv(dense, [(1, 16, 1, 1), (16, 1, 3, 3)], rank=4,
    ...                                                  implementation="factorized"), torch.nn.ReLU())
    >>> plain = to_standard(net)
    >>> plain
    Sequential(
      (0): Sequential(
        (0): Conv2d(16, 4, kernel_size=(1, 1), stride=(1, 1), bias=False)
        (1): Conv2d(4, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
      )
      (1): ReLU()
    )
    >>> x = torch.randn(2, 16, 8, 8)
    >>> torch.allclose(plain(x), net(x), atol=1e-5)
    True
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {list(IMPLEMENTATIONS)}, got {implementation!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_standard needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, _SeKronBase):
        out = standard_layer(model, implementation)
        out.train(model.training)
        _register_onnx_channel_shuffle(out)
        return out
    layers = {name: mod for name, mod in model.named_modules(remove_duplicate=False) if isinstance(mod, _SeKronBase)}
    deployed: dict[int, nn.Module] = {}  # one copy per layer object: a layer used twice stays shared
    for layer in layers.values():
        if id(layer) not in deployed:
            deployed[id(layer)] = standard_layer(layer, implementation).train(layer.training)
            _register_onnx_channel_shuffle(deployed[id(layer)])
    clone = copy.deepcopy(model, {id(layer): deployed[id(layer)] for layer in layers.values()})
    return clone


_ONNX_SHUFFLE_REGISTERED = False


def _channel_shuffle_onnx(g: Any, x: Any, groups: Any) -> Any:  # pragma: no cover - runs inside the exporter
    from torch.onnx import symbolic_helper as sh

    n_groups = sh._get_const(groups, "i", "groups")
    sizes = sh._get_tensor_sizes(x)
    if sizes is None or sizes[1] is None:
        raise TypeError("exporting ChannelShuffle needs a static channel count")
    split = g.op("Constant", value_t=torch.tensor([0, n_groups, sizes[1] // n_groups, -1], dtype=torch.int64))
    y = g.op("Transpose", g.op("Reshape", x, split), perm_i=[0, 2, 1, 3])
    return g.op("Reshape", y, g.op("Shape", x))


def _register_onnx_channel_shuffle(module: nn.Module) -> None:
    """Teach the TorchScript-based ONNX exporter (``dynamo=False``) ``ChannelShuffle``.

    torch's own exporter has no rule for ``aten::channel_shuffle``; this one writes it as
    Reshape, Transpose, Reshape (what the dynamo exporter writes). Registered once, and
    only when a deployed layer holds a ``ChannelShuffle``.
    """
    global _ONNX_SHUFFLE_REGISTERED
    if _ONNX_SHUFFLE_REGISTERED or not any(isinstance(m, nn.ChannelShuffle) for m in module.modules()):
        return
    torch.onnx.register_custom_op_symbolic("aten::channel_shuffle", _channel_shuffle_onnx, 9)
    _ONNX_SHUFFLE_REGISTERED = True
