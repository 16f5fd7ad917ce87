"""PyTorch integration: SeKron layers and whole-model compression (the only package importing torch)."""

from .compress import CompressionReport, compress
from .export import to_standard
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
    "load_compressed",
    "to_standard",
]
