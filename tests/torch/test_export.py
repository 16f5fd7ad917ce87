"""to_standard: SeKron layers as plain torch.nn modules, equal to the SeKron layer and to the dense kernel;
they pickle without sekron, export to ONNX (both exporters, Conv nodes with constant weights), script and compile."""

from __future__ import annotations

import importlib.util
import io
import itertools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as hst

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402, N812

from sekron.structure import Structure  # noqa: E402
from sekron.torch import (  # noqa: E402
    SeKronConv1d,
    SeKronConv2d,
    SeKronConv3d,
    SeKronLinear,
    to_standard,
)
from sekron.torch import export as ex  # noqa: E402

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}
CONV_CLS = {1: (nn.Conv1d, SeKronConv1d), 2: (nn.Conv2d, SeKronConv2d), 3: (nn.Conv3d, SeKronConv3d)}
CASES = [
    {"padding": 1},
    {"padding": "same", "dilation": 2, "bias": False},
    {"padding": "valid", "stride": 2},
    {"padding": 2, "stride": 2, "dilation": 2},
    {"padding": 1, "padding_mode": "reflect"},
    {"padding": 2, "padding_mode": "replicate", "stride": 2},
    {"padding": "same", "padding_mode": "circular"},
    {"padding": "same", "padding_mode": "reflect", "dilation": 2},  # asymmetric: a padding module
]
STRUCTURES = {  # 8 -> 12 channels, kernel 3 on every axis: per D, factor shapes and patterns
    1: [([(4, 2, 3), (3, 4, 1)], "nested"), ([(2, 2, 1), (3, 2, 3), (2, 2, 1)], "chain"),
        ([(2, 2, 1), (3, 2, 3), (2, 2, 1)], "cp")],
    2: [([(4, 2, 3, 1), (3, 4, 1, 3)], "nested"), ([(2, 2, 1, 3), (3, 2, 3, 1), (2, 2, 1, 1)], "chain"),
        ([(2, 2, 1, 3), (3, 2, 3, 1), (2, 2, 1, 1)], "tucker"), ([(1, 8, 1, 1), (12, 1, 3, 3)], "nested")],
    3: [([(4, 2, 3, 1, 3), (3, 4, 1, 3, 1)], "nested"), ([(2, 2, 1, 3, 1), (3, 2, 3, 1, 1), (2, 2, 1, 1, 3)], "cp")],
}


def _ideal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank deployments by MACs alone: small test layers then take the grouped, shuffled stages."""
    monkeypatch.setattr(ex, "_EFFICIENCY", lambda n_in, n_out: 1.0)
    monkeypatch.setattr(ex.cp, "MEMORY_WEIGHT", 0.0)


def _all_torch(module: nn.Module) -> None:
    for m in module.modules():
        assert type(m).__module__.startswith("torch.nn."), type(m)


def _reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The dense reference: torch's own conv with the formed kernel."""
    return layer.to_conv()(x)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert (a - b).abs().max().item() <= TOL[a.dtype] * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D", [1, 2, 3])
