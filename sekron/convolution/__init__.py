"""Convolution with a SeKron kernel, factor by factor: planner, array backends and caches.

- :mod:`sekron.convolution._conv`: :func:`conv`, :func:`conv_cost`, the registry
  :data:`IMPLEMENTATIONS` and the plan / kernel caches (:func:`clear_conv_cache`);
- :mod:`sekron.convolution._plan`: the stages of a factorized plan, their costs and the order search;
- :mod:`sekron.convolution._backends`: the per-backend primitives (numpy, PyTorch, JAX).

``sekron.conv`` is the function :func:`conv` itself; the import path ``from sekron.conv
import ...`` still resolves to this package.
"""

from ._conv import IMPLEMENTATIONS, PADDING_MODES, ConvCost, PlanCost, clear_conv_cache, conv, conv_cost

__all__ = ["IMPLEMENTATIONS", "PADDING_MODES", "ConvCost", "PlanCost", "clear_conv_cache", "conv", "conv_cost"]
