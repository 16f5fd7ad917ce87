"""Loaders of real conv weights: the ONNX reader and the ncnn .param/.bin parser, on tiny files."""

from __future__ import annotations

import numpy as np
import pytest

from sekron.datasets import (
    TAG_FP16,
    TAG_INT8,
    conv_weights,
    load_onnx_convs,
    package_dir,
    parse_ncnn_param,
    read_ncnn,
)

PARAM = """7767517
5 6
Input            in      0 1 data
Convolution      conv_a  1 1 data a 0=4 1=3 4=1 5=1 6=72 9=2 -23310=1,2.000000e-01
Split            split0  1 2 a a0 a1
Convolution      conv_b  1 1 a0 b 0=3 1=1 11=1 5=0 6=12
Eltwise          add0    2 1 a1 b out 0=1 -23301=2,2.000000e-01,1.000000e+00
"""


def _fp16_blob(w: np.ndarray) -> bytes:
    data = w.astype("<f2").tobytes()
    return TAG_FP16.to_bytes(4, "little") + data + b"\0" * (-len(data) % 4)


def _write_ncnn(tmp_path, blobs):
    (tmp_path / "m.param").write_text(PARAM)
    (tmp_path / "m.bin").write_bytes(b"".join(blobs))
    return tmp_path / "m.param", tmp_path / "m.bin"


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    wa = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    ba = rng.standard_normal(4).astype(np.float32)
    wb = rng.standard_normal((3, 4, 1, 1)).astype(np.float32)
    return wa, ba, wb


def test_parse_param_layers_and_arrays():
    layers = parse_ncnn_param(PARAM)
    assert [lay.type for lay in layers] == ["Input", "Convolution", "Split", "Convolution", "Eltwise"]
    assert layers[2].outputs == ["a0", "a1"]
    assert layers[1].params == {0: 4, 1: 3, 4: 1, 5: 1, 6: 72, 9: 2, 10: [0.2]}
    assert layers[4].params[1] == [0.2, 1.0]


def test_read_fp16_and_fp32(tmp_path):
    wa, ba, wb = _weights()
    # conv_a: fp16 with tag, fp32 bias; conv_b: raw fp32 (zero tag), 12 values, no bias
    blobs = [_fp16_blob(wa), ba.astype("<f4").tobytes(), b"\0\0\0\0", wb.astype("<f4").tobytes()]
    layers = read_ncnn(*_write_ncnn(tmp_path, blobs))
    a, b = layers[1], layers[3]
    np.testing.assert_array_equal(a.weight, wa.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(a.bias, ba)
    np.testing.assert_array_equal(b.weight, wb)
    assert b.bias is None and a.weight.dtype == np.float32


def test_read_odd_fp16_count_is_padded(tmp_path):
    # 3 outputs * 1 input * 1x1... use conv_b in fp16: 12 values (even); make conv_a odd via a param edit
    text = PARAM.replace("0=4 1=3 4=1 5=1 6=72", "0=1 1=3 4=1 5=0 6=9").replace("0=3 1=1 11=1 5=0 6=12",
                                                                           "0=3 1=1 11=1 5=0 6=3")
    rng = np.random.default_rng(1)
    wa, wb = rng.standard_normal((1, 1, 3, 3)), rng.standard_normal((3, 1, 1, 1))
    (tmp_path / "m.param").write_text(text)
    (tmp_path / "m.bin").write_bytes(_fp16_blob(wa) + _fp16_blob(wb))
    layers = read_ncnn(tmp_path / "m.param", tmp_path / "m.bin")
    np.testing.assert_allclose(layers[1].weight, wa, atol=1e-3)
    np.testing.assert_allclose(layers[3].weight, wb, atol=1e-3)


def test_read_lookup_table(tmp_path):
    _, ba, wb = _weights()
    table = np.linspace(-1, 1, 256).astype("<f4")
    idx = np.arange(72, dtype=np.uint8)
    blob = bytes([1, 2, 3, 4]) + table.tobytes() + idx.tobytes()
    blobs = [blob, ba.astype("<f4").tobytes(), b"\0\0\0\0", wb.astype("<f4").tobytes()]
    layers = read_ncnn(*_write_ncnn(tmp_path, blobs))
    np.testing.assert_array_equal(layers[1].weight.ravel(), table[:72])


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="magic"):
        parse_ncnn_param("123\n0 0\n")
    with pytest.raises(ValueError, match="announces 3 layers"):
        parse_ncnn_param(PARAM.replace("5 6", "3 6"))
    wa, ba, wb = _weights()
    with pytest.raises(ValueError, match="do not match"):  # truncated .bin
        read_ncnn(*_write_ncnn(tmp_path, [_fp16_blob(wa)]))
    with pytest.raises(ValueError, match="were not read"):  # trailing bytes
        read_ncnn(*_write_ncnn(tmp_path, [_fp16_blob(wa), ba.tobytes(), b"\0" * 4, wb.tobytes(), b"\0" * 8]))
    with pytest.raises(ValueError, match="int8"):
        read_ncnn(*_write_ncnn(tmp_path, [TAG_INT8.to_bytes(4, "little") + b"\0" * 72]))
    (tmp_path / "u.param").write_text("7767517\n1 1\nInnerProduct fc 0 1 x 0=2\n")
    with pytest.raises(ValueError, match="InnerProduct"):
        read_ncnn(tmp_path / "u.param", tmp_path / "m.bin")
    with pytest.raises(ModuleNotFoundError, match="pip install"):
        package_dir("sekron_no_such_package", "pip install sekron-no-such-package")
    with pytest.raises(ValueError, match="unknown network"):
        conv_weights("vgg")


def test_onnx_convs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((3, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"])]  # unnamed node
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    convs = load_onnx_convs(path)
    assert [name for name, _ in convs] == ["c1", "Conv_node2"]
    np.testing.assert_array_equal(convs[0][1], w1)
    np.testing.assert_array_equal(convs[1][1], w2)