@pytest.mark.parametrize("kwargs", CASES)
def test_factorized_stages_equal_layer_and_dense(kwargs: dict, D: int, dtype: torch.dtype,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if D == 3 and kwargs.get("padding_mode") == "reflect" and kwargs.get("padding") == "same":
        kwargs = {**kwargs, "padding_mode": "replicate"}
    _ideal(monkeypatch)
    torch.manual_seed(0)
    dense_cls, sk_cls = CONV_CLS[D]
    dense = dense_cls(8, 12, 3, dtype=dtype, **kwargs)
    x = torch.randn(2, 8, *((9, 8, 7)[:D]), dtype=dtype)
    for fs, pattern in STRUCTURES[D]:
        layer = sk_cls.from_conv(dense, Structure(fs, pattern), rank=3, implementation="factorized").eval()
        plain = to_standard(layer, implementation="factorized").eval()
        _all_torch(plain)
        assert not any(isinstance(m, nn.Linear) for m in plain.modules())
        with torch.no_grad():
            y = plain(x)
            _close(y, layer(x))
            _close(y, _reference(layer, x))


def test_shuffles_and_groups_appear_and_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """A balanced nested split needs grouped convs and channel rotations; every stage order is exact."""
    _ideal(monkeypatch)
    torch.manual_seed(1)
    dense = nn.Conv2d(16, 16, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 16, 7, 7, dtype=torch.float64)
    st = Structure([(4, 4, 3, 1), (2, 2, 1, 3), (2, 2, 1, 1)], "chain")
    kinds = set()
    for order in itertools.permutations(range(3)):
        layer = SeKronConv2d.from_conv(dense, st, rank=2, implementation="factorized", order=order)
        plain = to_standard(layer, implementation="factorized")
        kinds |= {type(m).__name__ for m in plain.modules()}
        kinds |= {"groups>1" for m in plain.modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
        with torch.no_grad():
            _close(plain(x), _reference(layer, x))
    assert {"ChannelShuffle", "groups>1"} <= kinds


def test_two_factor_low_rank_is_two_plain_convs() -> None:
    """(1, C, 1, 1) x (F, 1, 3, 3): a 1x1 conv C -> r and a 3x3 conv r -> F, nothing else."""
    dense = nn.Conv2d(32, 32, 3, padding=1, stride=2)
    layer = SeKronConv2d.from_conv(dense, [(1, 32, 1, 1), (32, 1, 3, 3)], rank=4, implementation="factorized")
    plain = to_standard(layer)
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.groups) for c in convs] == [
        (32, 4, (1, 1), 1), (4, 32, (3, 3), 1)]
    assert [c.padding for c in convs] == [(0, 0), (1, 1)]  # the 1x1 conv runs on the unpadded input
    assert not any(isinstance(m, nn.ChannelShuffle) for m in plain.modules())
    x = torch.randn(1, 32, 9, 9)
    with torch.no_grad():
        _close(plain(x), layer(x))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_each_axis_is_padded_by_the_first_stage_that_spans_it(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3x1 stage then a 1x3 stage: the first pads the rows only, the second the columns, for every padding
    mode; the function is the layer's and the priced MACs are the ones the convs run (the earlier stages on
    the unpadded size)."""
    from sekron.torch.calibrate import counted_macs

    _ideal(monkeypatch)
    torch.manual_seed(0)
    dense = nn.Conv2d(8, 12, 3, padding=(1, 2), dilation=(1, 2), padding_mode=mode)
    layer = SeKronConv2d.from_conv(dense, [(4, 2, 3, 1), (3, 4, 1, 3)], rank=3, implementation="factorized")
    plain = to_standard(layer)
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.padding) for c in convs] in (
        [((3, 1), (1, 0)), ((1, 3), (0, 2))], [((1, 3), (0, 2)), ((3, 1), (1, 0))])
    assert all(c.padding_mode == mode for c in convs)
    x = torch.randn(2, 8, 7, 9)
    with torch.no_grad():
        _close(plain(x), layer(x))
        _close(plain(x), _reference(layer, x))
    assert ex.deployed_cost(layer, tuple(x.shape))[0] == counted_macs(plain, x)


@given(data=hst.data())
def test_random_structures_orders_and_geometry(data: hst.DataObject) -> None:
    """Any structure, pattern, rank, stage order, stride, dilation and padding: stages equal the dense conv."""
    D = data.draw(hst.sampled_from([1, 2]))
    S = data.draw(hst.integers(2, 3))
    pattern = data.draw(hst.sampled_from(["nested", "chain", "cp", "tucker", "ring"]))
    digits = hst.sampled_from([1, 2, 3])
    fs = [tuple(data.draw(digits) for _ in range(2)) + tuple(data.draw(hst.sampled_from([1, 2, 3]))
                                                                  for _ in range(D)) for _ in range(S)]
    st = Structure(fs, pattern)
    F_, C, *K = st.shape
    stride = data.draw(hst.integers(1, 2))
    dilation = data.draw(hst.integers(1, 2))
    padding = data.draw(hst.integers(0, 2))
    mode = data.draw(hst.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    order = data.draw(hst.permutations(list(range(S))))
    ideal = data.draw(hst.booleans())
    dense_cls, sk_cls = CONV_CLS[D]
    torch.manual_seed(data.draw(hst.integers(0, 100)))
    dense = dense_cls(C, F_, tuple(K), stride=stride, padding=padding, dilation=dilation, padding_mode=mode,
                      dtype=torch.float64)
    L = max(2 * dilation * (k - 1) + 3 for k in K) + padding
    with warnings.catch_warnings():  # a rank above what the structure allows is clipped, with a warning
        warnings.simplefilter("ignore", UserWarning)
        layer = sk_cls.from_conv(dense, st, rank=data.draw(hst.integers(1, 3)), implementation="factorized",
                                 order=order)
    x = torch.randn(2, C, *([L] * D), dtype=torch.float64)
    saved = ex._EFFICIENCY, ex.cp.MEMORY_WEIGHT
    try:
        if ideal:
            ex._EFFICIENCY, ex.cp.MEMORY_WEIGHT = (lambda n_in, n_out: 1.0), 0.0
        plain = to_standard(layer, implementation="factorized")
    finally:
        ex._EFFICIENCY, ex.cp.MEMORY_WEIGHT = saved
    _all_torch(plain)
    with torch.no_grad():
        _close(plain(x), _reference(layer, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("implementation", ["auto", "factorized", "dense"])
def test_linear(implementation: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    _ideal(monkeypatch)
    torch.manual_seed(2)
    dense = nn.Linear(12, 8, dtype=dtype)
    x = torch.randn(3, 5, 12, dtype=dtype)
    for st in (Structure([(2, 3), (4, 4)], "nested"), Structure([(2, 2), (2, 3), (2, 2)], "chain")):
        for order in itertools.permutations(range(st.n_factors)):
            layer = SeKronLinear.from_linear(dense, st, rank=2, implementation="factorized", order=order)
            plain = to_standard(layer, implementation=implementation)
            _all_torch(plain)
            assert all(isinstance(m, (nn.Linear, nn.Sequential)) for m in plain.modules())
            with torch.no_grad():
                _close(plain(x), layer(x))
                _close(plain(x), layer.to_linear()(x))


def test_grouped_layer_is_one_grouped_conv() -> None:
    dense = nn.Conv2d(8, 12, 3, padding=1, groups=2, dtype=torch.float64)
    layer = SeKronConv2d.from_conv(dense, [(3, 2, 3, 1), (4, 2, 1, 3)], rank=2)
    plain = to_standard(layer)
    assert isinstance(plain, nn.Conv2d) and plain.groups == 2
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        _close(plain(x), layer(x))


def _model() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 10))
    net[2] = SeKronConv2d.from_conv(net[2], [(4, 4, 3, 3), (4, 4, 1, 1)], rank=3, implementation="factorized")
    net[4] = SeKronConv2d.from_conv(net[4], [(1, 16, 1, 1), (16, 1, 3, 3)], rank=4, implementation="factorized")
    net[7] = SeKronLinear.from_linear(net[7], [(2, 16), (5, 16)], rank=3, implementation="factorized")
    return net.eval()


def test_model_copy_is_plain_and_input_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    _ideal(monkeypatch)
    net = _model()
    before = {k: v.clone() for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}
    plain = to_standard(net)
    _all_torch(plain)
    assert not plain.training and isinstance(net[2], SeKronConv2d)  # the original keeps its SeKron layers
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items() if isinstance(v, torch.Tensor))
    assert any(isinstance(m, nn.ChannelShuffle) for m in plain.modules())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _close(plain(x), net(x))


def test_shared_layer_stays_shared() -> None:
    layer = SeKronConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1), [(1, 8, 1, 1), (8, 1, 3, 3)], rank=2,
                                   implementation="factorized")
    net = nn.Sequential(layer, nn.ReLU(), layer)
    plain = to_standard(net)
    assert plain[0] is plain[2] and isinstance(plain[0], nn.Sequential)
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        _close(plain(x), net(x))


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        to_standard("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="implementation"):
        to_standard(nn.Linear(2, 2), implementation="fast")


def test_pickled_copy_loads_without_sekron(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _ideal(monkeypatch)
    net = _model()
    plain = to_standard(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = plain(x)
    torch.save({"model": plain, "x": x, "y": y}, tmp_path / "plain.pt")
    code = ("import sys, torch\n"
            "sys.modules['sekron'] = None  # importing sekron now fails\n"
            "d = torch.load(sys.argv[1], weights_only=False)\n"
            "assert all(type(m).__module__.startswith('torch.nn.') for m in d['model'].modules())\n"
            "with torch.no_grad():\n"
            "    assert torch.allclose(d['model'](d['x']), d['y'], rtol=1e-5, atol=1e-6)  # thread counts may differ\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "plain.pt")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_torchscript_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    _ideal(monkeypatch)
    net = _model()
    plain = to_standard(net)
    scripted = torch.jit.script(plain)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        _close(scripted(x), net(x))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    with torch.no_grad():
        _close(torch.jit.load(buf)(x), net(x))


def test_torch_compile_matches() -> None:
    """torch.compile on the SeKron model itself and on its plain copy (one tiny model).

    The graphs are captured by dynamo and AOTAutograd (backend "aot_eager"); inductor's C++
    code generation takes minutes on a loaded CPU, so its timings are left to
    benchmarks/bench_deploy.py, which compiles with the default backend.
    """
    torch.manual_seed(4)
    net = nn.Sequential(SeKronConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1), [(1, 8, 1, 1), (8, 1, 3, 3)], rank=2,
                                               implementation="factorized"), nn.ReLU()).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        want = net(x)
        _close(torch.compile(net, backend="aot_eager")(x), want)
        _close(torch.compile(to_standard(net), backend="aot_eager")(x), want)


# --- ONNX --------------------------------------------------------------------------------
def _need(*modules: str) -> None:
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"{m} is not installed (pip install sekron[onnx])")


EXPORTERS = [pytest.param(False, id="torchscript-exporter"), pytest.param(True, id="dynamo-exporter")]


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_onnx_export_is_convs_with_constant_weights(dynamo: bool, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _need("onnx", "onnxruntime", *(["onnxscript"] if dynamo else []))
    import numpy as np
    import onnx
    import onnxruntime as ort

    _ideal(monkeypatch)
    net = _model()
    convs = nn.Sequential(*list(net)[:6])  # the conv part: no Gemm expected
    plain = to_standard(convs)
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "m.onnx"
    torch.onnx.export(plain, (x,), str(path), dynamo=dynamo, input_names=["x"])
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "Conv" in ops
    # channel shuffles are Reshape/Transpose of activations; nothing rebuilds a kernel
    assert ops <= {"Conv", "Relu", "Reshape", "Transpose", "Shape", "Constant", "Identity"}, ops
    n_convs = sum(n.op_type == "Conv" for n in graph.node)
    assert n_convs == sum(isinstance(m, nn.Conv2d) for m in plain.modules())
    inits = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Conv":
            assert node.input[1] in inits  # the weight is a constant
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = convs(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_direct_onnx_export_points_to_to_standard(dynamo: bool, tmp_path: Path) -> None:
    _need("onnx", *(["onnxscript"] if dynamo else []))
    net = _model()
    with pytest.raises(Exception, match="to_standard") as info:
        torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(tmp_path / "m.onnx"), dynamo=dynamo)
    assert isinstance(info.value, TypeError) or isinstance(info.value.__cause__, TypeError)


def test_layer_still_runs_after_an_export_attempt(tmp_path: Path) -> None:
    """The refusal is scoped to the export: the layer and its state dict work as before."""
    _need("onnx")
    net = _model()
    with pytest.raises(TypeError):
        torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(tmp_path / "m.onnx"), dynamo=False)
    assert "2._extra_state" in net.state_dict()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 8, 8)).shape == (1, 10)
    assert F.relu(torch.ones(1)).item() == 1.0


ARCH = """
import torch
def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3),
                               torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3))
