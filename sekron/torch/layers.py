"""PyTorch layers with a SeKron weight: ``SeKronConv1d/2d/3d`` and ``SeKronLinear``.

Each layer holds the factors of its weight as trainable ``nn.Parameter``s (axis
convention of :mod:`sekron.sekron_tensor`) and runs :func:`sekron.conv` with a
plan (factorized in a fixed order, or dense reconstruction) chosen once, when it is
built. A linear layer is the D = 0 case: its weight ``(F, C)`` runs as a 1x1
convolution. The structure and ranks travel in the ``state_dict`` (``get_extra_state``),
so a saved model loads under ``torch.load(..., weights_only=True)`` into a skeleton
rebuilt by :func:`sekron.torch.load_compressed`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..convolution import conv, conv_cost
from ..decomposition import decompose
from ..sekron_tensor import SeKronTensor
from ..structure import Structure

#: spatial size per axis of the nominal input that the plan is chosen for
NOMINAL_SPATIAL = 32
_STATE_VERSION = 1
IMPLEMENTATIONS = ("auto", "factorized", "dense")


def _structure_of(structure: Any) -> Structure:
    if isinstance(structure, Structure):
        return structure
    if isinstance(structure, Sequence) and not isinstance(structure, (str, bytes)):
        return Structure(structure, "nested")
    raise TypeError(f"structure must be a sekron.Structure, a list of factor shapes or a search Candidate, "
                    f"got {type(structure).__name__}")


def _decompose(weight: torch.Tensor, structure: Any, rank: Any, tol: float | None,
               options: dict[str, Any]) -> SeKronTensor:
    """Decompose a weight (in float64 numpy) and return factors of the weight's dtype and device."""
    from ..structure_search import Candidate

    with torch.no_grad():
        W = weight.detach().to("cpu", torch.float64).numpy()
    if isinstance(structure, Candidate):
        if rank is not None or tol is not None:
            raise ValueError("a search Candidate fixes the ranks; do not pass rank= or tol= with it")
        sk = structure.decompose(W)
    else:
        sk = decompose(W, _structure_of(structure), rank, tol=tol, **options)
    factors = [torch.as_tensor(np.ascontiguousarray(f), dtype=weight.dtype, device=weight.device)
               for f in sk.factors]
    return SeKronTensor(factors, sk.structure)


def _empty_factors(st: Structure, rank: Mapping[str, int], like: torch.Tensor) -> SeKronTensor:
    factors = [torch.zeros(tuple(int(rank[c]) for c in lab) + fs, dtype=like.dtype, device=like.device)
               for lab, fs in zip(st.labels, st.factor_shapes)]
    return SeKronTensor(factors, st)


