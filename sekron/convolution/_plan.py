"""Plans for convolution with a SeKron kernel: stages, their cost, and the order search.

A plan is pure bookkeeping over shapes (no arrays): which factor each stage applies,
how the intermediate's labelled axes are permuted and grouped for one batched,
grouped convolution, and what that costs (docs/math.md §6).

Axis labels of the intermediate tensor: ``"B"`` (the batch), ``"c<k>"`` (input channel
digit of factor k, not yet contracted), ``"f<k>"`` (output channel digit produced by
factor k) and ``"r<x>"`` (bond ``x``, open). Labels of size 1 never get an axis, so a
permutation that only moves them is no permutation at all.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

from ..linalg.contraction import LabelAllocator, Step, greedy_order
from ..structure import count_params

#: cost of writing or copying one element, in MAC equivalents (the planner's score)
MEMORY_WEIGHT = 16.0
#: a convolution reaches full speed per MAC from this many inputs (in-channels x kernel
#: taps) and outputs per group; below, its MACs count more (see :func:`conv_efficiency`)
FULL_SPEED_IN, FULL_SPEED_OUT = 128, 64
#: ``auto`` runs the factorized plan only when its score is below dense / AUTO_MARGIN
AUTO_MARGIN = 1.3
#: above this many factors the order search is greedy instead of exhaustive
EXHAUSTIVE_MAX_FACTORS = 6


@dataclass(frozen=True)
class KernelSpec:
    """What a plan needs to know about the kernel: shapes, bond labels and bond sizes."""

    factor_shapes: tuple[tuple[int, ...], ...]  # per factor (f_k, c_k, h_k^(1)..h_k^(D))
    labels: tuple[str, ...]
    ranks: tuple[tuple[str, int], ...]

    @property
    def n_factors(self) -> int:
        return len(self.factor_shapes)

    def size(self, label: str) -> int:
        kind, rest = label[0], label[1:]
        if kind == "r":
            return dict(self.ranks)[rest]
        return self.factor_shapes[int(rest)][0 if kind == "f" else 1]

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return tuple(math.prod(col) for col in zip(*self.factor_shapes))

    @property
    def n_params(self) -> int:
        return count_params(self.labels, [math.prod(s) for s in self.factor_shapes], dict(self.ranks))


@dataclass(frozen=True)
class Geometry:
    """The convolution's arguments, resolved per spatial axis."""

    batch: int
    spatial: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    padding_mode: str

    def out_spatial(self, kernel: tuple[int, ...]) -> tuple[int, ...]:
        return tuple((L + lo + hi - d * (K - 1) - 1) // s + 1
                     for L, (lo, hi), d, K, s in zip(self.spatial, self.pads, self.dilation, kernel, self.stride))

    def fold_padding(self) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...] | None]:
        """(padding given to the first conv, padding applied once beforehand or None)."""
        if not any(lo or hi for lo, hi in self.pads):
            return (0,) * len(self.pads), None
        if self.padding_mode == "zeros" and all(lo == hi for lo, hi in self.pads):
            return tuple(lo for lo, _ in self.pads), None
        return (0,) * len(self.pads), self.pads


@dataclass(frozen=True)
class Stage:
    """One batched, grouped convolution applying one factor."""

    factor: int
    perm: tuple[int, ...] | None  # transpose of the labelled axes before the conv (None: identity)
    conv_in_shape: tuple[int, ...]  # (N, groups * in, *spatial)
    weight_perm: tuple[int, ...]  # factor axes -> (group bonds, out labels, in labels, kernel)
    weight_shape: tuple[int, ...]  # (groups * out, in, *kernel)
    groups: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...]
    out_shape: tuple[int, ...]  # labelled axes, then spatial
    macs: int
    score: float  # macs / conv_efficiency


