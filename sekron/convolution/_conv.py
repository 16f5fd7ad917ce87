"""Convolution with a SeKron kernel, factor by factor ("convolution projection").

A kernel ``W`` of shape ``(F, C, K_1..K_D)`` in SeKron form is never formed: each
factor is applied as one batched, grouped convolution (a *stage*), at the dilation
that its place in the Kronecker digits gives it (docs/math.md §6). The stages
commute, so a planner picks the order of lowest cost, or reconstruction followed by
one dense convolution when that is cheaper. The factor axes follow the convention of
:mod:`sekron.sekron_tensor`; factor ``k``'s digit shape is ``(f_k, c_k, h_k^(1)..h_k^(D))``.
"""

from __future__ import annotations

import numbers
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._backend import infer_backend, using
from .._validation import check_array, check_choice, check_int, check_shape, check_size
from ..linalg.contraction import einsum2
from ..sekron_tensor import SeKronTensor
from . import _plan as cp
from ._backends import conv_ops

PADDING_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class PlanCost:
    """Cost of one plan.

    Attributes
    ----------
    kind : {"factorized", "dense"}
    order : tuple of int or None
        Processing order of the factors (None for dense).
    macs : int
        Multiply-accumulates, stages (or reconstruction plus the dense conv) included.
    params : int
        Parameters the plan convolves with (the factors, or the reconstructed kernel).
    peak_elements : int
        Elements of the largest tensor the plan creates (padded input, a permuted copy,
        a stage output, the reconstructed kernel or the output).
    stage_macs : tuple of int
        MACs of each stage, in processing order (empty for dense).
    score : float
        The planner's modelled time in MAC units: each conv's MACs divided by its modelled
        efficiency (small per-group channel counts run below peak), plus
        ``MEMORY_WEIGHT`` per element written (stage outputs, permuted copies, padding).
    """

    kind: str
    order: tuple[int, ...] | None
    macs: int
    params: int
    peak_elements: int
    stage_macs: tuple[int, ...]
    score: float


@dataclass(frozen=True)
class ConvCost:
    """What :func:`conv_cost` returns: the paper's order, the best order, dense, and auto's pick.

    Attributes
    ----------
    paper : PlanCost
        Factorized, least significant factor first (S, S-1, .., 1).
    best : PlanCost
        Factorized, the order of lowest modelled cost found by the planner.
    dense : PlanCost
        Reconstruct the kernel, then one convolution.
    auto : {"factorized", "dense"}
        What ``implementation="auto"`` runs (``best`` or ``dense``).
    """

    paper: PlanCost
    best: PlanCost
    dense: PlanCost
    auto: str


def _plan_cost(plan: cp.Plan) -> PlanCost:
    return PlanCost(plan.kind, plan.order, plan.macs, plan.params, plan.peak_elements,
                    tuple(s.macs for s in plan.stages), plan.score)


# --- argument checks ------------------------------------------------------------------
def _per_axis(value: Any, name: str, D: int, minimum: int) -> tuple[int, ...]:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != D:
            raise ValueError(f"{name} must be an int or a tuple of {D} ints (one per spatial axis), got {value!r}")
        return tuple(check_int(v, f"{name}[{i}]", minimum=minimum) for i, v in enumerate(value))
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of {D} ints, got {value!r}")
    return (check_int(value, name, minimum=minimum),) * D


def _pads(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...]
          ) -> tuple[tuple[int, int], ...]:
    D = len(kernel)
    if isinstance(padding, str):
        check_choice(padding, "padding", ["same", "valid"])
        if padding == "valid":
            return ((0, 0),) * D
        if any(s != 1 for s in stride):
            raise ValueError(f"padding='same' needs stride 1 on every axis, got stride={stride}; "
                             "pass explicit padding for a strided convolution")
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return tuple((p, p) for p in _per_axis(padding, "padding", D, 0))


def _check_modes(pads: tuple[tuple[int, int], ...], spatial: tuple[int, ...], mode: str) -> None:
    check_choice(mode, "padding_mode", PADDING_MODES)
    for n, ((lo, hi), L) in enumerate(zip(pads, spatial)):
        if mode == "reflect" and max(lo, hi) >= L:
            raise ValueError(f"padding_mode='reflect' needs padding < input size on every axis; axis {n} has "
                             f"size {L} and padding {(lo, hi)}")
        if mode == "circular" and max(lo, hi) > L:
            raise ValueError(f"padding_mode='circular' needs padding <= input size on every axis; axis {n} has "
                             f"size {L} and padding {(lo, hi)}")