def _plan(sk: SeKronTensor, implementation: str, order: Any, input_shape: Sequence[int] | None,
          stride: Any, padding: Any, dilation: Any, padding_mode: str) -> tuple[str, tuple[int, ...] | None]:
    """Implementation and stage order, fixed once: the planner's choice for a nominal input."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {list(IMPLEMENTATIONS)}, got {implementation!r}")
    if implementation == "dense":
        return "dense", None
    if order is not None:
        return "factorized", tuple(int(k) for k in order)
    kshape = sk.shape
    if input_shape is None:
        dil = dilation if isinstance(dilation, Sequence) else (dilation,) * (len(kshape) - 2)
        input_shape = (1, kshape[1], *tuple(max(NOMINAL_SPATIAL, 2 * d * (k - 1) + 2) for d, k in zip(dil, kshape[2:])))
    cost = conv_cost(sk, tuple(input_shape), stride, padding, dilation, padding_mode)
    if implementation == "auto" and cost.auto == "dense":
        return "dense", None
    return "factorized", cost.best.order


def _refuse_onnx_export(layer: nn.Module) -> None:
    """Raise a clear error when ``torch.onnx.export`` meets a SeKron layer (export ``to_standard(model)``)."""
    if "torch.onnx" not in sys.modules or (torch.compiler.is_dynamo_compiling() and not torch.compiler.is_exporting()):
        return  # not exporting (torch.compile traces the layer as it is)
    if torch.onnx.is_in_onnx_export():
        raise TypeError(
            f"{type(layer).__name__} cannot be exported to ONNX as it is: its forward pass would rebuild the weight "
            "from the factors at every inference. Export the plain-torch copy instead: "
            "torch.onnx.export(sekron.torch.to_standard(model), ...), whose convolutions hold constant weights")


class _SeKronBase(nn.Module):
    """Factors as parameters, the structure, and the state-dict plumbing shared by all layers."""

    _structure: Structure

    def _init_factors(self, sk: SeKronTensor) -> None:
        if not isinstance(sk, SeKronTensor) or not all(isinstance(f, torch.Tensor) for f in sk.factors):
            raise TypeError("sk must be a SeKronTensor with torch factors (e.g. from from_conv / from_linear)")
        self._structure = sk.structure
        self.factors = nn.ParameterList([nn.Parameter(f.detach().clone()) for f in sk.factors])

    @property
    def structure(self) -> Structure:
        """The factorization structure of the weight."""
        return self._structure

    @property
    def rank(self) -> dict[str, int]:
        """Bond sizes ``{label: size}``."""
        return self.sekron_weight().rank

    def sekron_weight(self) -> SeKronTensor:
        """The weight as a SeKronTensor over the (trainable) factor parameters."""
        return SeKronTensor(list(self.factors), self._structure)

    @property
    def n_params(self) -> int:
        """Parameters of the factors (bias excluded)."""
        return sum(int(p.numel()) for p in self.factors)

    @property
    def dense_params(self) -> int:
        return math.prod(self._structure.shape)

    def _describe(self) -> str:
        return (f"structure={self._structure.factor_shapes}, pattern={self._structure.pattern!r}, rank={self.rank}, "
                f"params={self.n_params}, compression={self.dense_params / max(self.n_params, 1):.2f}x, "
                f"plan={self.implementation}{'' if self.order is None else ' ' + str(self.order)}")

    def get_extra_state(self) -> dict[str, Any]:
        _refuse_onnx_export(self)  # the legacy exporter reads the state dict before the forward pass
        return {"sekron": _STATE_VERSION, "kind": type(self).__name__, "structure": self._structure.to_dict(),
                "rank": dict(self.rank), "implementation": self.implementation,
                "order": None if self.order is None else list(self.order)}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping) or state.get("sekron") != _STATE_VERSION:
            raise ValueError(f"{type(self).__name__}: the state holds no sekron layer description: {state!r}")
        st = Structure.from_dict(state["structure"])
        if st != self._structure or dict(state["rank"]) != self.rank:
            raise ValueError(
                f"{type(self).__name__}: the saved structure {st.factor_shapes} {st.labels} with rank "
                f"{dict(state['rank'])} differs from this layer's {self._structure.factor_shapes} "
                f"{self._structure.labels} with rank {self.rank}; build the model with "
                "sekron.torch.load_compressed(skeleton, state_dict) instead")
        self.implementation = str(state["implementation"])
        self.order = None if state["order"] is None else tuple(int(k) for k in state["order"])


def _check_bias(bias: Any, sk: SeKronTensor, n_out: int) -> None:
    """A bias must be a tensor of shape (out,) and of the factors' dtype (no silent promotion)."""
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor of shape ({n_out},) or None, got {type(bias).__name__}")
    if tuple(bias.shape) != (n_out,):
        raise ValueError(f"bias must have shape ({n_out},) (one entry per output), got {tuple(bias.shape)}")
    if bias.dtype != sk.dtype:
        raise TypeError(f"bias has dtype {bias.dtype} but the weight's factors have {sk.dtype}; the output would be "
                        f"silently promoted: cast one of them, e.g. bias.to({sk.dtype})")


def _ntuple(value: Any, D: int, name: str) -> tuple[int, ...]:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != D:
            raise ValueError(f"{name} must be an int or a tuple of {D} ints, got {value!r}")
        return tuple(int(v) for v in value)
    return (int(value),) * D


