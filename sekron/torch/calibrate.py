"""Calibration: fit compressed layers to the dense layers' *outputs* on unlabeled inputs.

The output of a conv (or linear) layer at one spatial position is ``W p + b``, where ``p``
is the input patch there (``C * prod(K)`` entries; a linear layer's patch is its input
row). Append a 1 to every patch and the bias to ``W`` (``W~ = [W, b]``, ``p~ = [p; 1]``).
With patches ``P_h`` seen by the compressed network (its prefix is already compressed)
and ``P_d`` seen by the dense network at the same positions, the squared output error
of a candidate ``W^`` is

    ||W~ P_d - W^~ P_h||^2 = tr(W^~ A W^~^T) - 2 tr(G W^~^T) + ||W~ P_d||^2,
    A = P_h P_h^T,   G = W~ (P_d P_h^T),

so once the two ``(n + 1)^2`` Gram matrices are streamed over the calibration inputs,
the fit never touches activations again: it is a weight fit in the metric of the input
covariance. The bias is one more unknown of that least-squares problem, so it absorbs
the mean shift. Every factor of a SeKron weight (and so of TT, TR, CP, Tucker, which
sekron builds as SeKron structures) enters ``W^`` linearly, which gives two solvers:

- ``"als"``: block coordinate descent; each block (one factor, or the bias) is solved
  exactly (to a tolerance) by conjugate gradients. The gradient is affine in the block,
  so a Hessian-vector product is ``grad(v) - grad(0)``; no Jacobian is formed.
- ``"adam"``: Adam on all blocks at once, step sizes relative to each block's scale.

Memory stays bounded: one layer's Gram matrices at a time, the activations of one batch
at a time, and at most ``max_samples`` patch positions per layer (a random subset, fixed
seed, taken before the patches are copied out of a strided view).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..convolution._conv import _pads

F = torch.nn.functional

SOLVERS = ("als", "adam")


class _StopForwardError(Exception):
    """Raised by a forward hook to end a forward pass once a layer's input is captured."""


def calibration_batches(calibration: Any, like: torch.Tensor, batch_size: int = 64) -> list[torch.Tensor]:
    """The calibration inputs as a list of batches on ``like``'s device (floating ones in its dtype).

    ``calibration`` is a tensor (or array) of inputs, split into batches of ``batch_size``;
    or an iterable of batches, each a tensor or a tuple/list whose first item is the input
    (as a ``DataLoader`` of ``(x, y)`` yields; the other items are ignored). The caller's
    tensors are never written to (conversions copy).

    Examples
    --------
    >>> import torch
    >>> xs = calibration_batches(torch.zeros(5, 3), torch.zeros(1), batch_size=2)
    >>> [tuple(x.shape) for x in xs]
    [(2, 3), (2, 3), (1, 3)]
    >>> [tuple(x.shape) for x in calibration_batches([(torch.zeros(4, 3), torch.ones(4))], torch.zeros(1))]
    [(4, 3)]
    """
    def convert(x: Any, where: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            try:
                import numpy as np
            except ImportError:  # pragma: no cover
                np = None  # type: ignore[assignment]
            if np is not None and isinstance(x, np.ndarray):
                x = torch.as_tensor(x)
            else:
                raise TypeError(f"calibration {where} must be a tensor (or a tuple/list whose first item is the "
                                f"input tensor), got {type(x).__name__}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"calibration {where} must be a non-empty batch of inputs (N, ...), got shape "
                             f"{tuple(x.shape)}")
        dtype = like.dtype if x.is_floating_point() else x.dtype
        return x.detach().to(device=like.device, dtype=dtype)

    if isinstance(calibration, torch.Tensor) or type(calibration).__name__ == "ndarray":
        x = convert(calibration, "tensor")
        return list(x.split(int(batch_size)))
    if isinstance(calibration, (str, bytes, Mapping)) or not isinstance(calibration, Iterable):
        raise TypeError("calibration must be a tensor of inputs or an iterable of batches (tensors, or (x, y) "
                        f"tuples as a DataLoader yields), got {type(calibration).__name__}")
    out = []
    for i, item in enumerate(calibration):
        if isinstance(item, (tuple, list)):
            if not item:
                raise ValueError(f"calibration batch {i} is an empty {type(item).__name__}; its first item must be "
                                 "the input tensor")
            item = item[0]
        out.append(convert(item, f"batch {i}"))
    if not out:
        raise ValueError("calibration is empty: pass at least one batch of inputs")
    return out


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    raise TypeError(f"the model's output must be a tensor (or hold one), got {type(out).__name__}")


def execution_order(model: nn.Module, modules: Sequence[nn.Module], x: torch.Tensor) -> list[int]:
    """Indices into ``modules`` sorted by when each first runs in ``model(x)``; modules that never run are left out."""
    seen: dict[int, int] = {}
    index = {id(m): i for i, m in enumerate(modules)}

    def hook(mod: nn.Module, args: Any, out: Any) -> None:
        seen.setdefault(index[id(mod)], len(seen))

    run_with_hooks(model, modules, hook, x)
    return sorted(seen, key=seen.__getitem__)


def run_with_hooks(model: nn.Module, modules: Sequence[nn.Module], hook: Any, x: torch.Tensor) -> None:
    """``model(x)`` without gradients, with the forward hook ``hook`` on each of ``modules`` (removed after)."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def counted_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of every conv and linear that runs in ``model(x)``, counted from their outputs.

    A conv adds ``outputs * in_channels / groups * kernel taps``, a linear ``outputs * in_features``:
    a count of what actually ran (forward hooks), independent of any cost model.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, groups=1), torch.nn.Flatten(), torch.nn.Linear(8 * 4, 2))
    >>> counted_macs(net, torch.zeros(1, 3, 4, 4)) == 8 * 2 * 2 * 3 * 9 + 2 * 32
    True
    """
    total = 0

    def hook(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.modules.conv._ConvNd):
            total += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    run_with_hooks(model, [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))],
                   hook, x)
    return total