#: _resolve's answers for argument sets already checked (a conv layer calls with the same ones every time)
_RESOLVED: dict[tuple[Any, ...], tuple[cp.KernelSpec, cp.Geometry]] = {}
_RESOLVED_MAX = 1024


def _hashable(value: Any) -> Any:
    """A cache key that tells 1, 1.0 and True apart (the checks accept only the first)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *(_hashable(v) for v in value))
    return (type(value).__name__, value)


def _resolve(x: Any, sk: Any, stride: Any, padding: Any, dilation: Any, padding_mode: str,
             input_shape: Sequence[int] | None = None) -> tuple[cp.KernelSpec, cp.Geometry]:
    """Check the arguments and turn them into the planner's hashable description.

    Arguments that passed once are remembered, so repeated calls (a layer's forward) skip
    the checks; anything that failed raised before it could be remembered.
    """
    if not isinstance(sk, SeKronTensor):
        raise TypeError(f"the kernel must be a sekron.SeKronTensor, got {type(sk).__name__}")
    shape = tuple(int(s) for s in (x.shape if input_shape is None else input_shape))
    try:
        key = (shape, sk.structure, tuple(tuple(f.shape) for f in sk.factors), _hashable(stride),
               _hashable(padding), _hashable(dilation), _hashable(padding_mode))
        hit = _RESOLVED.get(key)
    except TypeError:  # unhashable arguments: check them every time
        key, hit = None, None
    if hit is not None:
        return hit
    out = _check_and_describe(shape, sk, stride, padding, dilation, padding_mode)
    if key is not None:
        if len(_RESOLVED) >= _RESOLVED_MAX:
            _RESOLVED.clear()
        _RESOLVED[key] = out
    return out


def _check_and_describe(shape: tuple[int, ...], sk: SeKronTensor, stride: Any, padding: Any, dilation: Any,
                        padding_mode: str) -> tuple[cp.KernelSpec, cp.Geometry]:
    if not 3 <= len(shape) <= 5:
        raise ValueError(f"the input must have shape (B, C, *spatial) with 1 to 3 spatial axes, got shape {shape}")
    D = len(shape) - 2
    kshape = sk.shape
    if len(kshape) != D + 2:
        raise ValueError(f"for a {D}-D convolution (input shape {shape}) the kernel must have order D + 2 = {D + 2} "
                         f"(F, C, K_1..K_{D}), got a kernel of shape {kshape}")
    if shape[1] != kshape[1]:
        raise ValueError(f"the input has {shape[1]} channels (shape {shape}) but the kernel expects C = {kshape[1]} "
                         f"(kernel shape {kshape}); the channel counts must match")
    stride_t = _per_axis(stride, "stride", D, 1)
    dilation_t = _per_axis(dilation, "dilation", D, 1)
    pads = _pads(padding, kshape[2:], dilation_t, stride_t)
    _check_modes(pads, shape[2:], padding_mode)
    geom = cp.Geometry(shape[0], shape[2:], stride_t, dilation_t, pads, padding_mode)
    padded = tuple(L + lo + hi for L, (lo, hi) in zip(shape[2:], pads))
    check_size((shape[0], shape[1], *padded), f"the padded input of shape {(shape[0], shape[1], *padded)}",
               "lower the padding")
    out_spatial = geom.out_spatial(kshape[2:])
    if all(o >= 1 for o in out_spatial):
        check_size((shape[0], kshape[0], *out_spatial), f"the output of shape {(shape[0], kshape[0], *out_spatial)}",
                   "lower the padding or the batch")
    if any(o < 1 for o in out_spatial):
        raise ValueError(f"the input's spatial size {shape[2:]} with padding {pads} is smaller than the dilated "
                         f"kernel {kshape[2:]} at dilation {dilation_t}; pad more or use a larger input")
    st = sk.structure
    ranks = {c: int(n) for f, lab in zip(sk.factors, st.labels) for c, n in zip(lab, f.shape)}
    return cp.KernelSpec(st.factor_shapes, st.labels, tuple(sorted(ranks.items()))), geom


def _check_order(order: Any, S: int, implementation: str) -> tuple[int, ...] | str | None:
    if order is None:
        return None
    if implementation == "dense":
        raise ValueError(f"order={order!r} sets the stage order of the factorized plan; implementation='dense' "
                         "has no stages (drop order, or use implementation='factorized')")
    if isinstance(order, str):
        if order != "paper":
            raise ValueError(f"order must be None, 'paper' or a permutation of 0..{S - 1}, got {order!r}")
        return order
    if not isinstance(order, Sequence) or sorted(int(k) for k in order) != list(range(S)):
        raise ValueError(f"order must be None, 'paper' or a permutation of the factor indices 0..{S - 1}, "
                         f"got {order!r}")
    return tuple(int(k) for k in order)


# --- executors ------------------------------------------------------------------------
def _pre(ops: Any, x: Any, plan: cp.Plan, geom: cp.Geometry) -> Any:
    return x if plan.pre_pad is None else ops.pad(x, plan.pre_pad, geom.padding_mode)


def _stage_weight(ops: Any, factor: Any, perm: tuple[int, ...], shape: tuple[int, ...]) -> Any:
    """A factor laid out as a stage's conv weight; in inference the permuted copy is reused."""
    return _memo(ops, (factor,), ("stage", perm, shape),
                 lambda: ops.contiguous(ops.reshape(ops.transpose(factor, perm), shape)))


def _run_factorized(ops: Any, x: Any, sk: SeKronTensor, plan: cp.Plan, geom: cp.Geometry) -> Any:
    y = ops.reshape(_pre(ops, x, plan, geom), plan.in_shape)
    D = len(geom.spatial)
    for st in plan.stages:
        if st.perm is not None:
            y = ops.transpose(y, st.perm + tuple(range(len(st.perm), len(st.perm) + D)))
        w = _stage_weight(ops, sk.factors[st.factor], st.weight_perm, st.weight_shape)
        y = ops.conv(ops.reshape(y, st.conv_in_shape), w, st.stride, st.dilation, st.padding, st.groups)
        y = ops.reshape(y, st.out_shape)
    if plan.final_perm is not None:
        n = len(plan.final_perm)
        y = ops.transpose(y, plan.final_perm + tuple(range(n, n + D)))
    return ops.reshape(y, plan.out_shape)


def _kernel(ops: Any, sk: SeKronTensor, steps: tuple[cp.Step, ...]) -> Any:
    """Form W by the plan's pairwise contractions (each one batched matmul), then un-rearrange."""
    st = sk.structure
    digits = cp.digit_labels(st.labels)
    operands = [(lab + digits[k], ops.reshape(f, (*tuple(f.shape[:len(lab)]), st.factor_sizes[k])))
                for k, (f, lab) in enumerate(zip(sk.factors, st.labels))]
    for i, j, out in steps:
        (sa, a), (sb, b) = operands[i], operands[j]
        operands[i] = (out, einsum2(sa, a, sb, b, out))
        del operands[j]
    return st.unrearrange(operands[0][1])


#: tensors derived from factors, kept for inference: (factor ids, tag) -> (weak refs, versions, value)
_KERNELS: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], tuple[int, ...], Any]] = OrderedDict()
#: entries kept (least recently used dropped first); a model's every layer fits
_KERNELS_MAX = 256


