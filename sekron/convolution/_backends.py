"""Per-backend primitives of the convolution: pad, grouped conv, transpose, reshape.

:data:`CONV_BACKENDS` maps a tensorly backend name to an object with these methods.
``pytorch`` uses ``torch.nn.functional.conv{1,2,3}d`` (torch is imported lazily, here
only), ``jax`` uses ``jax.lax.conv_general_dilated``, and ``numpy`` is a plain reference
implementation (a loop over kernel offsets, one einsum each).
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import numpy as np

Pads = tuple[tuple[int, int], ...]
_NP_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


class _NumpyOps:
    """Reference implementation: clear rather than fast."""

    name = "numpy"
    _modes: ClassVar[dict[str, Any]] = _NP_MODES

    @staticmethod
    def transpose(x: Any, perm: tuple[int, ...]) -> Any:
        return np.transpose(x, perm)

    @staticmethod
    def reshape(x: Any, shape: tuple[int, ...]) -> Any:
        return np.reshape(x, shape)

    @staticmethod
    def contiguous(x: Any) -> Any:
        return x

    def pad(self, x: Any, pads: Pads, mode: str) -> Any:
        return np.pad(x, [(0, 0), (0, 0), *pads], mode=self._modes[mode])

    @staticmethod
    def conv(x: Any, w: Any, stride: tuple[int, ...], dilation: tuple[int, ...], padding: tuple[int, ...],
             groups: int) -> Any:
        """Grouped cross-correlation: y[n, g, o, p] = sum_{c, u} x[n, g, c, p*s + u*d] w[g, o, c, u]."""
        if any(padding):
            x = np.pad(x, ((0, 0), (0, 0), *tuple((p, p) for p in padding)))
        N, _C, *sp = x.shape
        O, Cg, *h = w.shape
        xg = x.reshape(N, groups, Cg, *sp)
        wg = w.reshape(groups, O // groups, Cg, *h)
        out_sp = [(L - d * (k - 1) - 1) // s + 1 for L, d, k, s in zip(sp, dilation, h, stride)]
        y = np.zeros((N, groups, O // groups, *out_sp), dtype=np.result_type(x, w))
        for u in itertools.product(*(range(k) for k in h)):
            window = tuple(slice(ui * d, ui * d + s * (o - 1) + 1, s)
                           for ui, d, s, o in zip(u, dilation, stride, out_sp))
            patch = xg[(Ellipsis, *window)]  # (N, groups, Cg, *out_sp)
            y += np.einsum("ngc...,goc->ngo...", patch, wg[(Ellipsis, *u)])
        return y.reshape(N, O, *out_sp)

    @staticmethod
    def add_bias(y: Any, bias: Any) -> Any:
        return y + np.reshape(bias, (1, -1) + (1,) * (y.ndim - 2))


class _TorchOps:
    name = "pytorch"
    _modes: ClassVar[dict[str, str]] = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
                                        "circular": "circular"}

    @staticmethod
    def transpose(x: Any, perm: tuple[int, ...]) -> Any:
        return x.permute(perm)

    @staticmethod
    def reshape(x: Any, shape: tuple[int, ...]) -> Any:
        return x.reshape(shape)

    @staticmethod
    def contiguous(x: Any) -> Any:
        return x.contiguous()

    def pad(self, x: Any, pads: Pads, mode: str) -> Any:
        from torch.nn import functional as F  # noqa: N812

        flat = tuple(p for lo_hi in reversed(pads) for p in lo_hi)
        return F.pad(x, flat, mode=self._modes[mode])

    @staticmethod
    def conv(x: Any, w: Any, stride: tuple[int, ...], dilation: tuple[int, ...], padding: tuple[int, ...],
             groups: int) -> Any:
        from torch.nn import functional as F  # noqa: N812

        fn = (F.conv1d, F.conv2d, F.conv3d)[x.ndim - 3]
        return fn(x, w, None, stride, padding, dilation, groups)

    @staticmethod
    def add_bias(y: Any, bias: Any) -> Any:
        return y + bias.reshape((1, -1) + (1,) * (y.ndim - 2))


class _JaxOps:
    name = "jax"
    _modes: ClassVar[dict[str, Any]] = _NP_MODES

    @staticmethod
    def transpose(x: Any, perm: tuple[int, ...]) -> Any:
        import jax.numpy as jnp

        return jnp.transpose(x, perm)

    @staticmethod
    def reshape(x: Any, shape: tuple[int, ...]) -> Any:
        import jax.numpy as jnp

        return jnp.reshape(x, shape)

    @staticmethod
    def contiguous(x: Any) -> Any:
        return x

    def pad(self, x: Any, pads: Pads, mode: str) -> Any:
        import jax.numpy as jnp

        return jnp.pad(x, ((0, 0), (0, 0), *tuple(pads)), mode=self._modes[mode])

    @staticmethod
    def conv(x: Any, w: Any, stride: tuple[int, ...], dilation: tuple[int, ...], padding: tuple[int, ...],
             groups: int) -> Any:
        from jax import lax

        return lax.conv_general_dilated(x, w, window_strides=stride, padding=[(p, p) for p in padding],
                                        rhs_dilation=dilation, feature_group_count=groups,
                                        precision=lax.Precision.HIGHEST)

    @staticmethod
    def add_bias(y: Any, bias: Any) -> Any:
        import jax.numpy as jnp

        return y + jnp.reshape(bias, (1, -1) + (1,) * (y.ndim - 2))


CONV_BACKENDS: dict[str, Any] = {"numpy": _NumpyOps(), "pytorch": _TorchOps(), "jax": _JaxOps()}


def conv_ops(backend: str) -> Any:
    """The primitives of ``backend``; a miss lists the supported backends."""
    try:
        return CONV_BACKENDS[backend]
    except KeyError:
        raise TypeError(f"conv supports the backends {sorted(CONV_BACKENDS)}, got arrays of backend "
                        f"{backend!r}; convert them first") from None