def _conv_params(mod: Any) -> tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...], list[int], str]:
    ks = tuple(int(k) for k in mod.kernel_size)
    D = len(ks)
    stride = tuple(mod.stride) if isinstance(mod.stride, Sequence) else (int(mod.stride),) * D
    dil = tuple(mod.dilation) if isinstance(mod.dilation, Sequence) else (int(mod.dilation),) * D
    per_axis = _pads(mod.padding, ks, dil, stride)  # ((lo, hi) per axis): the one rule of sekron.conv
    pads = [v for lo_hi in reversed(per_axis) for v in lo_hi]  # F.pad's order: last axis first
    return D, ks, stride, dil, pads, mod.padding_mode


def positions(mod: Any, x: torch.Tensor) -> int:
    """Patch positions of ``mod`` on the input ``x`` (batch included)."""
    if isinstance(mod, nn.Linear) or not hasattr(mod, "kernel_size"):
        return x.numel() // x.shape[-1]
    D, ks, stride, dil, pads, _ = _conv_params(mod)
    n = x.shape[0]
    for d in range(D):
        size = x.shape[2 + d] + pads[2 * (D - 1 - d)] + pads[2 * (D - 1 - d) + 1]
        n *= max((size - dil[d] * (ks[d] - 1) - 1) // stride[d] + 1, 0)
    return n


def patches(mod: Any, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Input patches ``(M, C * prod(K))`` of a conv (or rows of a linear) at flat positions ``keep``.

    Positions are numbered over ``(N, L_1, ..., L_D)`` (batch, then output positions);
    ``keep=None`` takes all. Only the kept patches are copied: the rest is a strided view.
    The patch order matches ``weight.reshape(F, -1)``.
    """
    if isinstance(mod, nn.Linear) or not hasattr(mod, "kernel_size"):
        rows = x.reshape(-1, x.shape[-1])
        return rows if keep is None else rows[keep]
    D, ks, stride, dil, pads, mode = _conv_params(mod)
    if any(pads):
        x = F.pad(x, pads, mode="constant" if mode == "zeros" else mode)
    v = x
    for d in range(D):
        v = v.unfold(2 + d, dil[d] * (ks[d] - 1) + 1, stride[d])
    if any(dd > 1 for dd in dil):
        step: tuple[Any, ...] = (Ellipsis, *(slice(None, None, dd) for dd in dil))
        v = v[step]
    # v: (N, C, L_1..L_D, K_1..K_D) -> (N, L.., C, K..)
    v = v.permute(0, *range(2, 2 + D), 1, *range(2 + D, 2 + 2 * D))
    lead = v.shape[:1 + D]
    if keep is None:
        return v.reshape(math.prod(lead), -1)
    idx = torch.unravel_index(keep, tuple(lead))
    return v[idx].reshape(len(keep), -1)


@dataclass
class Grams:
    """Streamed statistics of one layer (augmented with the constant 1 as last coordinate).

    ``A = P_h P_h^T`` and ``G = W~ P_d P_h^T`` (dense outputs against actual patches) over
    the kept positions, ``yy = ||W~ P_d||^2``, ``count`` kept positions. All float64.
    """

    A: torch.Tensor
    G: torch.Tensor
    yy: float
    count: int
    W: torch.Tensor | None = None  #: the dense ``[W, b]``, the prior of the ridge term

    def ridge(self, strength: float, bias: bool) -> float:
        """``lambda = strength * mean(diag A)`` (over the patch coordinates), the weight of ``||W^ - W||^2``."""
        n = self.A.shape[0] - 1
        return float(strength * self.A.diagonal()[:n].mean()) if n else 0.0

    def root(self, bias: bool) -> torch.Tensor:
        """``L`` with ``L L^T = A`` (bias coordinate dropped unless ``bias``), ``r <= min(n, count)`` columns.

        From the eigendecomposition; eigenvalues below ``1e-10`` of the largest are dropped,
        so the loss ``||W^~ L||^2`` costs ``F n r`` instead of ``F n^2`` when A has low rank.
        """
        cache = self.__dict__.setdefault("_roots", {})
        if bias not in cache:
            A = self.A if bias else self.A[:-1, :-1]
            lam, V = torch.linalg.eigh(A)
            keep = lam > 1e-10 * float(lam.max().clamp_min(1e-300))
            cache[bias] = V[:, keep] * lam[keep].sqrt()
        return cache[bias]  # type: ignore[no-any-return]


def blend_target(grams: Grams, correction: float) -> Grams:
    """The Grams of a target that corrects only the fraction ``correction`` of the input drift.

    ``grams`` fit ``W^~ P_h`` to the dense network's output ``Y = W~ P_d``: the layer is
    asked to undo the whole drift ``P_h - P_d`` of its input. The blended target
    ``c Y + (1 - c) W~ P_h`` asks it to undo the fraction ``c``; ``c = 0`` makes it match
    the *dense layer* on the actual inputs (a weight fit in the metric of the actual input
    covariance), which leaves the dense network's own response to the drift in place.
    Exact, from the streamed statistics: ``G_c = c G + (1 - c) W~ A`` and
    ``yy_c = c^2 yy + 2 c (1 - c) tr(G W~^T) + (1 - c)^2 tr(W~ A W~^T)``. ``A`` (and its
    cached root) is shared, not copied; ``correction=1`` returns ``grams`` itself.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> Ph, W = torch.randn(5, 40, generator=g, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    >>> Y = W @ (Ph + 0.3 * torch.randn(5, 40, generator=g, dtype=torch.float64))  # dense output, drifted input
    >>> grams = Grams(Ph @ Ph.T, Y @ Ph.T, float((Y ** 2).sum()), 40, W)
    >>> half = blend_target(grams, 0.5)
    >>> T = 0.5 * Y + 0.5 * W @ Ph  # the blended target, directly
    >>> bool(torch.allclose(half.G, T @ Ph.T)), abs(half.yy - float((T ** 2).sum())) < 1e-9
    (True, True)
    >>> blend_target(grams, 1.0) is grams
    True
    """
    if isinstance(correction, bool) or not isinstance(correction, (int, float)) or not 0 <= correction <= 1:
        raise ValueError(f"correction must be a number in [0, 1] (the fraction of the input drift a layer "
                         f"undoes; 1 is the plain output fit), got {correction!r}")
    if correction == 1:
        return grams
    if grams.W is None:
        raise ValueError("blend_target needs the dense layer's [W, b] in grams.W (stream_group_grams sets it)")
    c, W = float(correction), grams.W
    WA = W @ grams.A
    yy = c * c * grams.yy + 2 * c * (1 - c) * float((grams.G * W).sum()) + (1 - c) ** 2 * float((WA * W).sum())
    out = Grams(grams.A, c * grams.G + (1 - c) * WA, max(yy, 0.0), grams.count, W)
    out.__dict__["_roots"] = grams.__dict__.setdefault("_roots", {})  # the root depends on A only
    return out


def output_error(layer: Any, grams: Grams) -> float:
    """Relative squared output error ``||Y - W^~ P_h||^2 / ||Y||^2`` of ``layer`` as it is, for ``grams``.

    ``layer`` is a SeKron layer (its factors and bias) or a dense conv/linear. Never below 0
    (float64 rounding of an exact match is clamped).

    Examples
    --------
    >>> import torch
    >>> conv = torch.nn.Conv2d(2, 3, 3)
    >>> x = [torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))]
    >>> grams = stream_grams(conv, conv, conv, conv, x, 10_000, torch.Generator().manual_seed(0))
    >>> output_error(conv, grams) < 1e-12  # the dense layer on its own inputs
    True
    """
    if hasattr(layer, "factors"):
        M = _weight_matrix(layer, [f.detach().to(torch.float64) for f in layer.factors],
                           None if layer.bias is None else layer.bias.detach().to(torch.float64))
    else:
        M = dense_matrix(layer)
    yy = max(grams.yy, 1e-300)
    return max(float(((M @ grams.A) * M).sum() - 2 * (grams.G * M).sum() + grams.yy) / yy, 0.0)


def _augment(p: torch.Tensor) -> torch.Tensor:
    return torch.cat([p.to(torch.float64), torch.ones(p.shape[0], 1, dtype=torch.float64, device=p.device)], 1)


def dense_matrix(mod: Any) -> torch.Tensor:
    """``[W.reshape(F, -1), b]`` of a dense conv/linear in float64 (zero bias column when it has none)."""
    W = mod.weight.detach().to(torch.float64)
    W = W.reshape(W.shape[0], -1)
    b = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device) if mod.bias is None else \
        mod.bias.detach().to(torch.float64)
    return torch.cat([W, b[:, None]], 1)


def stream_grams(dense_model: nn.Module, dense_layer: nn.Module, model: nn.Module, layer: nn.Module,
                 batches: Sequence[torch.Tensor], max_samples: int, generator: torch.Generator) -> Grams:
    """Stream the Gram matrices of one layer: dense inputs from ``dense_model``, actual ones from ``model``.

    The group of one layer of :func:`stream_group_grams` (each forward pass stops at the layer).
    """
    return stream_group_grams(dense_model, [dense_layer], model, [layer], batches, max_samples, generator)[0]


def gram_bytes(dense_layer: Any) -> int:
    """Bytes of the float64 Gram matrices ``A`` and ``G`` that :func:`stream_grams` keeps for ``dense_layer``.

    Examples
    --------
    >>> import torch
    >>> gram_bytes(torch.nn.Conv2d(2, 4, 3))  # n = 2 * 3 * 3 = 18 patch entries, F = 4
    3496
    """
    w = dense_layer.weight
    n = int(w[0].numel()) + 1
    return 8 * n * (n + int(w.shape[0]))


def _capture_group(model: nn.Module, modules: Sequence[nn.Module], x: torch.Tensor, take: Any,
                   stand_ins: Sequence[nn.Module] | None = None) -> None:
    """Run ``model(x)`` until every one of ``modules`` has been called once; ``take(i, input)`` at each first call.

    Forward pre-hooks see each module's input; the pass stops (a private exception) right
    before the last of them would run, so nothing after the group is computed. With
    ``stand_ins``, the output of ``modules[i]`` is replaced by ``stand_ins[i]`` applied to
    the same input (forward hooks), so later members see it instead.
    """
    pending = {id(m): i for i, m in enumerate(modules)}
    # a stand-in that is the member itself changes nothing (and calling it from its own hook would recurse)
    swap = {} if stand_ins is None else {id(m): s for m, s in zip(modules, stand_ins) if s is not m}

    def replace(mod: nn.Module, args: Any, out: Any) -> Any:
        return swap[id(mod)](*args)

    def hook(mod: nn.Module, args: Any) -> None:
        i = pending.pop(id(mod), None)
        if i is None:  # a later call of a module already captured
            return
        take(i, args[0].detach())
        if not pending:
            raise _StopForwardError

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    handles += [m.register_forward_hook(replace) for m in modules if id(m) in swap]
    try:
        with torch.no_grad():
            model(x)
    except _StopForwardError:
        pass
    finally:
        for h in handles:
            h.remove()
    if pending:
        missing = ", ".join(modules[i].__class__.__name__ for i in pending.values())
        raise ValueError(f"the layer(s) {missing} did not run in the model's forward pass on the calibration "
                         "inputs; exclude them or check the inputs")


def stream_group_grams(dense_model: nn.Module, dense_layers: Sequence[nn.Module], model: nn.Module,
                       layers: Sequence[nn.Module], batches: Sequence[torch.Tensor], max_samples: int,
                       generator: torch.Generator, dense_members: bool = False) -> list[Grams]:
    """Stream the Gram matrices of several layers at once, one pair of forward passes per batch.

    ``dense_layers[i]`` (in ``dense_model``) and ``layers[i]`` (in ``model``) are the same
    layer of the two networks. For every batch, one pass of ``dense_model`` records each
    dense layer's outputs at the kept positions (``W~ p_d``, float64, computed from the
    patches as in the one-layer case; the activation itself is dropped at once), then one
    pass of ``model`` adds each actual patch matrix to that layer's ``A`` and ``G``. Each
    pass stops right before the last layer of the group would run.

    Memory: the Gram matrices of the group (:func:`gram_bytes` each), plus, for one batch,
    the dense outputs at the kept positions of every layer of the group and one activation
    at a time. With one layer this is exactly the sequential streaming (same random
    positions from ``generator``, same float64 arithmetic in the same order). The inputs
    seen by ``layers[i]`` come from ``model`` as it is during the call: when the caller
    fits the group's layers only afterwards, a later layer's input carries the earlier
    group members' error *before* their fit (see ``compress``'s ``fit_group_bytes``).
    With ``dense_members=True`` each member of the group instead passes on what its dense
    layer computes from its actual input (``dense_layers[i]`` applied in ``model``'s pass):
    a later member then sees the prefix's drift but not the weight-fit error of the
    members fitted together with it, which their fit removes for the most part.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Conv2d(2, 3, 1))
    >>> x = [torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))]
    >>> grams = stream_group_grams(net, [net[0], net[2]], net, [net[0], net[2]], x, 10_000,
    ...                            torch.Generator().manual_seed(0))
    >>> [tuple(g.A.shape) for g in grams], [g.count for g in grams]  # patch entries + 1; positions
    ([(10, 10), (3, 3)], [144, 144])
    >>> bool(torch.allclose(grams[0].G, grams[0].W @ grams[0].A))  # the model is the dense one: G = W~ A
    True
    >>> same = stream_group_grams(net, [net[0], net[2]], net, [net[0], net[2]], x, 10_000,
    ...                           torch.Generator().manual_seed(0), dense_members=True)
    >>> all(torch.equal(a.A, b.A) for a, b in zip(grams, same))  # members that are their dense layers
    True
    """
    if len(dense_layers) != len(layers) or not layers:
        raise ValueError(f"dense_layers and layers must be non-empty and pair up, got {len(dense_layers)} and "
                         f"{len(layers)}")
    k = len(layers)
    Wd = [dense_matrix(d) for d in dense_layers]
    A: list[torch.Tensor | None] = [None] * k
    G: list[torch.Tensor | None] = [None] * k
    yy, count = [0.0] * k, [0] * k
    totals: list[int | None] = [None] * k
    kept: list[tuple[torch.Tensor | None, torch.Tensor] | None] = [None] * k  # per batch: kept positions, yd
    per_input = [0]  # the current batch's size

    def take_dense(i: int, xd: torch.Tensor) -> None:
        n = positions(dense_layers[i], xd)
        total = totals[i]
        if total is None:  # positions over the whole calibration set, from the first batch's per-input count
            total = totals[i] = sum(n * b.shape[0] // per_input[0] for b in batches)
        keep = None
        if total > max_samples:
            m = max(1, round(n * max_samples / total))
            keep = torch.randperm(n, generator=generator)[:m].sort().values.to(xd.device)
        pd = _augment(patches(dense_layers[i], xd, keep))
        kept[i] = (keep, pd @ Wd[i].T)

    def take_actual(i: int, xh: torch.Tensor) -> None:
        entry = kept[i]
        assert entry is not None
        keep, yd = entry
        kept[i] = None
        ph = _augment(patches(dense_layers[i], xh, keep))
        a, g = A[i], G[i]
        A[i] = ph.T @ ph if a is None else a + ph.T @ ph
        G[i] = yd.T @ ph if g is None else g + yd.T @ ph
        yy[i] += float((yd ** 2).sum())
        count[i] += ph.shape[0]

    for x in batches:
        per_input[0] = x.shape[0]
        _capture_group(dense_model, dense_layers, x, take_dense)
        _capture_group(model, layers, x, take_actual, dense_layers if dense_members else None)
    out = []
    for i in range(k):
        a, g = A[i], G[i]
        assert a is not None and g is not None
        out.append(Grams(a, g, yy[i], count[i], Wd[i]))
    return out


def _weight_matrix(layer: Any, factors: Sequence[torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
    from ..sekron_tensor import SeKronTensor

    W = SeKronTensor(list(factors), layer.structure).to_tensor()
    W = W.reshape(W.shape[0], -1)
    b = torch.zeros(W.shape[0], dtype=W.dtype, device=W.device) if bias is None else bias
    return torch.cat([W, b[:, None]], 1)


@dataclass
class FitResult:
    """Relative squared output errors ``||Y - Y^||^2 / ||Y||^2`` before and after the fit, and steps taken."""

    before: float
    after: float
    steps: int


def fit_layer(layer: Any, grams: Grams, *, solver: str = "als", steps: int = 15, fit_bias: bool = True,
              ridge: float = 1e-2) -> FitResult:
    """Fit a SeKron layer's factors (and bias) to least output error for the streamed ``grams``; in place.

    The objective adds ``lambda ||W^ - W||^2`` (``lambda = ridge * mean(diag A)``, the
    dense weight ``W`` as prior): with fewer calibration positions than patch entries the
    output error alone is underdetermined and overfits the calibration inputs; the ridge
    keeps the directions the inputs do not see at the dense weight. Errors are reported
    without it. The result is never worse than the starting point (best iterate kept).
    ``steps``: ALS sweeps over the blocks (``"als"``; they stop early once a sweep lowers
    the error by less than 0.1% of it), or tenfold that many Adam steps.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
    has_bias = layer.bias is not None and fit_bias
    G = grams.G if layer.bias is not None else grams.G[:, :-1]  # no bias: the last coordinate is no unknown
    L = grams.root(layer.bias is not None)
    yy = max(grams.yy, 1e-300)
    lam = grams.ridge(ridge, layer.bias is not None) if grams.W is not None else 0.0
    Wd = None if grams.W is None else (grams.W if layer.bias is not None else grams.W[:, :-1])
    blocks = [f.detach().to(torch.float64).clone() for f in layer.factors]
    bias = layer.bias.detach().to(torch.float64).clone() if layer.bias is not None else None
    if bias is not None:
        blocks.append(bias)
    n_f = len(layer.factors)

    def matrix(bl: Sequence[torch.Tensor]) -> torch.Tensor:
        W = _weight_matrix(layer, bl[:n_f], bl[n_f] if bias is not None else None)
        return W if layer.bias is not None else W[:, :-1]

    def output_loss(W: torch.Tensor) -> torch.Tensor:
        return (W @ L).pow(2).sum() - 2 * (G * W).sum() + yy

    def loss_of(bl: Sequence[torch.Tensor]) -> torch.Tensor:
        W = matrix(bl)
        out = output_loss(W)
        if lam > 0 and Wd is not None:
            out = out + lam * (W - Wd)[:, :-1 if layer.bias is not None else None].pow(2).sum()
        return out

    with torch.no_grad():
        start = float(loss_of(blocks)) / yy
        start_output = float(output_loss(matrix(blocks))) / yy
    free = list(range(n_f)) + ([n_f] if has_bias else [])
    best, best_blocks, taken = start, [b.clone() for b in blocks], 0
    if solver == "als":
        for _ in range(steps):
            for k in free:
                _cg_block(loss_of, blocks, k)
            taken += 1
            with torch.no_grad():
                cur = float(loss_of(blocks)) / yy
            if cur < best:
                improved = (best - cur) > 1e-3 * best
                best, best_blocks = cur, [b.clone() for b in blocks]
                if not improved:
                    break
            else:
                break
    else:
        params = [blocks[k].clone().requires_grad_(True) for k in free]
        scales = [float(p.detach().pow(2).mean().sqrt()) or 1.0 for p in params]
        opt = torch.optim.Adam([{"params": [p], "lr": 1e-2 * s} for p, s in zip(params, scales)])
        n_steps = 10 * steps
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_steps)
        for _ in range(n_steps):
            cur_blocks = list(blocks)
            for k, p in zip(free, params):
                cur_blocks[k] = p
            loss = loss_of(cur_blocks)
            val = float(loss.detach()) / yy
            if val < best:
                best, best_blocks = val, [b.detach().clone() for b in cur_blocks]
            opt.zero_grad()
            (loss / yy).backward()
            opt.step()
            sched.step()
            taken += 1
    with torch.no_grad():
        for f, new in zip(layer.factors, best_blocks[:n_f]):
            f.copy_(new.to(f.dtype))
        if has_bias:
            layer.bias.copy_(best_blocks[n_f].to(layer.bias.dtype))
        final_output = float(output_loss(matrix(best_blocks))) / yy
    return FitResult(max(start_output, 0.0), max(final_output, 0.0), taken)