def _cacheable(ops: Any, factors: tuple[Any, ...]) -> bool:
    """Only torch tensors (in-place changes bump their version) outside autograd."""
    if ops.name != "pytorch":
        return False
    import torch

    return not (torch.is_grad_enabled() and any(f.requires_grad for f in factors))


def _memo(ops: Any, factors: tuple[Any, ...], tag: Any, build: Callable[[], Any]) -> Any:
    """``build()``, reused across inference calls while none of ``factors`` changed.

    In inference (torch, no autograd) a value derived from the same factor tensors is
    kept, keyed by their identity and checked against their version counters (an
    in-place update, such as an optimizer step, invalidates it). With autograd, or on
    other backends, ``build()`` runs every time.
    """
    if not _cacheable(ops, factors):
        return build()
    key = (tuple(id(f) for f in factors), tag)
    versions = tuple(int(f._version) for f in factors)
    hit = _KERNELS.get(key)
    if hit is not None and hit[1] == versions and all(r() is f for r, f in zip(hit[0], factors)):
        _KERNELS.move_to_end(key)
        return hit[2]
    value = build()

    def drop(_: Any, key: tuple[Any, ...] = key) -> None:  # a factor was freed: free its entry too
        _KERNELS.pop(key, None)

    _KERNELS[key] = (tuple(weakref.ref(f, drop) for f in factors), versions, value)
    _KERNELS.move_to_end(key)
    while len(_KERNELS) > _KERNELS_MAX:
        _KERNELS.popitem(last=False)
    return value