"""


def test_cli_writes_onnx(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _need("onnx", "onnxruntime")
    import numpy as np
    import onnx
    import onnxruntime as ort

    from sekron.torch import load_compressed
    from sekron.torch.cli import compress_main

    (tmp_path / "arch.py").write_text(ARCH)
    ns: dict = {}
    exec(ARCH, ns)
    torch.save(ns["build"]().state_dict(), tmp_path / "model.pt")
    args = [str(tmp_path / "model.pt"), "--ratio", "4", "-o", str(tmp_path / "out.pt"), "--arch",
            f"{tmp_path / 'arch.py'}:build", "--min-kernel-size", "100", "--quiet"]
    assert compress_main([*args, "--onnx", str(tmp_path / "out.onnx")]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert compress_main([*args, "--onnx", str(tmp_path / "out.onnx"), "--input-shape", "1,3,12,12"]) == 0
    small = load_compressed(ns["build"](), torch.load(tmp_path / "out.pt", weights_only=True)).eval()
    graph = onnx.load(str(tmp_path / "out.onnx")).graph
    assert "Conv" in {n.op_type for n in graph.node}
    assert not {n.op_type for n in graph.node} & {"MatMul", "Einsum", "Gemm"}
    sess = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        want = small(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_deployment_page_example_runs() -> None:
    import re

    page = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
    code = "\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))
    assert "to_standard" in code
    exec(compile(code, str(page), "exec"), {"__name__": "docs_example"})


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_write_onnx_any_batch(dynamo: bool, tmp_path: Path) -> None:
    _need("onnx", "onnxruntime", *(["onnxscript"] if dynamo else []))
    import numpy as np
    import onnxruntime as ort

    from sekron.torch.cli import write_onnx

    net = _model()
    write_onnx(net, str(tmp_path / "m.onnx"), (1, 3, 8, 8), dynamo=dynamo)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 8, 8)
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = net(x).numpy()
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