def _cg_block(loss_of: Any, blocks: list[torch.Tensor], k: int, iters: int = 8, tol: float = 1e-10) -> None:
    """Minimise the (quadratic in block ``k``) loss over block ``k`` by conjugate gradients, in place."""
    def grad(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().requires_grad_(True)
        bl = list(blocks)
        bl[k] = v
        (g,) = torch.autograd.grad(loss_of(bl), v)
        return g

    x = blocks[k]
    g0 = grad(torch.zeros_like(x))  # gradient at 0: -2 * right-hand side

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return grad(v) - g0

    r = -grad(x)
    p = r.clone()
    rr = float((r * r).sum())
    stop = tol * max(float((g0 * g0).sum()), 1e-300)
    for _ in range(iters):
        if rr <= stop:
            break
        Hp = hvp(p)
        pHp = float((p * Hp).sum())
        if pHp <= 0:
            break
        alpha = rr / pHp
        x = x + alpha * p
        r = r - alpha * Hp
        rr_new = float((r * r).sum())
        p = r + (rr_new / rr) * p
        rr = rr_new
    blocks[k] = x.detach()


#: the ridge strengths ``s`` (``lambda = s * mean(diag A)``) among which :func:`refit_dense` picks
#: by generalised cross-validation; ``0`` is the plain least-squares (pseudo-inverse) refit
REFIT_RIDGE_GRID = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def refit_dense(layer: Any, grams: Grams, ridge: float | Sequence[float] | None = None) -> FitResult:
    """Refit a dense conv/linear's weight (and bias) to the streamed ``grams`` where that should generalise; in place.

    Candidates: the ridge refits ``W~(lambda) = (G + lambda W) (A + lambda I)^-1`` (the current
    weight ``W`` as the prior, bias not penalised, ``lambda = s * mean(diag A)`` for every
    strength ``s`` in ``ridge``, default :data:`REFIT_RIDGE_GRID`), and the layer as it is.
    Each is scored by generalised cross-validation over the ``n = grams.count`` calibration
    positions, ``GCV = RSS / (1 - df / n)^2`` with ``df = tr(A (A + lambda I)^-1)`` (plus 1 for
    the bias; 0 for the layer as it is), an estimate of the output error on positions the
    fit has not seen that needs only the streamed Grams. The lowest score wins, the layer
    as it is on ties, so the calibration error never rises. With many positions per
    unknown this is the plain least-squares refit; with about as many positions as unknowns
    of an output channel (the whole Real-ESRGAN: 2,048 for 1,729, where the free refit
    turned 12.85 dB into 4.54 dB) it takes a strong ridge or none. Deterministic.
    GCV treats positions as independent; overlapping patches of one image are not, so it
    is optimistic for convs whose positions come from few images.

    Returns the relative squared output errors before and after (``steps`` 1 when the
    layer was changed, 0 when it was left as it is).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> X, W = torch.randn(400, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    >>> Y, P = X @ W.T, torch.cat([X, torch.ones(400, 1, dtype=torch.float64)], 1)
    >>> grams = Grams(P.T @ P, Y.T @ P, float((Y ** 2).sum()), 400)
    >>> layer = torch.nn.Linear(5, 3).double()  # other weights: refitted exactly from 80 positions per unknown
    >>> fit = refit_dense(layer, grams)
    >>> fit.steps, fit.after < 1e-12, bool(torch.allclose(layer.weight, W))
    (1, True, True)
    """
    strengths = REFIT_RIDGE_GRID if ridge is None else (ridge,) if isinstance(ridge, (int, float)) else tuple(ridge)
    if not strengths or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)
                            or s < 0 for s in strengths):
        raise ValueError(f"ridge must be a finite number >= 0 or a non-empty sequence of them (the candidate "
                         f"strengths; None for REFIT_RIDGE_GRID), got {ridge!r}")
    A, G = grams.A, grams.G
    yy = max(grams.yy, 1e-300)
    bias = layer.bias is not None
    if not bias:
        A, G = A[:-1, :-1], G[:, :-1]
    W = layer.weight.detach().to(torch.float64).reshape(layer.weight.shape[0], -1)
    if bias:
        W = torch.cat([W, layer.bias.detach().to(torch.float64)[:, None]], 1)

    def loss(M: torch.Tensor) -> float:
        return float(((M @ A) * M).sum() - 2 * (G * M).sum() + yy) / yy

    raw = loss(W)
    start = max(raw, 0.0)  # float64 rounding can leave an exact match slightly below 0 (its sqrt then fails)
    best = ridge_refit(A, G, yy, W, grams.count, [float(s) for s in strengths], bias)
    if best is None:
        return FitResult(start, start, 0)
    new, score = best
    after = loss(new)
    if not (score < raw and after < raw):  # the layer as it is scores raw (df 0)
        return FitResult(start, start, 0)
    with torch.no_grad():
        n = layer.weight[0].numel()
        layer.weight.copy_(new[:, :n].reshape(layer.weight.shape).to(layer.weight.dtype))
        if bias:
            layer.bias.copy_(new[:, n].to(layer.bias.dtype))
    return FitResult(start, max(min(start, after), 0.0), 1)


