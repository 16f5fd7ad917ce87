"""Fold eval-mode BatchNorm into the conv (or linear) layer that feeds it.

In eval mode ``bn(conv(x)) = s * (W * x + b - mu) + beta`` with ``s = gamma / sqrt(var + eps)``
per output channel, which is the conv with weight ``s W`` and bias ``s (b - mu) + beta``.
Folding makes the network's function visible to everything that looks at a layer's
weight or output alone: the weight fit, the sensitivity measurement and the output fit
then see each output channel at the scale the rest of the network sees it (BatchNorm
would otherwise rescale their errors by ``s`` afterwards), and the folded model has
fewer parameters (the BatchNorm's ``2C`` become at most ``C`` bias entries).

A pair is folded only when it is exact: one forward pass with hooks finds each
BatchNorm whose input is the very tensor a conv/linear returned (both called once), and
the folded model is then checked against the original in float64 on the given inputs;
a pair whose folding changes the output (the conv's output is also used elsewhere, as
in ``y = conv(x); return bn(y) + y``) is left alone.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _candidates(model: nn.Module, x: torch.Tensor, force: bool) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) pairs where the BatchNorm's input is the conv's output, each called once."""
    mods = dict(model.named_modules())
    names = {id(m): n for n, m in mods.items()}
    calls: dict[int, int] = {}
    outputs: dict[int, tuple[Any, str]] = {}
    pairs: list[tuple[str, str]] = []

    def conv_hook(mod: nn.Module, args: Any, out: Any) -> None:
        calls[id(mod)] = calls.get(id(mod), 0) + 1
        if isinstance(out, torch.Tensor):
            outputs[id(out)] = (weakref.ref(out), names[id(mod)])

    def norm_hook(mod: nn.Module, args: Any) -> None:
        calls[id(mod)] = calls.get(id(mod), 0) + 1
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or id(x) not in outputs:
            return
        ref, conv = outputs[id(x)]
        if ref() is x and (x.ndim == 2 or not isinstance(mods[conv], nn.Linear)):  # linear: (N, C) only
            pairs.append((conv, names[id(mod)]))

    handles = []
    for m in mods.values():
        if type(m) in _CONVS:
            handles.append(m.register_forward_hook(conv_hook))
        elif type(m) in _NORMS:
            handles.append(m.register_forward_pre_hook(norm_hook))
    was = {n: m.training for n, m in mods.items()}
    try:
        model.eval()  # in training mode the pass would update the BatchNorms' running statistics
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for n, m in mods.items():
            m.training = was[n]
    out = []
    for conv_name, bn_name in pairs:
        conv, bn = mods[conv_name], mods[bn_name]
        if calls.get(id(conv)) != 1 or calls.get(id(bn)) != 1:
            continue  # a shared module: folding would change its other uses
        if bn.running_mean is None or bn.running_var is None or (was[bn_name] and not force):
            continue
        if bn.num_features != conv.weight.shape[0]:
            continue
        out.append((conv_name, bn_name))
    return out


def _fold_pair(model: nn.Module, conv_name: str, bn_name: str) -> None:
    conv: Any = model.get_submodule(conv_name)
    bn: Any = model.get_submodule(bn_name)
    with torch.no_grad():
        W = conv.weight
        scale = (bn.running_var.to(torch.float64) + bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.to(torch.float64)
        b = torch.zeros(W.shape[0], dtype=torch.float64, device=W.device) if conv.bias is None else \
            conv.bias.to(torch.float64)
        b = (b - bn.running_mean.to(torch.float64)) * scale
        if bn.bias is not None:
            b = b + bn.bias.to(torch.float64)
        shape = (-1,) + (1,) * (W.ndim - 1)
        W.copy_((W.to(torch.float64) * scale.reshape(shape)).to(W.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(b.to(W.dtype))
        else:
            conv.bias.copy_(b.to(conv.bias.dtype))
    model.set_submodule(bn_name, nn.Identity())


def _outputs64(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from .calibrate import _first_tensor

    with torch.no_grad():
        return _first_tensor(model(x)).detach().to(torch.float64)


def fold_batchnorm(model: nn.Module, example: torch.Tensor, *, force: bool = False,
                   rtol: float = 1e-9) -> list[tuple[str, str]]:
    """Fold each BatchNorm that directly follows a conv/linear into it, in place; returns the folded pairs.

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place: the conv gets the scaled weight and a bias, the BatchNorm
        becomes ``nn.Identity``. Its train/eval flag is kept.
    example : torch.Tensor
        A batch of model inputs; one forward pass finds the pairs, and the folded model
        must reproduce the original's output on it (in float64, within ``rtol`` of the
        largest output entry), pair by pair, or that pair is not folded.
    force : bool
        Also fold BatchNorms in training mode (their running statistics, i.e. the
        eval-mode function); by default those are left alone, since folding them would
        change what the model computes in training mode.
    rtol : float
        Tolerance of the float64 check.

    Returns
    -------
    list of (str, str)
        ``(conv name, BatchNorm name)`` of every folded pair.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch.fold import fold_batchnorm
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    >>> x = torch.randn(2, 3, 8, 8)
    >>> before = net(x)
    >>> fold_batchnorm(net, x)
    [('0', '1')]
    >>> type(net[1]).__name__, torch.allclose(net(x), before, atol=1e-5)
    ('Identity', True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor):
        raise TypeError(f"example must be a tensor of model inputs, got {type(example).__name__}")
    was = {n: m.training for n, m in model.named_modules()}
    pairs = _candidates(model, example, force)
    if not pairs:
        return []
    # float64 copies: the original with every BatchNorm in eval mode (the function folding preserves)
    ref = copy.deepcopy(model).double()
    for m in ref.modules():
        if type(m) in _NORMS:
            m.eval()
    x64 = example.to(torch.float64) if example.is_floating_point() else example
    want = _outputs64(ref, x64)
    scale = max(float(want.abs().max()), 1e-300)

    def exact(subset: list[tuple[str, str]]) -> bool:
        trial = copy.deepcopy(ref)
        for c, b in subset:
            _fold_pair(trial, c, b)
        return bool(float((_outputs64(trial, x64) - want).abs().max()) <= rtol * scale)

    kept = pairs if exact(pairs) else [p for p in pairs if exact([p])]
    if len(kept) > 1 and kept is not pairs and not exact(kept):
        good: list[tuple[str, str]] = []
        for p in kept:  # greedy: add a pair only while the folds together stay exact
            if exact([*good, p]):
                good.append(p)
        kept = good
    for c, b in kept:
        _fold_pair(model, c, b)
    for n, m in model.named_modules():  # keep the caller's flags (the new Identity modules take their model's)
        if n in was:
            m.train(was[n])
    return kept