@dataclass(frozen=True)
class Plan:
    """A complete plan: ``kind`` is "factorized" (stages) or "dense" (reconstruct, one conv)."""

    kind: str
    order: tuple[int, ...] | None
    stages: tuple[Stage, ...]
    pre_pad: tuple[tuple[int, int], ...] | None
    padding: tuple[int, ...]  # zero padding folded into the first (or the dense) conv
    in_shape: tuple[int, ...]  # input viewed with one axis per non-trivial label
    final_perm: tuple[int, ...] | None
    out_shape: tuple[int, ...]
    macs: int
    params: int
    peak_elements: int
    moved_elements: int  # elements written by padding, permutations and stage outputs
    score: float  # the planner's modelled time: MACs / efficiency + MEMORY_WEIGHT * moved elements
    recon_steps: tuple[Step, ...] = ()  # dense only: how the kernel is formed


def conv_efficiency(n_in: int, n_out: int) -> float:
    """Modelled fraction of peak MAC rate of a conv with ``n_in`` taps and ``n_out`` outputs per group.

    Fitted by eye to PyTorch CPU (oneDNN) timings: a 3x3 conv with 8 in and 24 out
    channels per group runs at about a sixth of the MAC rate of a 64 -> 64 one.
    """
    return min(1.0, n_in / FULL_SPEED_IN) * min(1.0, n_out / FULL_SPEED_OUT)


def _perm(cur: list[str], target: list[str]) -> tuple[int, ...] | None:
    if cur == target:
        return None
    return tuple(cur.index(lab) for lab in target)


def _stride_stages(spec: KernelSpec, order: tuple[int, ...]) -> list[int]:
    """Per axis, the stage index at which the stride is applied: the last with a kernel > 1."""
    D = len(spec.factor_shapes[0]) - 2
    out = []
    for n in range(D):
        wide = [i for i, k in enumerate(order) if spec.factor_shapes[k][2 + n] > 1]
        out.append(wide[-1] if wide else 0)
    return out


def _sort_out_bonds(new: list[str], spec: KernelSpec, later: tuple[int, ...]) -> list[str]:
    """Order the bonds opened by a stage so the next stage's groups and inputs come last."""
    if not later:
        return new
    nxt = spec.labels[later[0]]

    def rank(b: str) -> int:
        if b not in nxt:
            return 0
        return 1 if any(b in spec.labels[j] for j in later[1:]) else 2

    return sorted(new, key=rank)


def _layout(cur: list[str], passive: list[str], g_list: list[str], in_list: list[str], D: int
            ) -> tuple[list[str], list[str]]:
    """Split the passive labels into (major, minor) so that the stage input is a view if possible.

    The conv input is (major, groups, in, minor, *spatial): ``major`` is the conv batch,
    and ``minor`` (the passive labels already behind the channel block) becomes one extra
    spatial axis of kernel size 1 (conv{D+1}d), which needs D < 3.
    """
    if cur == passive + g_list + in_list or D >= 3:
        return passive, []
    n = 0
    while n < len(cur) - 1 and cur[len(cur) - 1 - n] in passive:
        n += 1
    minor = cur[len(cur) - n:]
    major = [lab for lab in passive if lab not in minor]
    if n and cur == major + g_list + in_list + minor:
        return major, minor
    return passive, []