def ridge_refit(A: torch.Tensor, G: torch.Tensor, yy: float, W: torch.Tensor, count: int,
                strengths: Sequence[float], bias: bool) -> tuple[torch.Tensor, float] | None:
    """The ridge refit ``[W, b]`` with the least generalised cross-validation score, and that score.

    ``A``, ``G``, ``yy`` are the Grams (patch coordinates, then the constant coordinate when
    ``bias``), ``W`` the prior ``[W, b]``, ``count`` the positions. For strength ``s``,
    ``lambda = s * mean(diag A)`` over the patch coordinates and
    ``M = argmin ||Y - M P||^2 + lambda ||M_W - W_W||^2`` (the bias free); ``s = 0`` is the
    minimum-norm least-squares solution (eigenvalues below ``1e-10`` of the largest dropped).
    Score: ``RSS / yy / (1 - df / count)^2``, ``df`` the trace of the hat matrix (the bias
    counts 1). ``None`` when every candidate has ``df >= count``. One eigendecomposition of
    the centred ``A``, then ``O(F n)`` per strength and one ``O(F n^2)`` product for the winner.
    """
    nb = A.shape[0] - int(bias)
    if bias:  # profile the free bias out: centred statistics
        s, m = A[:nb, nb], max(float(A[nb, nb]), 1e-300)
        Ac = A[:nb, :nb] - torch.outer(s, s) / m
        gy = G[:, nb]
        Gc = G[:, :nb] - torch.outer(gy, s) / m
        yc = yy - float((gy * gy).sum()) / m
    else:
        Ac, Gc, yc = A, G, yy
    scale = float(A.diagonal()[:nb].mean()) if nb else 0.0
    ev, V = torch.linalg.eigh(Ac)
    ev = ev.clamp_min(0.0)
    top = float(ev.max()) if nb else 0.0
    H, Wv = Gc @ V, W[:, :nb] @ V
    best: tuple[float, torch.Tensor] | None = None
    for strength in strengths:
        lam = strength * scale
        if lam > 0:
            d = 1.0 / (ev + lam)
            df = float((ev * d).sum())
        else:
            keep = ev > 1e-10 * max(top, 1e-300)
            d = torch.where(keep, 1.0 / torch.where(keep, ev, 1.0), 0.0)
            df = float(keep.sum())
        df += int(bias)
        if df >= count:
            continue
        Z = (H + lam * Wv) * d  # M_W V in the eigenbasis of the centred A
        rss = yc - 2 * float((H * Z).sum()) + float((Z * Z * ev).sum())  # with the best bias for M_W
        score = max(rss, 0.0) / max(yy, 1e-300) / (1 - df / count) ** 2
        if best is None or score < best[0]:
            best = (score, Z)
    if best is None:
        return None
    score, Z = best
    Mx = Z @ V.T
    M = torch.cat([Mx, ((gy - Mx @ s) / m)[:, None]], 1) if bias else Mx
    return M, score