def clear_conv_cache() -> None:
    """Drop the formed kernels and stage weights that :func:`conv` keeps for inference.

    In torch inference (no autograd), :func:`conv` keeps what it derives from the
    factors (a permuted factor per stage, or the whole kernel of a dense plan) for reuse
    until a factor changes in place, at most ``_KERNELS_MAX`` entries, least recently
    used dropped first. Call this to free that memory at once.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> from sekron import conv
    >>> sk = sekron.random_sekron([(2, 2, 3, 1), (2, 2, 1, 3)], 2)
    >>> conv(np.ones((1, 4, 5, 5)), sk, padding=1).shape  # with torch tensors, kept for reuse
    (1, 4, 5, 5)
    >>> sekron.clear_conv_cache()
    """
    _KERNELS.clear()


def _dense_kernel(ops: Any, sk: SeKronTensor, steps: tuple[cp.Step, ...]) -> Any:
    """The formed kernel; repeated inference calls with unchanged factors form it once."""
    return _memo(ops, sk.factors, ("kernel", steps, sk.structure), lambda: _kernel(ops, sk, steps))


def _run_dense(ops: Any, x: Any, sk: SeKronTensor, plan: cp.Plan, geom: cp.Geometry) -> Any:
    W = _dense_kernel(ops, sk, plan.recon_steps)
    return ops.conv(_pre(ops, x, plan, geom), W, geom.stride, geom.dilation, plan.padding, 1)


def _factorized_plan(spec: cp.KernelSpec, geom: cp.Geometry, order: Any) -> cp.Plan:
    if order is None:
        return cp.best_plan(spec, geom)
    return cp.factorized_plan(spec, geom, cp.paper_order(spec) if order == "paper" else order)


def _auto_plan(spec: cp.KernelSpec, geom: cp.Geometry, order: Any) -> cp.Plan:
    return cp.auto_plan(spec, geom) if order is None else _factorized_plan(spec, geom, order)


#: implementation name -> function (spec, geometry, order) -> plan
IMPLEMENTATIONS: dict[str, Callable[[cp.KernelSpec, cp.Geometry, Any], cp.Plan]] = {
    "factorized": _factorized_plan,
    "dense": lambda spec, geom, order: cp.dense_plan(spec, geom),
    "auto": _auto_plan,
}
_EXECUTORS = {"factorized": _run_factorized, "dense": _run_dense}