def _stage(spec: KernelSpec, batch: int, k: int, cur: list[str], later: tuple[int, ...], opened: set[str],
           sp: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
           padding: tuple[int, ...]) -> tuple[Stage, list[str], tuple[int, ...], int]:
    def size(label: str) -> int:
        return batch if label == "B" else spec.size(label)

    _f_k, _c_k, *h = spec.factor_shapes[k]
    bonds = spec.labels[k]
    later_users = {b for b in bonds if any(b in spec.labels[j] for j in later)}
    new = [b for b in bonds if b not in opened]
    group = {"r" + b for b in bonds if b in opened and b in later_users}
    closed = {"r" + b for b in bonds if b in opened and b not in later_users}
    ins = closed | {f"c{k}"}
    passive = [lab for lab in cur if lab not in group and lab not in ins]
    g_list = [lab for lab in cur if lab in group]
    in_list = [lab for lab in cur if lab in ins]
    out_list = [lab for lab in [f"f{k}"] + ["r" + b for b in _sort_out_bonds(new, spec, later)] if size(lab) > 1]
    # weight axes: bonds (labels[k] order), f_k, c_k, kernel; target (groups, out, in, kernel)
    axis = {"r" + b: i for i, b in enumerate(bonds)} | {f"f{k}": len(bonds), f"c{k}": len(bonds) + 1}
    trivial = [lab for lab in axis if size(lab) == 1]
    w_order = g_list + out_list + in_list + trivial
    weight_perm = tuple(axis[lab] for lab in w_order) + tuple(range(len(bonds) + 2, len(bonds) + 2 + len(h)))
    passive, minor = _layout(cur, passive, g_list, in_list, len(h))
    one = (1,) if minor else ()
    M = math.prod(size(lab) for lab in minor)
    N = math.prod(size(lab) for lab in passive)
    G = math.prod(size(lab) for lab in g_list)
    c_in = math.prod(size(lab) for lab in in_list)
    c_out = math.prod(size(lab) for lab in out_list)
    dil = tuple(d * math.prod(spec.factor_shapes[j][2 + n] for j in range(k + 1, spec.n_factors))
                for n, d in enumerate(dilation))
    out_sp = tuple((L + 2 * p - dd * (hh - 1) - 1) // s + 1 for L, p, dd, hh, s in zip(sp, padding, dil, h, stride))
    new_cur = passive + g_list + out_list + minor
    out_shape = tuple(size(lab) for lab in new_cur) + out_sp
    macs = N * M * G * c_in * c_out * math.prod(h) * math.prod(out_sp)
    stage = Stage(k, _perm(cur, passive + g_list + in_list + minor), (N, G * c_in) + (M,) * len(one) + sp,
                  weight_perm, (G * c_out, c_in, *one, *h), G, one + stride, one + dil, (0,) * len(one) + padding,
                  out_shape, macs, macs / conv_efficiency(c_in * math.prod(h), c_out))
    return stage, new_cur, out_sp, math.prod(out_shape)


@functools.lru_cache(maxsize=4096)
def factorized_plan(spec: KernelSpec, geom: Geometry, order: tuple[int, ...]) -> Plan:
    """The factorized plan that applies the factors in ``order`` (any permutation is exact)."""
    S = spec.n_factors
    size = spec.size
    first_pad, pre_pad = geom.fold_padding()
    sp = tuple(L + lo + hi for L, (lo, hi) in zip(geom.spatial, pre_pad)) if pre_pad else geom.spatial
    cur = [lab for lab in ["B"] + [f"c{k}" for k in range(S)] if lab == "B" or size(lab) > 1]
    in_shape = tuple(geom.batch if lab == "B" else size(lab) for lab in cur) + sp
    moved = math.prod(in_shape) if pre_pad else 0
    peak = 0
    stride_at = _stride_stages(spec, order)
    opened: set[str] = set()
    stages = []
    D = len(geom.spatial)
    for i, k in enumerate(order):
        stride = tuple(geom.stride[n] if stride_at[n] == i else 1 for n in range(D))
        pad = first_pad if i == 0 else (0,) * D
        st, new_cur, sp, n_out = _stage(spec, geom.batch, k, cur, order[i + 1:], opened, sp,
                                        stride, geom.dilation, pad)
        if st.perm is not None:
            moved += math.prod(st.conv_in_shape)
            peak = max(peak, math.prod(st.conv_in_shape))
        moved += n_out
        peak = max(peak, n_out)
        opened |= set(spec.labels[k])
        stages.append(st)
        cur = new_cur
    final = ["B"] + [lab for lab in (f"f{k}" for k in range(S)) if size(lab) > 1]
    final_perm = _perm(cur, final)
    if final_perm is not None:
        moved += n_out
    F = spec.kernel_shape[0]
    score = sum(s.score for s in stages) + MEMORY_WEIGHT * moved
    return Plan("factorized", order, tuple(stages), pre_pad, first_pad, in_shape, final_perm,
                (geom.batch, F, *sp), sum(s.macs for s in stages), spec.n_params, peak, moved, score)


def digit_labels(labels: tuple[str, ...]) -> str:
    """Labels of the factors' flattened digit axes in the reconstruction, one per factor (none a bond label)."""
    return LabelAllocator(labels).many(len(labels))


def reconstruction_steps(spec: KernelSpec) -> tuple[tuple[Step, ...], int]:
    """Pairwise contraction order that forms the kernel (:func:`sekron.linalg.contraction.greedy_order`), and its
    MACs (batched matmuls).

    Outer products come last. Each step is one ``einsum2`` (one batched matmul); the last one
    leaves the digit axes in factor order (:func:`digit_labels`).
    """
    digits = digit_labels(spec.labels)
    ops = [lab + digits[k] for k, lab in enumerate(spec.labels)]
    size = dict(spec.ranks) | {digits[k]: math.prod(s) for k, s in enumerate(spec.factor_shapes)}
    greedy = greedy_order(tuple(ops), digits, tuple(sorted(size.items())))
    steps, macs = [], 0
    for n, (i, j, out) in enumerate(greedy):
        if n == len(greedy) - 1:
            out = digits
        a, b = ops[i], ops[j]
        a = "".join(c for c in a if c in b or c in out)  # labels summed before the matmul
        b = "".join(c for c in b if c in a or c in out)
        macs += math.prod(size[c] for c in dict.fromkeys(a + b))
        steps.append((i, j, out))
        ops[i] = out
        del ops[j]
    return tuple(steps), macs


@functools.lru_cache(maxsize=4096)
def dense_plan(spec: KernelSpec, geom: Geometry) -> Plan:
    """Reconstruct the kernel, then one convolution."""
    F, C, *K = spec.kernel_shape
    first_pad, pre_pad = geom.fold_padding()
    out_sp = geom.out_spatial(tuple(K))
    out = geom.batch * F * math.prod(out_sp)
    padded = geom.batch * C * math.prod(L + lo + hi for L, (lo, hi) in zip(geom.spatial, geom.pads))
    kernel = F * C * math.prod(K)
    steps, recon = reconstruction_steps(spec)
    macs = recon + out * C * math.prod(K)
    moved = out + kernel + (padded if pre_pad else 0)
    peak = max(out, kernel, padded if pre_pad else 0)
    score = recon + (macs - recon) / conv_efficiency(C * math.prod(K), F) + MEMORY_WEIGHT * moved
    return Plan("dense", None, (), pre_pad, first_pad, (geom.batch, C, *geom.spatial), None,
                (geom.batch, F, *out_sp), macs, kernel, peak, moved, score, steps)


def paper_order(spec: KernelSpec) -> tuple[int, ...]:
    """The paper's order: least significant factor first (S, S-1, .., 1)."""
    return tuple(range(spec.n_factors - 1, -1, -1))


def _greedy_order(spec: KernelSpec, geom: Geometry) -> tuple[int, ...]:
    order: list[int] = []
    rest = list(range(spec.n_factors))
    while rest:
        def partial_score(k: int) -> float:
            tail = tuple(j for j in rest if j != k)
            return factorized_plan(spec, geom, (*tuple(order), k, *tail)).stages[len(order)].macs

        best = min(rest, key=partial_score)
        order.append(best)
        rest.remove(best)
    return tuple(order)


@functools.lru_cache(maxsize=1024)
def best_plan(spec: KernelSpec, geom: Geometry) -> Plan:
    """The factorized plan of lowest score (MACs plus weighted memory traffic) over the orders."""
    S = spec.n_factors
    if S <= EXHAUSTIVE_MAX_FACTORS:
        orders = list(itertools.permutations(range(S)))
    else:
        orders = [paper_order(spec), _greedy_order(spec, geom)]
    plans = [factorized_plan(spec, geom, o) for o in orders]
    return min(plans, key=lambda p: (p.score, p.peak_elements))


def auto_plan(spec: KernelSpec, geom: Geometry) -> Plan:
    """The plan ``implementation="auto"`` runs: the best factorized plan unless dense is cheaper."""
    fact, dense = best_plan(spec, geom), dense_plan(spec, geom)
    return fact if fact.score * AUTO_MARGIN < dense.score else dense
