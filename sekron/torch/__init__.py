"""PyTorch integration: SeKron layers and whole-model compression (the only package importing torch)."""

from .compression import CompressionReport, compress
from .distillation import distill
from .export import deployed_cost, to_standard
from .layers import (
    LAYERS,
    SeKronConv1d,
    SeKronConv2d,
    SeKronConv3d,
    SeKronLinear,
    load_compressed,
)

__all__ = [
    "LAYERS",
    "CompressionReport",
    "SeKronConv1d",
    "SeKronConv2d",
    "SeKronConv3d",
    "SeKronLinear",
    "compress",
    "deployed_cost",
    "distill",
    "load_compressed",
    "to_standard",
]
