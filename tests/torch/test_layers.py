"""SeKron layers equal their dense originals at full rank, forward and backward; state dicts round-trip."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")
from sekron.search import search  # noqa: E402
from torch import nn  # noqa: E402

from sekron.structure import Structure  # noqa: E402
from sekron.torch import (  # noqa: E402
    SeKronConv1d,
    SeKronConv2d,
    SeKronConv3d,
    SeKronLinear,
    load_compressed,
)

TOL = {torch.float32: 2e-4, torch.float64: 1e-10}
CONV2D_CASES = [
    {"padding": 1},
    {"padding": "same", "dilation": 2, "bias": False},
    {"padding": "valid", "stride": 2},
    {"padding": (2, 1), "stride": (2, 1), "dilation": (1, 2)},
    {"padding": 1, "padding_mode": "reflect"},
    {"padding": (1, 2), "padding_mode": "replicate", "stride": 2},
    {"padding": "same", "padding_mode": "circular"},
]


def _check_equal(layer: nn.Module, dense: nn.Module, x: torch.Tensor) -> None:
    tol = TOL[x.dtype]
    dense.zero_grad()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = layer(xa), dense(xb)
    scale = yb.abs().max().item()
    assert ya.shape == yb.shape and ya.dtype == yb.dtype
    assert (ya - yb).abs().max().item() <= tol * scale
    g = torch.randn_like(yb)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    assert (xa.grad - xb.grad).abs().max().item() <= tol * xb.grad.abs().max().item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.factors)
    if dense.bias is not None:
        assert torch.allclose(layer.bias.grad, dense.bias.grad, rtol=tol, atol=tol * dense.bias.grad.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("implementation", ["factorized", "dense"])
@pytest.mark.parametrize("kwargs", CONV2D_CASES)
def test_conv2d_full_rank_equals_dense(kwargs: dict, implementation: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    dense = nn.Conv2d(8, 12, 3, dtype=dtype, **kwargs)
    for st in (Structure([(4, 2, 3, 1), (3, 4, 1, 3)], "nested"), Structure([(2, 2, 1, 3), (3, 2, 3, 1), (2, 2, 1, 1)],
                                                                               "chain")):
        layer = SeKronConv2d.from_conv(dense, st, implementation=implementation)
        assert layer.implementation == implementation
        assert layer.stride == dense.stride and layer.padding == dense.padding and layer.dilation == dense.dilation
        assert layer.padding_mode == dense.padding_mode and layer.factors[0].dtype == dtype
        _check_equal(layer, dense, torch.randn(2, 8, 9, 11, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv1d_conv3d(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    d1 = nn.Conv1d(6, 4, 5, stride=2, padding=3, dilation=2, padding_mode="reflect", dtype=dtype)
    _check_equal(SeKronConv1d.from_conv(d1, [(2, 3, 5), (2, 2, 1)], implementation="factorized"), d1,
                 torch.randn(3, 6, 20, dtype=dtype))
    d3 = nn.Conv3d(4, 6, (3, 1, 3), padding="same", dtype=dtype)
    layer = SeKronConv3d.from_conv(d3, Structure([(2, 2, 3, 1, 1), (3, 2, 1, 1, 3)], "cp"))
    _check_equal(layer, d3, torch.randn(2, 4, 5, 4, 6, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grouped_conv(dtype: torch.dtype) -> None:
    dense = nn.Conv2d(8, 12, 3, groups=4, padding=1, padding_mode="replicate", dtype=dtype)
    layer = SeKronConv2d.from_conv(dense, [(4, 1, 3, 1), (3, 2, 1, 3)])
    assert layer.groups == 4
    _check_equal(layer, dense, torch.randn(2, 8, 7, 7, dtype=dtype))
    back = layer.to_conv()
    assert back.groups == 4 and back.padding_mode == "replicate"
    assert torch.allclose(back.weight, dense.weight, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_full_rank(dtype: torch.dtype, bias: bool) -> None:
    dense = nn.Linear(12, 8, bias=bias, dtype=dtype)
    for impl in ("factorized", "dense"):
        layer = SeKronLinear.from_linear(dense, Structure([(2, 3), (2, 2), (2, 2)], "nested"), implementation=impl)
        _check_equal(layer, dense, torch.randn(3, 5, 12, dtype=dtype))


def test_to_dense_and_repr() -> None:
    dense = nn.Conv2d(8, 12, 3, stride=2, padding="valid", bias=True)
    layer = SeKronConv2d.from_conv(dense, [(4, 2, 3, 1), (3, 4, 1, 3)], rank=2)
    back = layer.to_conv()
    assert type(back) is nn.Conv2d and back.stride == (2, 2) and back.padding == "valid"
    assert torch.allclose(back.weight, layer.sekron_weight().to_tensor())
    text = repr(layer)
    words = ("structure=((4, 2, 3, 1), (3, 4, 1, 3))", "pattern='nested'", "rank={'a': 2}", "params=", "compression=")
    assert all(word in text for word in words)
    assert layer.n_params == 2 * (24 + 36)
    lin = SeKronLinear.from_linear(nn.Linear(12, 8), [(2, 3), (4, 4)], rank=1)
    assert type(lin.to_linear()) is nn.Linear and "compression=" in repr(lin)


def test_candidate_from_search_keeps_its_error() -> None:
    torch.manual_seed(2)
    dense = nn.Conv2d(8, 16, 3, padding=1, dtype=torch.float64)
    cand = search(dense.weight, ratio=3)[0]
    layer = SeKronConv2d.from_conv(dense, cand)
    W = dense.weight.detach()
    err = ((layer.sekron_weight().to_tensor() - W).norm() / W.norm()).item()
    assert err == pytest.approx(cand.error, rel=1e-7)
    with pytest.raises(ValueError, match=r"Candidate fixes the ranks"):
        SeKronConv2d.from_conv(dense, cand, rank=2)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def test_state_dict_round_trip_weights_only() -> None:
    torch.manual_seed(3)
    net = _net()
    net[0] = SeKronConv2d.from_conv(net[0], [(2, 2, 3, 1), (4, 2, 1, 3)], rank=3, implementation="factorized")
    net[3] = SeKronLinear.from_linear(net[3], Structure([(2, 8), (5, 36)], "cp"), rank=4)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = load_compressed(_net(), state)
    assert type(fresh[0]) is SeKronConv2d and fresh[0].rank == {"a": 3} and fresh[0].implementation == "factorized"
    assert type(fresh[3]) is SeKronLinear and fresh[3].rank == {"a": 4}
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(fresh(x), net(x))


def test_mismatched_state_is_refused() -> None:
    a = SeKronConv2d.from_conv(nn.Conv2d(4, 8, 3), [(2, 2, 3, 1), (4, 2, 1, 3)], rank=3)
    b = SeKronConv2d.from_conv(nn.Conv2d(4, 8, 3), [(2, 2, 3, 1), (4, 2, 1, 3)], rank=2)
    with pytest.raises((ValueError, RuntimeError), match=r"rank|size mismatch"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(TypeError, match="holds a Linear"):
        load_compressed(nn.Sequential(nn.Linear(3, 3)), {"0._extra_state": a.get_extra_state()})


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match=r"needs a torch\.nn\.Conv2d"):
        SeKronConv2d.from_conv(nn.Linear(4, 4), [(2, 2), (2, 2)])
    with pytest.raises(TypeError, match=r"needs a torch\.nn\.Linear"):
        SeKronLinear.from_linear(nn.Conv1d(4, 4, 1), [(2, 2), (2, 2)])
    with pytest.raises(ValueError, match="does not match the structure"):
        SeKronConv2d.from_conv(nn.Conv2d(4, 8, 3), [(2, 2, 3, 1), (2, 2, 1, 3)])
    with pytest.raises(ValueError, match="implementation"):
        SeKronConv2d.from_conv(nn.Conv2d(4, 8, 3), [(2, 2, 3, 1), (4, 2, 1, 3)], implementation="fast")