def conv(x: Any, sk: SeKronTensor, stride: int | Sequence[int] = 1, padding: int | Sequence[int] | str = 0,
         dilation: int | Sequence[int] = 1, bias: Any = None, padding_mode: str = "zeros",
         implementation: str = "auto", order: Sequence[int] | str | None = None) -> Any:
    """N-D convolution (cross-correlation, as in PyTorch) of ``x`` with a SeKron kernel.

    Equal to ``torch.nn.functional.conv{D}d(x, sk.to_tensor(), bias, stride, padding,
    dilation)`` (with ``padding_mode`` applied as ``torch.nn.Conv{D}d`` does), but
    factor by factor: each factor is one batched, grouped convolution at dilation
    ``dilation * prod_{l>k} h_l`` (docs/math.md §6). The input is padded once, the
    stages run 'valid', and the stride is applied at the last stage with a kernel
    wider than 1 on that axis (exact).

    Parameters
    ----------
    x : array of shape (B, C, *spatial), 1 to 3 spatial axes
        numpy, pytorch or jax; the result comes back in the same framework.
    sk : SeKronTensor of shape (F, C, K_1..K_D)
        Any structure and bond pattern, custom labels included.
    stride, dilation : int or tuple of D ints >= 1
    padding : int, tuple of D ints >= 0, "same" or "valid"
        "same" pads ``dilation * (K - 1)`` per axis, the smaller half first (stride 1 only).
    bias : array of shape (F,), optional
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
    implementation : {"auto", "factorized", "dense"}
        "factorized" never forms the kernel; "dense" reconstructs it and runs one
        convolution; "auto" takes whichever the cost model prefers (see :func:`conv_cost`).
    order : None, "paper" or a permutation of range(S)
        Stage order for the factorized plan. None lets the planner choose; "paper" is
        S, S-1, .., 1. Giving an order makes "auto" run the factorized plan.

    Returns
    -------
    array of shape (B, F, *out_spatial)

    Notes
    -----
    In torch inference (autograd off, or factors that need no gradient) the permuted
    factors of the stages and a dense plan's formed kernel are kept and reused while the
    factors are unchanged (their version counters are checked, so an in-place update is
    seen); :func:`clear_conv_cache` frees them.

    Examples
    --------
    >>> import numpy as np, sekron
    >>> from sekron import conv
    >>> st = sekron.Structure([(2, 4, 3, 1), (4, 2, 1, 3)], "cp")
    >>> sk = sekron.random_sekron(st, 2)
    >>> x = np.random.default_rng(0).standard_normal((1, 8, 6, 6))
    >>> y = conv(x, sk, padding=1, implementation="factorized")
    >>> y.shape
    (1, 8, 6, 6)
    >>> bool(np.allclose(y, conv(x, sk, padding=1, implementation="dense")))
    True
    """
    check_array(x, "x")
    spec, geom = _resolve(x, sk, stride, padding, dilation, padding_mode)
    check_choice(implementation, "implementation", list(IMPLEMENTATIONS))
    order_t = _check_order(order, spec.n_factors, implementation)
    backend = infer_backend(x, sk, bias)
    ops = conv_ops(backend)
    if str(x.dtype) != str(sk.dtype):
        raise TypeError(f"x has dtype {x.dtype} but the kernel's factors have dtype {sk.dtype}; cast one of them")
    if bias is not None:
        check_array(bias, "bias")
        if tuple(bias.shape) != (sk.shape[0],):
            raise ValueError(f"bias must have shape (F,) = ({sk.shape[0]},), got {tuple(bias.shape)}")
        if str(bias.dtype) != str(sk.dtype):
            raise TypeError(f"bias has dtype {bias.dtype} but x and the kernel have {sk.dtype}; the output would be "
                            "silently promoted: cast the bias to the kernel's dtype")
    plan = IMPLEMENTATIONS[implementation](spec, geom, order_t)
    with using(backend):
        y = _EXECUTORS[plan.kind](ops, x, sk, plan, geom)
        return y if bias is None else ops.add_bias(y, bias)


def conv_cost(sk: SeKronTensor, input_shape: Sequence[int], stride: int | Sequence[int] = 1,
              padding: int | Sequence[int] | str = 0, dilation: int | Sequence[int] = 1,
              padding_mode: str = "zeros") -> ConvCost:
    """Modelled cost of :func:`conv`: the paper's order, the planner's best order and dense.

    A stage costs out-positions x batch x groups x in-channels x out-channels x prod h_k
    MACs (docs/math.md §6); dense costs the reconstruction of the kernel (saved when an
    inference call reuses a kernel formed earlier, see ``_dense_kernel``) plus
    out-positions x B x F x C x prod K. The planner ranks plans by MACs plus
    ``MEMORY_WEIGHT`` MACs per element written (stage outputs, permuted copies,
    padding); ``auto`` keeps the factorized plan when it is ``AUTO_MARGIN`` times cheaper.
    Plans are cached per (structure, ranks, input shape, conv arguments).

    Examples
    --------
    >>> import sekron
    >>> from sekron import conv_cost
    >>> st = sekron.Structure([(1, 64, 1, 1), (64, 1, 3, 3)], "cp")   # 1x1 then 3x3
    >>> cost = conv_cost(sekron.random_sekron(st, 8), (16, 64, 56, 56), padding=1)
    >>> cost.best.order, cost.best.macs < cost.dense.macs < cost.paper.macs
    ((0, 1), True)
    >>> cost.auto
    'factorized'
    """
    shape = check_shape(input_shape, "input_shape")
    spec, geom = _resolve(None, sk, stride, padding, dilation, padding_mode, input_shape=shape)
    paper = cp.factorized_plan(spec, geom, cp.paper_order(spec))
    return ConvCost(_plan_cost(paper), _plan_cost(cp.best_plan(spec, geom)),
                    _plan_cost(cp.dense_plan(spec, geom)), cp.auto_plan(spec, geom).kind)