class _SeKronConvNd(_SeKronBase):
    _D = 2
    _dense_cls: type[nn.Module] = nn.Conv2d

    def __init__(self, sk: SeKronTensor, *, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1,
                 bias: torch.Tensor | None = None, padding_mode: str = "zeros", implementation: str = "auto",
                 order: Sequence[int] | None = None, input_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        D = self._D
        if len(sk.shape) != D + 2:
            raise ValueError(f"{type(self).__name__} needs a kernel of shape (F, C / groups, K_1..K_{D}), "
                             f"got shape {sk.shape}")
        self._init_factors(sk)
        self.out_channels, self.in_channels = sk.shape[0], sk.shape[1] * int(groups)
        self.kernel_size = tuple(sk.shape[2:])
        self.stride, self.dilation = _ntuple(stride, D, "stride"), _ntuple(dilation, D, "dilation")
        self.padding = padding if isinstance(padding, str) else _ntuple(padding, D, "padding")
        self.groups, self.padding_mode = int(groups), padding_mode
        _check_bias(bias, sk, self.out_channels)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        like = sk.factors[0]
        # a weightless twin holding torch's own padding and grouping rules, for the grouped path and to_conv
        self.__dict__["_template"] = self._dense_cls(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, bias is not None, padding_mode, device="meta", dtype=like.dtype)
        if self.groups > 1:
            self.implementation, self.order = "dense", None
        else:
            self.implementation, self.order = _plan(sk, implementation, order, input_shape, self.stride,
                                                    self.padding, self.dilation, padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` of shape ``(B, C, *spatial)``, or unbatched ``(C, *spatial)`` as ``nn.Conv{D}d`` allows."""
        if x.dim() == self._D + 1:  # unbatched (C, *spatial), as torch.nn.Conv{D}d accepts
            return self._forward(x.unsqueeze(0)).squeeze(0)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        _refuse_onnx_export(self)
        sk = self.sekron_weight()
        if self.groups > 1:  # one SeKron over the grouped weight (F, C / groups, K..): reconstruct, then conv
            template: Any = self.__dict__["_template"]
            return template._conv_forward(x, sk.to_tensor(), self.bias)  # type: ignore[no-any-return]
        return conv(x, sk, self.stride, self.padding, self.dilation, self.bias, self.padding_mode,  # type: ignore[no-any-return]
                    self.implementation, self.order)

    @classmethod
    def from_conv(cls, conv: Any, structure: Any, rank: Any = None, *, tol: float | None = None,
                  implementation: str = "auto", order: Sequence[int] | None = None,
                  input_shape: Sequence[int] | None = None, **options: Any) -> Any:
        """A SeKron layer equal to ``conv`` (up to the decomposition's error).

        Parameters
        ----------
        conv : torch.nn.Conv{D}d
            Its stride, padding (int, tuple, "same", "valid"), dilation, groups,
            padding_mode, bias, device and dtype are kept exactly. With ``groups > 1``
            one SeKron factorizes the grouped weight ``(F, C / groups, K..)`` and the
            forward pass reconstructs it for torch's grouped convolution.
        structure : Structure, list of factor shapes, or a ``sekron.Candidate``
            Must multiply to ``conv.weight.shape``. A Candidate brings its ranks.
        rank, tol
            As in :func:`sekron.decompose` (``rank=None, tol=None`` is exact).
        implementation : {"auto", "factorized", "dense"}
            The forward plan; "auto" takes the planner's choice for a nominal input
            (``input_shape``, default spatial size 32), fixed once here.
        order : sequence of int, optional
            A factorized stage order (forces "factorized").
        **options
            Passed to :func:`sekron.decompose` (``svd``, ``random_state``, ...).

        Examples
        --------
        >>> import torch
        >>> from sekron.torch import SeKronConv2d
        >>> dense = torch.nn.Conv2d(8, 16, 3, padding=1)
        >>> layer = SeKronConv2d.from_conv(dense, [(4, 2, 3, 1), (4, 4, 1, 3)])
        >>> x = torch.randn(2, 8, 10, 10)
        >>> torch.allclose(layer(x), dense(x), atol=1e-4)
        True
        """
        if type(conv) is not cls._dense_cls:
            raise TypeError(f"{cls.__name__}.from_conv needs a torch.nn.{cls._dense_cls.__name__}, "
                            f"got {type(conv).__name__}")
        dense: Any = conv
        sk = _decompose(dense.weight, structure, rank, tol, options)
        return cls(sk, stride=dense.stride, padding=dense.padding, dilation=dense.dilation, groups=dense.groups,
                   bias=dense.bias, padding_mode=dense.padding_mode, implementation=implementation, order=order,
                   input_shape=input_shape)

    @classmethod
    def _from_state(cls, dense: Any, state: Mapping[str, Any]) -> Any:
        st = Structure.from_dict(state["structure"])
        sk = _empty_factors(st, state["rank"], dense.weight)
        return cls(sk, stride=dense.stride, padding=dense.padding, dilation=dense.dilation, groups=dense.groups,
                   bias=dense.bias, padding_mode=dense.padding_mode, implementation=state["implementation"],
                   order=state["order"])

    def to_conv(self) -> nn.Module:
        """A dense ``torch.nn.Conv{D}d`` with the reconstructed weight and the same settings."""
        like = self.factors[0]
        dense = self._dense_cls(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                                self.dilation, self.groups, self.bias is not None, self.padding_mode,
                                device=like.device, dtype=like.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.sekron_weight().to_tensor())  # type: ignore[operator]
            if self.bias is not None:
                dense.bias.copy_(self.bias)  # type: ignore[operator]
        return dense

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"padding_mode={self.padding_mode!r}, bias={self.bias is not None}, " + self._describe())


class SeKronConv1d(_SeKronConvNd):
    """``torch.nn.Conv1d`` with a SeKron weight (see :meth:`from_conv`).

    Examples
    --------
    >>> import torch
    >>> dense = torch.nn.Conv1d(8, 8, 3, padding=1)
    >>> layer = SeKronConv1d.from_conv(dense, [(4, 2, 3), (2, 4, 1)])
    >>> tuple(layer(torch.randn(1, 8, 10)).shape)
    (1, 8, 10)
    """

    _D = 1
    _dense_cls = nn.Conv1d


class SeKronConv2d(_SeKronConvNd):
    """``torch.nn.Conv2d`` with a SeKron weight (see :meth:`from_conv`).

    Examples
    --------
    >>> import torch
    >>> dense = torch.nn.Conv2d(8, 8, 3, padding=1)
    >>> layer = SeKronConv2d.from_conv(dense, [(4, 2, 3, 1), (2, 4, 1, 3)])
    >>> tuple(layer(torch.randn(1, 8, 6, 6)).shape)
    (1, 8, 6, 6)
    """

    _D = 2
    _dense_cls = nn.Conv2d


class SeKronConv3d(_SeKronConvNd):
    """``torch.nn.Conv3d`` with a SeKron weight (see :meth:`from_conv`).

    Examples
    --------
    >>> import torch
    >>> dense = torch.nn.Conv3d(8, 8, 3, padding=1)
    >>> layer = SeKronConv3d.from_conv(dense, [(4, 2, 3, 1, 1), (2, 4, 1, 3, 3)])
    >>> tuple(layer(torch.randn(1, 8, 4, 4, 4)).shape)
    (1, 8, 4, 4, 4)
    """

    _D = 3
    _dense_cls = nn.Conv3d


def _as_pointwise(st: Structure) -> Structure:
    """The (F, C) structure as a (F, C, 1) kernel: every factor gains a spatial size 1."""
    return Structure([(*fs, 1) for fs in st.factor_shapes], labels=st.labels)


class SeKronLinear(_SeKronBase):
    """``torch.nn.Linear`` with a SeKron weight ``(out_features, in_features)``; runs as a 1x1 convolution.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import SeKronLinear
    >>> dense = torch.nn.Linear(12, 8)
    >>> layer = SeKronLinear.from_linear(dense, [(2, 3), (4, 4)])
    >>> x = torch.randn(5, 12)
    >>> torch.allclose(layer(x), dense(x), atol=1e-5)
    True
    """

    def __init__(self, sk: SeKronTensor, *, bias: torch.Tensor | None = None, implementation: str = "auto",
                 order: Sequence[int] | None = None, batch: int = NOMINAL_SPATIAL) -> None:
        super().__init__()
        if len(sk.shape) != 2:
            raise ValueError(f"SeKronLinear needs a weight of shape (out_features, in_features), got {sk.shape}")
        self._init_factors(sk)
        self.out_features, self.in_features = sk.shape
        _check_bias(bias, sk, self.out_features)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self._pointwise = _as_pointwise(sk.structure)
        self.implementation, self.order = _plan(self._kernel(), implementation, order, (batch, sk.shape[1], 1),
                                                1, 0, 1, "zeros")

    def _kernel(self) -> SeKronTensor:
        return SeKronTensor([f.unsqueeze(-1) for f in self.factors], self._pointwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _refuse_onnx_export(self)
        lead = x.shape[:-1]
        y = conv(x.reshape(-1, self.in_features, 1), self._kernel(), bias=self.bias,
                 implementation=self.implementation, order=self.order)
        return y.reshape(*lead, self.out_features)  # type: ignore[no-any-return]

    @classmethod
    def from_linear(cls, linear: Any, structure: Any, rank: Any = None, *, tol: float | None = None,
                    implementation: str = "auto", order: Sequence[int] | None = None, **options: Any
                    ) -> SeKronLinear:
        """A SeKron layer equal to ``linear`` (up to the decomposition's error); bias, device, dtype kept.

        ``structure``, ``rank``, ``tol``, ``implementation``, ``order`` and ``**options`` are as in
        :meth:`SeKronConv2d.from_conv`, for the weight ``(out_features, in_features)``.
        """
        if type(linear) is not nn.Linear:
            raise TypeError(f"SeKronLinear.from_linear needs a torch.nn.Linear, got {type(linear).__name__}")
        sk = _decompose(linear.weight, structure, rank, tol, options)
        return cls(sk, bias=linear.bias, implementation=implementation, order=order)

    @classmethod
    def _from_state(cls, dense: Any, state: Mapping[str, Any]) -> SeKronLinear:
        st = Structure.from_dict(state["structure"])
        return cls(_empty_factors(st, state["rank"], dense.weight), bias=dense.bias,
                   implementation=state["implementation"], order=state["order"])

    def to_linear(self) -> nn.Linear:
        """A dense ``torch.nn.Linear`` with the reconstructed weight."""
        like = self.factors[0]
        dense = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=like.device,
                          dtype=like.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.sekron_weight().to_tensor())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                + self._describe())


#: dense layer type -> SeKron layer type
LAYERS: dict[type[nn.Module], type[_SeKronBase]] = {
    nn.Conv1d: SeKronConv1d, nn.Conv2d: SeKronConv2d, nn.Conv3d: SeKronConv3d, nn.Linear: SeKronLinear,
}


def load_compressed(model: nn.Module, state_dict: Mapping[str, Any], *, strict: bool = True) -> nn.Module:
    """Load a compressed model's ``state_dict`` into a dense skeleton of the same architecture.

    Every ``<name>._extra_state`` entry written by a SeKron layer replaces the dense layer
    ``<name>`` of ``model`` (in place, with ``set_submodule``) by a SeKron layer of the saved
    structure and ranks; then ``model.load_state_dict(state_dict, strict=strict)`` runs.
    BatchNorms that ``compress`` folded into their convs (none of their entries is in
    ``state_dict``) become ``nn.Identity``, and a conv/linear without bias gets one when
    ``state_dict`` holds it.

    Examples
    --------
    >>> import io, torch
    >>> from sekron.torch import SeKronLinear, load_compressed
    >>> net = torch.nn.Sequential(torch.nn.Linear(12, 8))
    >>> net[0] = SeKronLinear.from_linear(net[0], [(2, 3), (4, 4)], rank=2)
    >>> buf = io.BytesIO(); torch.save(net.state_dict(), buf); _ = buf.seek(0)
    >>> fresh = load_compressed(torch.nn.Sequential(torch.nn.Linear(12, 8)), torch.load(buf, weights_only=True))
    >>> type(fresh[0]).__name__, fresh[0].rank
    ('SeKronLinear', {'a': 2})
    """
    _unfold_skeleton(model, state_dict)
    suffix = "._extra_state"
    for key, state in state_dict.items():
        if not key.endswith(suffix) or not isinstance(state, Mapping) or "sekron" not in state:
            continue
        name = key[: -len(suffix)]
        current = model.get_submodule(name)
        if isinstance(current, _SeKronBase):
            continue
        kind = LAYERS.get(type(current))
        if kind is None or kind.__name__ != state.get("kind"):
            raise TypeError(f"load_compressed: the state has a {state.get('kind')} at {name!r} but the skeleton "
                            f"holds a {type(current).__name__} there; build the same architecture as the saved one")
        model.set_submodule(name, kind._from_state(current, state))  # type: ignore[attr-defined]
    model.load_state_dict(state_dict, strict=strict)
    return model


def _unfold_skeleton(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Match a dense skeleton to a model whose BatchNorms were folded (:mod:`sekron.torch.fold`), in place."""
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if not any(isinstance(m, norms) for m in model.modules()):
        return
    for name, mod in list(model.named_modules()):
        if not name:
            continue
        if isinstance(mod, norms):
            keys = [f"{name}.{k}" for k in mod.state_dict()]
            if keys and not any(k in state_dict for k in keys):
                model.set_submodule(name, nn.Identity())
        elif type(mod) in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear) and mod.bias is None \
                and f"{name}.bias" in state_dict:
            w = mod.weight
            mod.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
